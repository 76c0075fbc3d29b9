"""Auger models and the regression task: hex neighbourhoods, mask handling, linear temporal attention,
training, test-stage outputs, and the end-to-end experiments (fast_dev_run)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from physics_tf.auger.data import to_batch
from physics_tf.auger.simulate import AugerSimulator, SimConfig, axial_to_xy
from physics_tf.auger.hexconv import AugerHexConvNet, HexConv2d
from physics_tf.auger.transformer import (AugerTransformer, PerceiverTemporalEncoder, ShowerGeometry,
                                                 StationPairBias, TemporalEncoder)
from physics_tf.auger.task import AugerRegressionTask as RegressionTask, merit_factor, primary_summary, regression_summary

N, T = 9, 120


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models: one intra-op thread is faster than two on a shared CPU (no oversubscription)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def small_models(num_targets=1, predict_variance=False, n_bins=T):
    torch.manual_seed(0)
    return {
        "baseline": AugerHexConvNet(N, n_bins, num_targets, rnn="gru", rnn_hidden=8, trace_pool=4, station_dim=8,
                                    conv_channels=(8, 8), head_dims=(16,), predict_variance=predict_variance),
        "transformer": AugerTransformer(N, n_bins, num_targets, patch=10, temporal_dim=16, temporal_heads=2,
                                        temporal_depth=1, dim=16, num_heads=2, depth=1,
                                        predict_variance=predict_variance),
        "baseline_geometry": AugerHexConvNet(N, n_bins, num_targets, rnn="gru", rnn_hidden=8, trace_pool=4,
                                             station_dim=8, conv_channels=(8, 8), head_dims=(16,),
                                             predict_variance=predict_variance, geometry=True),
    }


@pytest.fixture(scope="module")
def events():
    return AugerSimulator().simulate(96, np.random.default_rng(0))


@pytest.fixture(scope="module")
def batch(events):
    return to_batch({k: v[:16] for k, v in events.items()}, ["xmax"], {"xmax": (750.0, 70.0)})


def inputs(b):
    return {k: b[k] for k in ("traces", "times", "signals", "positions", "mask")}


def test_hex_conv_delta_spreads_to_exactly_the_six_axial_neighbours():
    conv = HexConv2d(1, 1, bias=False)
    with torch.no_grad():
        conv.weight.fill_(1.0)
        conv.weight.add_(torch.rand_like(conv.weight))  # any weights: the mask alone decides the support
    x = torch.zeros(1, 1, N, N)
    q0, r0 = 4, 4
    x[0, 0, q0, r0] = 1.0
    out = conv(x)[0, 0]
    hit = {(int(q), int(r)) for q, r in torch.nonzero(out).tolist()}
    assert hit == {(q0, r0), (q0 + 1, r0), (q0 - 1, r0), (q0, r0 + 1), (q0, r0 - 1), (q0 + 1, r0 - 1),
                   (q0 - 1, r0 + 1)}
    # geometric check: every reached station except the centre is exactly one spacing away
    x0, y0 = axial_to_xy(q0, r0, 1.0)
    for q, r in hit - {(q0, r0)}:
        xx, yy = axial_to_xy(q, r, 1.0)
        assert math.isclose(math.hypot(xx - x0, yy - y0), 1.0, rel_tol=1e-9)
    # the masked corners stay zero after an optimiser step too
    out.sum().backward()
    assert conv.weight.grad[0, 0, 0, 0] == 0 and conv.weight.grad[0, 0, 2, 2] == 0


@pytest.mark.parametrize("name", ["baseline", "transformer", "baseline_geometry"])
def test_masked_stations_change_nothing(name, batch):
    net = small_models()[name].eval()
    x = inputs(batch)
    ref = net(**x)
    y = {k: v.clone() for k, v in x.items()}
    dead = ~y["mask"]
    y["traces"][dead] = torch.rand_like(y["traces"][dead]) * 5
    y["times"][dead] = torch.randn_like(y["times"][dead])
    y["signals"][dead] = 3.0
    torch.testing.assert_close(net(**y), ref)
    # a real station does matter
    y["traces"][:, 4, 4] *= 2
    assert not torch.allclose(net(**y), ref)


def test_transformer_is_invariant_to_station_order(batch):
    net = small_models()["transformer"].eval()
    x = inputs(batch)
    perm = torch.randperm(N * N, generator=torch.Generator().manual_seed(0))
    y = {k: v.reshape(v.shape[0], N * N, *v.shape[3:])[:, perm].reshape(v.shape) for k, v in x.items()}
    torch.testing.assert_close(net(**y), net(**x), atol=1e-5, rtol=1e-5)


def count_attention(monkeypatch, fn):
    """Number of attention-matrix elements (B·H·Lq·Lk summed over calls) computed while running ``fn``."""
    import torch.nn.functional as F

    total = {"n": 0}
    sdpa = F.scaled_dot_product_attention

    def counting(q, k, v, *args, **kwargs):
        total["n"] += q.shape[0] * q.shape[1] * q.shape[2] * k.shape[2]
        return sdpa(q, k, v, *args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", counting)
    with torch.no_grad():
        fn()
    monkeypatch.setattr(F, "scaled_dot_product_attention", sdpa)
    return total["n"]


def test_temporal_attention_memory_grows_linearly_with_trace_length(monkeypatch):
    enc = TemporalEncoder(patch=10, dim=16, num_heads=2, depth=2, window=12)
    counts = {}
    for length in (120, 240, 480, 960):
        counts[length] = count_attention(monkeypatch, lambda: enc(torch.rand(3, length)))
    for length in (240, 480, 960):
        assert counts[length] / counts[120] == pytest.approx(length / 120, rel=0.1)  # linear
    naive = 3 * 2 * 2 * 960 * 960  # stations · heads · layers · L²
    assert counts[960] < naive / 50
    # peak activation memory of a forward pass, measured by the profiler: also ~linear
    from torch.profiler import ProfilerActivity, profile

    def peak(length):
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            enc(torch.rand(8, length))
        return sum(e.cpu_memory_usage for e in prof.key_averages() if e.cpu_memory_usage > 0)

    ratio = peak(960) / peak(240)
    assert 2.5 < ratio < 6.0  # 4× the length: ~4× the memory (naive attention would give ~16×)


def test_perceiver_temporal_attention_grows_as_latents_times_length(monkeypatch):
    k, heads, depth = 8, 2, 2
    enc = PerceiverTemporalEncoder(patch=4, dim=16, num_heads=heads, depth=depth, latents=k)
    counts = {L: count_attention(monkeypatch, lambda: enc(torch.rand(3, L))) for L in (120, 480, 960)}
    for L, n in counts.items():  # cross: k·P; latent self-attention: depth·k²; class pooling: 1 + k keys
        assert n == 3 * heads * (k * (L // 4) + depth * k * k + (1 + k))
    net = AugerTransformer(N, 960, temporal_encoder="perceiver", patch=4, temporal_dim=16, temporal_heads=2,
                           temporal_depth=1, latents=8, dim=16, num_heads=2, depth=1)
    ev = AugerSimulator(SimConfig(n_bins=960)).simulate(4, np.random.default_rng(1))
    out = net(**inputs(to_batch(ev, ["xmax"], {"xmax": (750.0, 70.0)})))
    assert out.shape == (4, 1) and torch.isfinite(out).all()


def test_station_pair_bias_uses_pair_geometry_and_timing(batch):
    """Pair features of stations i, j: distance (grid spacings), t_j − t_i, Δlog S, Δz; the bias depends on
    them only through these differences (a common shift of positions or times changes nothing)."""
    torch.manual_seed(0)
    bias = StationPairBias(num_heads=3, hidden=8)
    feats = torch.randn(2, 5, 5)
    out = bias(feats)
    assert out.shape == (2, 3, 5, 5)
    shifted = feats + torch.tensor([1.0, -2.0, 0.5, 3.0, 0.7])  # translate x, y, z, t, log S together
    torch.testing.assert_close(bias(shifted), out, atol=1e-5, rtol=1e-5)
    net = small_models()["transformer"].eval()
    x = inputs(batch)
    late = dict(x, times=x["times"] + 0.5 * (torch.arange(N)[None, :, None] - N // 2) * x["mask"])
    assert not torch.allclose(net(**late), net(**x))  # the spatial attention sees the time pattern
    # the bias reaches the attention: the same network with the bias MLP's output layer changed gives other
    # outputs (the station tokens also see the times, so the check above alone would pass without the bias)
    ref = net(**x)
    with torch.no_grad():
        net.pair_bias.mlp[-1].weight.add_(torch.randn_like(net.pair_bias.mlp[-1].weight))  # not a constant:
        # a bias equal for all pairs would cancel in the softmax
    assert not torch.allclose(net(**x), ref, atol=1e-4)
    assert small_models()["transformer"].pair_bias is not None
    assert AugerTransformer(N, T, 1, temporal_dim=8, temporal_heads=2, temporal_depth=1, dim=8, num_heads=2, depth=1,
                            pair_bias=False).pair_bias is None


def plane_front_features(theta_deg, phi_deg, n=12, seed=0):
    """Stations at random ground positions (grid units), arrival times of a plane front from (θ, φ) in µs."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(1, n, 2, generator=g) * 8 - 4
    axis = torch.tensor([math.sin(math.radians(theta_deg)) * math.cos(math.radians(phi_deg)),
                         math.sin(math.radians(theta_deg)) * math.sin(math.radians(phi_deg))])
    t = -(xy @ axis) * 1.5 / 0.299792458  # a front moving along −axis: 1 grid spacing = 1.5 km
    signals = torch.rand(1, n, 1, generator=g) * 2 + 0.6
    return torch.cat([xy, torch.zeros(1, n, 1), t[..., None], signals], dim=-1)


