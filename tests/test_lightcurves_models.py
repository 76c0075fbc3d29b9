"""Light-curve models (transformer, GRU), the PLAsTiCC metric, the task and both experiments end to end."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from physics_tf.lightcurves.data import LightCurveDataset, collate_lightcurves, meta_matrix
from physics_tf.lightcurves.simulate import simulate, write_dataset
from physics_tf.lightcurves.gru import LightCurveGRU
from physics_tf.lightcurves.transformer import LightCurveTransformer
from physics_tf.lightcurves.task import plasticc_weighted_logloss
from physics_tf.tasks.metrics import balanced_accuracy

CODES = [90, 42, 62, 95, 15, 64, 88, 92, 16, 65, 53, 6]
MODELS = {"transformer": lambda: LightCurveTransformer(12, meta_dim=6, dim=32, num_heads=4, num_layers=2, dropout=0.0),
          "gru": lambda: LightCurveGRU(12, meta_dim=6, hidden=32, dropout=0.0)}


@pytest.fixture(scope="module")
def batch():
    lc = simulate(24, seed=4)
    labels = np.array([CODES.index(int(t)) for t in lc.meta["target"]])
    ds = LightCurveDataset(lc, labels, meta_matrix(lc, ["hostgal_photoz", "hostgal_photoz_err", "mwebv", "ddf",
                                                          "distmod", "extragalactic"]), max_length=40)
    return collate_lightcurves([ds[i] for i in range(len(ds))])


def _inputs(b):
    return {k: v for k, v in b.items() if k in ("flux", "flux_err", "time", "band", "mask", "meta")}


def _net(name):
    torch.manual_seed(0)
    return MODELS[name]().eval()


@pytest.mark.parametrize("name", MODELS)
def test_forward_backward(name, batch):
    net = MODELS[name]()
    out = net(**_inputs(batch))
    assert out.shape == (24, 12) and torch.isfinite(out).all()
    torch.nn.functional.cross_entropy(out, batch["y"]).backward()
    grads = [p.grad for p in net.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("name", MODELS)
def test_padding_invariance(name, batch):
    net, x = _net(name), _inputs(batch)
    padded = {}
    for k, v in x.items():
        if k == "meta":
            padded[k] = v
            continue
        fill = torch.zeros if k == "mask" else (lambda *s, dtype: torch.full(s, 7, dtype=dtype))
        padded[k] = torch.cat((v, fill(v.shape[0], 13, dtype=v.dtype)), dim=1)  # garbage behind mask = False
    with torch.no_grad():
        torch.testing.assert_close(net(**padded), net(**x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", MODELS)
def test_time_shift_and_order_invariance(name, batch):
    net, x = _net(name), _inputs(batch)
    with torch.no_grad():
        ref = net(**x)
        # absolute MJD instead of relative days; in float64 so that MJD ~ 6e4 keeps its 1e-4 d resolution
        # (float32 resolves MJD only to 4e-3 d — the data module subtracts the first time in float64)
        net64 = net.double()
        x64 = {k: (v.double() if v.is_floating_point() else v) for k, v in x.items()}
        shifted = dict(x64, time=x64["time"] + 60000.0)
        torch.testing.assert_close(net64(**shifted), net64(**x64), atol=1e-9, rtol=1e-9)
        net.float()
        perm = torch.randperm(x["flux"].shape[1])
        permuted = {k: (v if k == "meta" else v[:, perm]) for k, v in x.items()}  # token order shuffled
        torch.testing.assert_close(net(**permuted), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", MODELS)
def test_real_time_gaps_and_bands_matter(name, batch):
    net, x = _net(name), _inputs(batch)
    with torch.no_grad():
        ref = net(**x)
        stretched = net(**dict(x, time=x["time"] * 3.0))  # same order, different gaps
        assert (stretched - ref).abs().max() > 1e-3
        swapped = net(**dict(x, band=(x["band"] + 1) % 6))
        assert (swapped - ref).abs().max() > 1e-3


def test_transformer_index_free_time_encoding(batch):
    """Two observations swapped in time (not in index) change the output: time enters through the real value."""
    net, x = _net("transformer"), _inputs(batch)
    t = x["time"].clone()
    t[:, [1, 2]] = t[:, [2, 1]]
    with torch.no_grad():
        assert (net(**dict(x, time=t)) - net(**x)).abs().max() > 1e-4


def test_weighted_logloss_hand_computed():
    probs = np.array([[0.7, 0.2, 0.1], [0.5, 0.3, 0.2], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]])
    labels = np.array([0, 0, 1, 2])
    codes = [90, 64, 42]  # 64 (kilonova) weighs 2
    expected = (-(math.log(0.7) + math.log(0.5)) / 2 + 2 * -math.log(0.8) - math.log(0.6)) / (1 + 2 + 1)
    assert plasticc_weighted_logloss(probs, labels, codes) == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(0.370505, abs=1e-6)
    # rows are renormalised after clipping: scaling a row down changes nothing
    assert plasticc_weighted_logloss(probs * np.array([[0.5], [1], [0.25], [1]]), labels, codes) == pytest.approx(expected)
    # a zero probability is clipped at 1e-15: −ln(1e-15) = 34.54
    hard = np.array([[0.0, 1.0], [1.0, 0.0]])
    assert plasticc_weighted_logloss(hard, np.array([0, 1]), [90, 42]) == pytest.approx(-math.log(1e-15), rel=1e-6)
    # absent classes are left out of both sums
    assert plasticc_weighted_logloss(probs[:2], labels[:2], codes) == pytest.approx(-(math.log(0.7) + math.log(0.5)) / 2)
    assert balanced_accuracy(probs, np.array([0, 1, 1, 2])) == pytest.approx((1 + 0.5 + 1) / 3)


@pytest.mark.parametrize("name", MODELS)
def test_short_training_lowers_the_loss(name, batch):
    torch.manual_seed(0)
    net = MODELS[name]()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    x = _inputs(batch)
    losses = []
    for _ in range(40):
        loss = torch.nn.functional.cross_entropy(net(**x), batch["y"])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


@pytest.fixture(scope="module")
def lc_data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_dataset(root / "generated" / "lightcurves_sim", {"train": 24, "val": 12, "test": 24}, seed=1, csv=False)
    return root


# beside tests/test_pipelines.py's fast_dev_run of every experiment: the PLAsTiCC numbers agree with the predictions file
@pytest.mark.parametrize("experiment", ["lightcurves_transformer", "lightcurves_gru"])
def test_experiment_fast_dev_run(experiment, lc_data_dir, tmp_path):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from physics_tf.config import config_dir
    from physics_tf.training.run import run_train

    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir())):
        cfg = compose("train", overrides=[f"experiment={experiment}", f"paths.data_dir={lc_data_dir}",
                                          "trainer.fast_dev_run=true", "data.batch_size=24", "data.max_length=32",
                                          "logger=none", "model.num_layers=1"], return_hydra_config=True)
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path)
        del cfg.hydra
    metrics = run_train(cfg)
    for key in ["accuracy", "auc_macro", "plasticc_logloss", "balanced_accuracy", "early_0d_logloss",
                "early_100d_accuracy"]:
        assert key in metrics
    for name in ["metrics.json", "confusion.png", "early_classification.png", "predictions.npz"]:
        assert (tmp_path / name).is_file(), name
    pred = np.load(tmp_path / "predictions.npz")
    assert json.loads((tmp_path / "metrics.json").read_text())["plasticc_logloss"] == pytest.approx(
        plasticc_weighted_logloss(pred["probs"], pred["labels"], CODES))


def test_transformer_initialisation_is_the_pre_pool_draw_order():
    """The shared ClassTokenPool changes no initial weight: the transformer built after a seed equals the layout it
    had before (class token drawn after the blocks, then class blocks and norm, all on the model)."""
    from physics_tf.nn.blocks import ClassAttentionBlock, TransformerBlock
    from physics_tf.nn.state_keys import rename_legacy_key

    dim, heads = 16, 2
    torch.manual_seed(0)
    new = LightCurveTransformer(12, meta_dim=6, dim=dim, num_heads=heads, num_layers=2, num_cls_layers=2,
                                attn_dropout=0.05)
    torch.manual_seed(0)
    old = torch.nn.Module()
    old.obs_proj = torch.nn.Linear(3, dim)
    old.band_embed = torch.nn.Embedding(6, dim)
    old.time_proj = torch.nn.Linear(dim, dim, bias=False)
    old.meta_proj = torch.nn.Sequential(torch.nn.Linear(7, dim), torch.nn.GELU(), torch.nn.Linear(dim, dim))
    old.blocks = torch.nn.ModuleList(TransformerBlock(dim, heads, 4, 0.1, 0.05, 0.1) for _ in range(2))
    old.cls_token = torch.nn.Parameter(torch.nn.init.trunc_normal_(torch.zeros(1, 1, dim), std=0.02))
    old.cls_blocks = torch.nn.ModuleList(ClassAttentionBlock(dim, heads, 4, 0.1, 0.05, 0.1) for _ in range(2))
    old.norm = torch.nn.LayerNorm(dim)
    old.head = torch.nn.Linear(dim, 12)
    renames = LightCurveTransformer.LEGACY_STATE_KEYS
    old_state = {rename_legacy_key(k, renames): v for k, v in old.state_dict().items()}
    assert old_state.keys() == new.state_dict().keys()
    for key, value in new.state_dict().items():
        assert torch.equal(value, old_state[key]), key
    # the same dropout settings: train-mode outputs of the two layouts agree draw for draw
    assert new.pool.blocks[0].attn.dropout == 0.05 and new.pool.blocks[0].dropout.p == 0.1
    assert new.pool.blocks[0].act_dropout.p == 0.1 and new.pool.blocks[0].norm_query


def test_transformer_loads_a_state_dict_written_before_the_shared_pool(batch):
    """tests/data/legacy/lightcurves_transformer.ckpt (code before the move): ``cls_token``, ``cls_blocks.*``,
    ``norm.*`` on the model."""
    from pathlib import Path

    path = Path(__file__).resolve().parent / "data" / "legacy" / "lightcurves_transformer.ckpt"
    checkpoint = torch.load(path, weights_only=True)
    state = {k.removeprefix("net."): v for k, v in checkpoint["state_dict"].items() if k.startswith("net.")}
    assert {"cls_token", "cls_blocks.0.fc1.weight", "norm.weight"} <= set(state)
    config = {k: v for k, v in checkpoint["physics_tf_config"]["model"].items() if k != "_target_"}
    net = LightCurveTransformer(state["head.weight"].shape[0], meta_dim=state["meta_proj.0.weight"].shape[1] - 1,
                                **config)
    net.load_state_dict(state)  # strict
    assert torch.equal(net.pool.cls_token, state["cls_token"]) and torch.equal(net.pool.norm.bias, state["norm.bias"])
    task = torch.nn.ModuleDict({"net": LightCurveTransformer(net.head.out_features, net.config["meta_dim"], **config)})
    task.load_state_dict(checkpoint["state_dict"])
    x = _inputs(batch)
    x["meta"] = x["meta"][:, : net.config["meta_dim"]]
    net.eval(), task.eval()
    with torch.no_grad():
        torch.testing.assert_close(task["net"](**x), net(**x), atol=0, rtol=0)
