"""The light-curve transformer's attention options (``model.attention.score`` / ``.kind``) and patches
(``model=lightcurve_patch``), built from config: each trains a step, keeps the invariances the model docstring
promises (time shift, token order, padding), is rebuilt from its checkpoint hparams, and the conditioning token is
handled as documented for kinds with locality."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from test_pipelines import compose_train

from physics_tf.lightcurves.data import (
    LightCurveDataset,
    collate_lightcurves,
    meta_matrix,
)
from physics_tf.lightcurves.simulate import simulate
from physics_tf.lightcurves.transformer import LightCurveTransformer
from physics_tf.nn.efficient import KINDS
from physics_tf.nn.scores import SCORES

CODES = [90, 42, 62, 95, 15, 64, 88, 92, 16, 65, 53, 6]
TINY = ["model.dim=16", "model.num_heads=2", "model.num_layers=1", "model.ffn_ratio=2", "model.dropout=0.0"]
# options a score / kind needs or is tested with (24 observations: ≤ 25 tokens in the blocks, 26 keys in the pool)
OPTIONS = {"location": ["model.attention.max_len=32"], "window": ["model.attention.window=4"],
           "lsh": ["model.attention.bucket_size=4", "model.attention.n_hashes=2", "model.attention.seed=0"],
           "sparse_strided": ["model.attention.block=4"], "sparse_fixed": ["model.attention.block=4"]}
CASES = [f"score={s}" for s in SCORES] + [f"kind={k}" for k in KINDS if k != "full"]


@pytest.fixture(scope="module")
def batch():
    lc = simulate(6, seed=4)
    labels = np.array([CODES.index(int(t)) for t in lc.meta["target"]])
    ds = LightCurveDataset(lc, labels, meta_matrix(lc, ["hostgal_photoz", "hostgal_photoz_err", "mwebv", "ddf",
                                                          "distmod", "extragalactic"]), max_length=24)
    b = collate_lightcurves([ds[i] for i in range(len(ds))])
    b["mask"][1, 15:] = False  # a shorter curve: padding inside the batch
    return b


def _inputs(b):
    return {k: v for k, v in b.items() if k in ("flux", "flux_err", "time", "band", "mask", "meta")}


def _build(case: str, tmp_path, model: str = "lightcurve_transformer", extra: tuple[str, ...] = ()):
    key, value = case.split("=")
    cfg = compose_train([f"model={model}", "data=lightcurves_sim", "paths.data_dir=/nonexistent", *TINY,
                         f"model.attention.{key}={value}", *OPTIONS.get(value, []), *extra], tmp_path)
    torch.manual_seed(0)
    return instantiate(cfg.model, **instantiate(cfg.data).model_dims)


@pytest.mark.parametrize("case", CASES)
def test_option_from_config_trains_a_step_and_keeps_the_invariances(case, batch, tmp_path):
    net = _build(case, tmp_path)
    key, value = case.split("=")
    assert net.config["attention"][key] == value
    attn, pool_attn = net.blocks[0].attn, net.pool.blocks[0].attn
    if key == "kind":
        assert attn.kind == value and pool_attn.kind == "full"  # the pool's one query reads every token
    else:
        assert type(attn.score).__name__.lower() == type(pool_attn.score).__name__.lower() == value.replace("_", "")
    x = _inputs(batch)
    # one training step: finite loss, a gradient on every parameter, the weights move
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2)
    before = [p.detach().clone() for p in net.parameters()]
    loss = torch.nn.functional.cross_entropy(net.train()(**x), batch["y"])
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())
    opt.step()
    assert any(not torch.equal(a, p) for a, p in zip(before, net.parameters()))

    net.eval()
    n = x["flux"].shape[0]
    with torch.no_grad():
        # token order: the model sorts by (time, band) wherever positions matter, so no option depends on it
        perm = torch.randperm(x["flux"].shape[1], generator=torch.Generator().manual_seed(1))
        both = net(**{k: torch.cat((v, v if k == "meta" else v[:, perm])) for k, v in x.items()})
        ref = both[:n]
        torch.testing.assert_close(both[n:], ref, atol=1e-5, rtol=1e-5)
        if value != "lsh":  # lsh's buckets and chunks depend on the padded length (physics_tf.nn.lsh)
            padded = {k: v if k == "meta" else torch.cat((v, (torch.zeros_like(v[:, :5]) if k == "mask"
                                                              else torch.full_like(v[:, :5], 7))), dim=1)
                      for k, v in x.items()}
            torch.testing.assert_close(net(**padded), ref, atol=1e-5, rtol=1e-5)
        # time shift to absolute MJD, in float64 (float32 resolves MJD ~ 6e4 only to 4e-3 d)
        x64 = {k: (v.double() if v.is_floating_point() else v) for k, v in x.items()}
        shifted = net.double()(**{k: torch.cat((v, v + 60000.0 if k == "time" else v)) for k, v in x64.items()})
        torch.testing.assert_close(shifted[n:], shifted[:n], atol=1e-9, rtol=1e-9)
        net.float()
        # the checkpoint's hparams rebuild the same network
        again = LightCurveTransformer(**net.hparams_for_checkpoint).eval()
        again.load_state_dict(net.state_dict())
        torch.testing.assert_close(again(**x), ref, atol=0, rtol=0)


def test_local_kinds_leave_the_conditioning_token_out_of_the_blocks(batch, tmp_path):
    """With a kind other than full the blocks see the observation tokens only, each with the conditioning added, so
    the metadata reaches every token even in windows of 4; the pool reads [conditioning token, tokens]."""
    x = _inputs(batch)
    seen = {}
    for case in ("kind=window", "kind=full"):
        net = _build(case, tmp_path).eval()
        outs = []
        net.blocks[0].register_forward_hook(lambda m, args, out, outs=outs: outs.append(out))
        with torch.no_grad():
            net(**x)
            net(**dict(x, meta=x["meta"] + 1.0))
        seen[case] = outs
    full, window = seen["kind=full"], seen["kind=window"]
    assert full[0].shape[1] == x["flux"].shape[1] + 1  # [conditioning token, observations]
    assert window[0].shape[1] == x["flux"].shape[1]  # observations only
    mask = x["mask"]
    change = (window[1] - window[0]).abs().amax(dim=-1)  # (B, L) per token
    assert (change[mask] > 1e-4).all()  # every real token feels the metadata, not only the first window


def test_patches_from_config(batch, tmp_path):
    """model=lightcurve_patch: P observations per token (⌈L/P⌉ + 1 tokens in the blocks), also with an attention
    option; the invariances of the per-observation model hold."""
    x = _inputs(batch)
    for case, extra in (("score=scaled_dot", ("model.patch_size=4",)), ("kind=window", ("model.attention.window=2",
                                                                                         "model.patch_size=8"))):
        net = _build(case, tmp_path, model="lightcurve_patch", extra=extra).eval()
        p = net.config["patch_size"]
        lengths = []
        net.blocks[0].register_forward_hook(lambda m, args, out, lengths=lengths: lengths.append(out.shape[1]))
        with torch.no_grad():
            ref = net(**x)
            perm = torch.randperm(x["flux"].shape[1], generator=torch.Generator().manual_seed(2))
            torch.testing.assert_close(net(**{k: (v if k == "meta" else v[:, perm]) for k, v in x.items()}), ref,
                                       atol=1e-5, rtol=1e-5)
            padded = {k: v if k == "meta" else torch.cat((v, torch.zeros_like(v[:, :11]) if k == "mask"
                                                         else torch.full_like(v[:, :11], 3)), dim=1)
                      for k, v in x.items()}
            torch.testing.assert_close(net(**padded), ref, atol=1e-5, rtol=1e-5)
            x64 = {k: (v.double() if v.is_floating_point() else v) for k, v in x.items()}
            shifted = net.double()(**{k: torch.cat((v, v + 60000.0 if k == "time" else v)) for k, v in x64.items()})
            torch.testing.assert_close(shifted[len(ref):], shifted[: len(ref)], atol=1e-9, rtol=1e-9)
            net.float()
            # the observations' values and real time gaps matter
            assert (net(**dict(x, time=x["time"] * 2.0)) - ref).abs().max() > 1e-4
            assert (net(**dict(x, band=(x["band"] + 1) % 6)) - ref).abs().max() > 1e-4
        local = case.startswith("kind")
        assert lengths[0] == -(-x["flux"].shape[1] // p) + (0 if local else 1)
        again = LightCurveTransformer(**net.hparams_for_checkpoint).eval()
        again.load_state_dict(net.state_dict())
        with torch.no_grad():
            torch.testing.assert_close(again(**x), ref, atol=0, rtol=0)


def test_bad_attention_options_name_the_key(tmp_path):
    """An option the score / kind does not take, or a kind with another score than scaled_dot, is refused naming
    it (the CLI prints Hydra's InstantiationException, an input error, as one line with the cause)."""
    from hydra.errors import InstantiationException

    with pytest.raises(InstantiationException, match="unknown attention option window="):
        _build("score=scaled_dot", tmp_path, extra=("model.attention.window=4",))
    with pytest.raises(InstantiationException, match="kind='window' works with score='scaled_dot' only, not "
                                                     "score='additive'"):
        _build("kind=window", tmp_path, extra=("model.attention.score=additive",))
    with pytest.raises(ValueError, match="patch_size"):
        LightCurveTransformer(12, patch_size=0)