@pytest.mark.parametrize("theta, phi", [(0.0, 0.0), (30.0, 45.0), (55.0, -120.0)])
def test_shower_geometry_recovers_a_plane_front(theta, phi):
    f = plane_front_features(theta, phi)
    mask = torch.ones(1, f.shape[1], dtype=torch.bool)
    station, event = ShowerGeometry(ridge=1e-6)(f, mask)
    assert math.degrees(math.acos(float(event[0, 2]))) == pytest.approx(theta, abs=0.05)
    assert float(event[0, 3]) == pytest.approx(1 / math.cos(math.radians(theta)), rel=1e-3)
    if theta > 0:
        assert math.degrees(math.atan2(float(event[0, 1]), float(event[0, 0]))) == pytest.approx(phi, abs=0.05)
    assert station[..., 0].abs().max() < 1e-3  # a plane leaves no residual
    # a constant time offset and dead stations with garbage contents change nothing
    padded = torch.cat([f, torch.full((1, 4, 5), 37.0)], dim=1)
    pmask = torch.cat([mask, torch.zeros(1, 4, dtype=torch.bool)], dim=1)
    padded[..., 3] += 2.5
    station2, event2 = ShowerGeometry(ridge=1e-6)(padded, pmask)
    torch.testing.assert_close(event2, event, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(station2[:, : f.shape[1]], station, atol=1e-3, rtol=1e-3)
    assert (station2[:, f.shape[1]:] == 0).all()


def test_shower_geometry_axis_distance_and_curvature():
    """Vertical shower: the axis distance is the ground distance from the signal-weighted barycentre; stations
    delayed in proportion to r² (a curved front) get residuals that grow with r."""
    xy = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0], [2.0, 0.0], [-2.0, 0.0]]])
    r = xy.norm(dim=-1)
    t = 0.3 * r**2  # µs
    signals = torch.full_like(r, 1.0)
    f = torch.cat([xy, torch.zeros_like(r)[..., None], t[..., None], signals[..., None]], dim=-1)
    mask = torch.ones_like(r, dtype=torch.bool)
    station, event = ShowerGeometry(ridge=1e-6)(f, mask)
    assert float(event[0, 2]) == pytest.approx(1.0, abs=1e-4)  # symmetric delays: vertical
    torch.testing.assert_close(station[0, :, 1], r[0], atol=1e-3, rtol=0)
    resid = station[0, :, 0].tolist()
    assert resid[0] < resid[1] < resid[5] and resid[5] == pytest.approx(resid[6], abs=1e-5)


def test_shower_geometry_finds_the_zenith_of_simulated_events(events):
    """On the simulator's events the plane fit recovers the true zenith to ~1° (median), as a classic SD
    reconstruction does; the time residuals (front curvature) grow with the axis distance."""
    b = to_batch(events, ["xmax"], {"xmax": (750.0, 70.0)})
    n = b["mask"].shape[0]
    m = b["mask"].reshape(n, -1)
    f = torch.cat([b["positions"], b["times"][..., None], b["signals"][..., None]], dim=-1).reshape(n, -1, 5)
    station, event = ShowerGeometry()(f, m)
    err = (torch.arccos(event[:, 2]) - b["aux_zenith"]).abs().rad2deg()
    assert float(err.median()) < 2.5
    corr = np.corrcoef(station[..., 1][m].numpy(), station[..., 0][m].numpy())[0, 1]
    assert corr > 0.5


@pytest.mark.parametrize("name", ["baseline", "transformer"])
def test_shapes_gaussian_outputs_and_wrong_inputs(name, batch):
    net = small_models(num_targets=2, predict_variance=True)[name]
    out = net(**inputs(batch))
    assert out.shape == (16, 4)
    out.sum().backward()
    bad = inputs(batch)
    bad["traces"] = bad["traces"][..., :60]
    with pytest.raises(ValueError, match="traces: shape"):
        net(**bad)


@pytest.mark.parametrize("name", ["baseline", "transformer"])
def test_short_training_lowers_the_loss(name, events):
    torch.manual_seed(0)
    b = to_batch({k: v[:24] for k, v in events.items()}, ["xmax"], {"xmax": (750.0, 70.0)})
    task = RegressionTask(small_models()[name], ["xmax"], [750.0], [70.0])
    opt = torch.optim.AdamW(task.parameters(), lr=2e-3 if name == "baseline" else 1e-3)

    def loss_now():  # train mode: BatchNorm uses the batch statistics, as during the steps
        with torch.no_grad():
            return task._loss(*task._outputs(b), b).item()

    before = loss_now()
    for _ in range(40):
        loss = task._loss(*task._outputs(b), b)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = loss_now()
    assert after < 0.7 * before
    assert after < 0.8 * b["y"].var(unbiased=False).item()  # better than the best constant prediction


def test_merit_factor_and_summary():
    rng = np.random.default_rng(0)
    a, b = rng.normal(800, 30, 5000), rng.normal(700, 40, 5000)
    assert merit_factor(a, b) == pytest.approx(100 / 50, rel=0.05)
    true = np.concatenate([a, b])
    prim = np.repeat([0, 3], 5000)
    pred = true + rng.normal(5, 20, len(true))
    lge = rng.uniform(18.5, 20.2, len(true))
    s = regression_summary({"xmax": pred}, {"xmax": true}, lge, prim, ["p", "He", "N", "Fe"], [18.5, 19.5, 20.3])
    assert s["xmax"]["bias"] == pytest.approx(5, abs=1) and s["xmax"]["resolution"] == pytest.approx(20, rel=0.05)
    assert set(s["xmax"]["per_primary"]) == {"p", "Fe"}
    assert [x["n"] for x in s["xmax"]["vs_lg_energy"]] == [int(((lge >= 18.5) & (lge < 19.5)).sum()),
                                                          int(((lge >= 19.5) & (lge < 20.3)).sum())]
    assert s["xmax"]["merit_factor_p_fe"] < s["xmax"]["merit_factor_p_fe_true"]


def test_test_stage_writes_metrics_and_plots(events, tmp_path):
    import lightning as L

    batches = [to_batch({k: v[i : i + 32] for k, v in events.items()}, ["xmax", "lna"],
                        {"xmax": (750.0, 70.0), "lna": (2.0, 1.6)}) for i in (0, 32, 64)]
    task = RegressionTask(small_models(num_targets=2)["baseline"], ["xmax", "lna"], [750.0, 2.0], [70.0, 1.6],
                          loss="huber", output_dir=tmp_path)
    trainer = L.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    from torch.utils.data import DataLoader

    loader = DataLoader(batches, batch_size=None)  # already batched dicts
    trainer.fit(task, train_dataloaders=loader, val_dataloaders=DataLoader(batches[:1], batch_size=None))
    trainer.test(task, dataloaders=loader, verbose=False)
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["num_events"] == 96
    assert {"bias", "resolution", "per_primary", "vs_lg_energy", "merit_factor_p_fe"} <= set(m["xmax"])
    assert "resolution" in m["lna"]
    for name in ("resolution.png", "residuals.png", "predictions.npz"):
        assert (tmp_path / name).is_file(), name


def test_primary_summary_known_values():
    probs = np.array([[0.7, 0.1, 0.1, 0.1], [0.1, 0.6, 0.2, 0.1], [0.1, 0.1, 0.1, 0.7], [0.0, 0.0, 0.2, 0.8]])
    labels = np.array([0, 1, 2, 3])
    s = primary_summary(probs, labels, ["p", "He", "N", "Fe"], [0.0, 1.0, 2.0, 4.0])
    assert s["accuracy"] == pytest.approx(0.75)
    assert s["confusion"][2] == [0.0, 0.0, 0.0, 1.0] and s["confusion"][0] == [1.0, 0.0, 0.0, 0.0]
    # ln A = Σ P(k) ln A_k: event 0 → 0.1·1 + 0.1·2 + 0.1·4 = 0.7 vs 0; event 3 → 0.4 + 3.2 = 3.6 vs 4
    expected = np.array([0.7, 0.1 * 0 + 0.6 + 0.4 + 0.4, 0.1 + 0.2 + 2.8, 3.6]) - np.array([0.0, 1.0, 2.0, 4.0])
    assert s["lna_from_probs"]["bias"] == pytest.approx(expected.mean())


@pytest.mark.parametrize("name", ["baseline", "transformer"])
def test_primary_classification_head_trains_and_reports_confusion(name, events, tmp_path):
    import lightning as L
    from torch.utils.data import DataLoader

    torch.manual_seed(0)
    batches = [to_batch({k: v[i : i + 32] for k, v in events.items()}, ["xmax"], {"xmax": (750.0, 70.0)})
               for i in (0, 32, 64)]
    net = {"baseline": AugerHexConvNet(N, T, 1, rnn="gru", rnn_hidden=8, trace_pool=4, station_dim=8,
                                       conv_channels=(8,), head_dims=(16,), num_classes=4),
           "transformer": AugerTransformer(N, T, 1, temporal_dim=16, temporal_heads=2, temporal_depth=1, dim=16,
                                           num_heads=2, depth=1, num_classes=4)}[name]
    task = RegressionTask(net, ["xmax"], [750.0], [70.0], num_classes=4, primary_lna=[0.0, 1.39, 2.64, 4.03],
                          output_dir=tmp_path)
    mu, lv, logits = task._outputs(batches[0])
    assert mu.shape == (32, 1) and lv is None and logits.shape == (32, 4)
    with torch.no_grad():
        ce_only = task._loss(mu, lv, logits, batches[0]) - task._loss(mu, lv, None, batches[0])
    expected = torch.nn.functional.cross_entropy(logits, batches[0]["aux_primary"].long())
    assert ce_only.item() == pytest.approx(expected.item(), rel=1e-5)  # class_loss_weight = 1
    trainer = L.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    loader = DataLoader(batches, batch_size=None)
    trainer.fit(task, train_dataloaders=loader, val_dataloaders=DataLoader(batches[:1], batch_size=None))
    trainer.test(task, dataloaders=loader, verbose=False)
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert set(m["primary"]) >= {"accuracy", "auc_macro", "confusion", "lna_from_probs"}
    assert np.allclose(np.array(m["primary"]["confusion"]).sum(1), 1.0)
    assert (tmp_path / "confusion.png").is_file()
    with pytest.raises(ValueError, match="num_classes=3"):
        RegressionTask(net, ["xmax"], [750.0], [70.0], num_classes=3)


@pytest.mark.parametrize("experiment", ["auger_hexconv", "auger_transformer",
                                        "auger_transformer model=auger_perceiver data.classify_primary=true"])
def test_experiment_fast_dev_run(experiment, tmp_path):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf, open_dict

    from physics_tf.config import config_dir
    from physics_tf.auger.simulate import run_generate
    from physics_tf.training.run import run_train

    data = tmp_path / "data"
    run_generate(OmegaConf.create({"out_dir": str(data / "generated" / "auger_sim"), "n_train": 64, "n_val": 32,
                                   "n_test": 32, "chunk": 32, "seed": 0, "progress": False}))
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir())):
        cfg = compose("train", overrides=[f"experiment={experiment.split()[0]}", *experiment.split()[1:],
                                          f"paths.data_dir={data}",
                                          "trainer.fast_dev_run=true", "data.batch_size=16", "logger=none"],
                      return_hydra_config=True)
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "run")
        del cfg.hydra
    metrics = run_train(cfg)
    assert "merit_factor_p_fe" in metrics["xmax"]
    for name in ("metrics.json", "resolution.png", "residuals.png", "config.yaml"):
        assert (tmp_path / "run" / name).is_file(), name
    if "classify_primary=true" in experiment:
        assert "accuracy" in metrics["primary"] and (tmp_path / "run" / "confusion.png").is_file()


def _xmax_rms_after_training(tmp_path, n_train: int, n_test: int, epochs: int, sizes: dict[str, list[str]],
                             seed: int = 11) -> tuple[dict[str, float], float]:
    """X_max RMS error on ``n_test`` held-out events of each experiment in ``sizes`` (experiment → model overrides)
    trained on ``n_train`` simulated events; and the spread (std) of the true X_max."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf, open_dict

    from physics_tf.config import config_dir
    from physics_tf.auger.simulate import run_generate
    from physics_tf.training.run import run_train

    data = tmp_path / "data"
    run_generate(OmegaConf.create({"out_dir": str(data / "generated" / "auger_sim"), "n_train": n_train, "n_val": 256,
                                   "n_test": n_test, "seed": seed, "progress": False}))
    rms = {}
    for experiment, extra in sizes.items():
        GlobalHydra.instance().clear()
        with initialize_config_dir(version_base="1.3", config_dir=str(config_dir())):
            cfg = compose("train", overrides=[f"experiment={experiment}", f"paths.data_dir={data}", *extra,
                                              f"trainer.max_epochs={epochs}", "data.batch_size=32", "task.lr=2e-3",
                                              "logger=none", "callbacks=none", "seed=1"],
                          return_hydra_config=True)
        HydraConfig().set_config(cfg)
        with open_dict(cfg):
            cfg.paths.output_dir = str(tmp_path / experiment)
            cfg.trainer.enable_progress_bar = False
            del cfg.hydra
        m = run_train(cfg)
        rms[experiment], spread = m["xmax"]["rms"], m["xmax"]["true_std"]
    print(f"X_max RMS: {rms}, spread {spread:.1f} g/cm²")
    return rms, spread


@pytest.mark.slow
def test_ci_sized_run_transformer_beats_the_mean_and_the_baseline(tmp_path):
    """The issue's acceptance check at CI size: trained on 6,000 simulated events for 5 epochs with reduced widths,
    on 800 held-out events the transformer's X_max RMS error is no worse than the baseline's and below 0.6 × the
    spread of true X_max (the stated CI threshold; the goal of half the spread is met by the long run in the
    README). Measured here: 30.7 vs 34.1 g/cm², spread 59.5. About 80 s on 2 cores: slow; the default suite runs
    the small version below."""
    rms, spread = _xmax_rms_after_training(tmp_path, 6000, 800, 5, {
        "auger_transformer": ["model.temporal_dim=32", "model.temporal_depth=1", "model.dim=48", "model.num_heads=4",
                              "model.depth=2", "model.pair_hidden=16"],
        "auger_hexconv": ["model.rnn_hidden=16", "model.station_dim=16", "model.conv_channels=[32,32]",
                          "model.head_dims=[64]"]})
    assert rms["auger_transformer"] < 0.6 * spread
    assert rms["auger_transformer"] <= rms["auger_hexconv"]


def test_small_run_transformer_beats_the_mean(tmp_path):
    """The acceptance check made small for the default suite: a narrow transformer trained on 1,500 simulated events
    for 3 epochs; on 400 held-out events its X_max RMS error is below 0.9 × the spread of true X_max (the RMS error of
    predicting the mean). Measured: 0.75 × (41.2 vs 55.2 g/cm², these seeds) and 0.79 × (another data seed)."""
    rms, spread = _xmax_rms_after_training(tmp_path, 1500, 400, 3, {
        "auger_transformer": ["model.temporal_dim=16", "model.temporal_heads=2", "model.temporal_depth=1",
                              "model.dim=32", "model.num_heads=4", "model.depth=2", "model.pair_hidden=16",
                              "model.head_hidden=32"]})
    assert rms["auger_transformer"] < 0.9 * spread
