"""The jet baselines of the published tables — P-CNN, ParticleNet, LorentzNet: parameter counts as published,
outputs independent of padding (length and content), ParticleNet's neighbours, P-CNN's pT order, LorentzNet's
Lorentz invariance, ONNX export of the kNN top-k; and benchmarks/jetclass_table.py end to end (slow).
(Every experiment's fast_dev_run: tests/test_pipelines.py::test_every_experiment_fast_dev_run.)"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import synth_jetclass
from hydra.utils import instantiate
from test_pipelines import compose_train

from physics_tf.jets.export import example_batch
from physics_tf.jets.lorentznet import LorentzNet
from physics_tf.jets.particlenet import ParticleNet, eta_phi_points, knn
from physics_tf.jets.pcnn import ParticleCNN

ROOT = Path(__file__).resolve().parents[1]


def batch(n: int, length: int, seed: int, features: int = 7) -> dict[str, torch.Tensor]:
    class Dims:
        num_features = features
    return example_batch(Dims, n, length, torch.Generator().manual_seed(seed))


# small versions of each architecture (the published sizes are counted below)
TINY = {
    "pcnn": lambda: ParticleCNN(7, 3, conv_params=((8,), (8, 8), (16, 16)), fc_dims=(16,)),
    "particlenet": lambda: ParticleNet(7, 3, conv_params=((4, (8, 8)), (4, (16, 16))), fc_dims=(16,)),
    "lorentznet": lambda: LorentzNet(7, 3, hidden=8, num_layers=2, scalar_features=[5, 6]),
}


@pytest.mark.parametrize(("model", "dims", "published", "count"), [
    ("particlenet", (17, 10), 370_000, 370_156),  # ParT paper's JetClass table
    ("particlenet", (7, 2), 366_000, 366_160),    # ParticleNet paper (top tagging, 7 features)
    ("pcnn", (17, 10), 354_000, 354_540),         # ParT paper's JetClass table
    ("lorentznet", (13, 2), 224_000, 224_072),    # LorentzNet paper (top tagging)
])
def test_configured_sizes_match_the_papers(model, dims, published, count, tmp_path):
    cfg = compose_train([f"model={model}"], tmp_path)
    net = instantiate(cfg.model, input_dim=dims[0], num_classes=dims[1])
    n = sum(p.numel() for p in net.parameters())
    assert n == count and abs(n - published) / published < 0.02


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("model", sorted(TINY))
def test_padding_changes_nothing(model, training):
    """More padding, with junk in it, gives the same logits (training mode too: BatchNorm sees real rows only)."""
    torch.manual_seed(0)
    net = TINY[model]().train(training)
    b = batch(5, 13, seed=1)  # 1 … 12 real particles, fewer than k = 4 neighbours in some jets
    gen = torch.Generator().manual_seed(2)
    padded = {"mask": torch.cat((b["mask"], torch.zeros(5, 6, dtype=torch.bool)), 1)}
    for key in ("x", "v"):
        padded[key] = torch.cat((b[key], torch.zeros(5, 6, b[key].shape[-1])), 1)
        pad = ~padded["mask"]
        padded[key][pad] = torch.randn(int(pad.sum()), b[key].shape[-1], generator=gen) * 50  # junk in padding
    torch.manual_seed(3)
    ref = net(**b)
    net.trim = False  # the padded length as given
    torch.manual_seed(3)
    got = net(**padded)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_particlenet_neighbours_are_the_nearest_real_particles():
    gen = torch.Generator().manual_seed(0)
    points = torch.randn(2, 9, 2, generator=gen)
    mask = torch.tensor([[1] * 7 + [0] * 2, [1] * 3 + [0] * 6], dtype=torch.bool)
    points[~mask] = points[0, 0].clone()  # padded points on top of a real one: still never neighbours
    idx, valid = knn(points, mask, k=4)
    for b in range(2):
        real = mask[b].nonzero().flatten().tolist()
        for i in real:
            others = sorted((j for j in real if j != i), key=lambda j: float((points[b, i] - points[b, j]).norm()))
            expect = others[:4]
            got = [int(j) for j, ok in zip(idx[b, i], valid[b, i]) if ok]
            assert got == expect, (b, i)
            assert int(valid[b, i].sum()) == min(4, len(real) - 1)


def test_particlenet_points_are_eta_phi_to_the_jet_axis():
    """Δφ wraps around ±π; the points follow the jet: a rotation about the beam leaves the output unchanged."""
    pt, eta, phi = torch.tensor([100.0, 50.0, 20.0]), torch.tensor([0.5, 0.6, 0.3]), torch.tensor([3.1, -3.1, 3.0])
    v = torch.stack((pt * phi.cos(), pt * phi.sin(), pt * torch.sinh(eta), pt * torch.cosh(eta)), -1)[None]
    points = eta_phi_points(v, torch.ones(1, 3, dtype=torch.bool))[0]
    jet = v[0].sum(0)
    jet_eta = torch.asinh(jet[2] / jet[:2].norm())
    jet_phi = torch.atan2(jet[1], jet[0])
    torch.testing.assert_close(points[:, 0], eta - jet_eta, atol=1e-5, rtol=0)
    dphi = torch.remainder(phi - jet_phi + math.pi, 2 * math.pi) - math.pi
    torch.testing.assert_close(points[:, 1], dphi, atol=1e-5, rtol=0)
    assert points[:, 1].abs().max() < 0.2

    torch.manual_seed(0)
    net = TINY["particlenet"]().eval()
    b = batch(4, 12, seed=5)
    c, s = math.cos(2.5), math.sin(2.5)
    rotated = b["v"].clone()
    rotated[..., 0], rotated[..., 1] = c * b["v"][..., 0] - s * b["v"][..., 1], s * b["v"][..., 0] + c * b["v"][..., 1]
    with torch.no_grad():
        torch.testing.assert_close(net(**{**b, "v": rotated}), net(**b), atol=1e-5, rtol=1e-5)


def test_pcnn_reads_the_particles_in_pt_order():
    torch.manual_seed(0)
    net = TINY["pcnn"]().eval()
    b = batch(4, 12, seed=6)
    perm = torch.randperm(12, generator=torch.Generator().manual_seed(1))  # padding moves between real particles
    with torch.no_grad():
        ref = net(**b)
        torch.testing.assert_close(net(**{k: t[:, perm] for k, t in b.items()}), ref, atol=1e-6, rtol=1e-6)
        swapped = b["x"].clone()  # the same features on other momenta: the order is the pT order, not the input's
        swapped[:, [0, 1]] = swapped[:, [1, 0]]
        assert not torch.allclose(net(**{**b, "x": swapped}), ref)


def _boost(v: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """Lorentz boost of (px, py, pz, E) four-vectors by the velocity 3-vector beta."""
    b2 = beta.square().sum()
    gamma = 1 / torch.sqrt(1 - b2)
    p, e = v[..., :3], v[..., 3:]
    bp = (p * beta).sum(-1, keepdim=True)
    p_new = p + ((gamma - 1) * bp / b2 - gamma * e) * beta
    return torch.cat((p_new, gamma * (e - bp)), -1)


def _rotate(v: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
    return torch.cat((v[..., :3] @ rotation.T, v[..., 3:]), -1)


def test_lorentznet_is_lorentz_invariant(tmp_path):
    cfg = compose_train(["model=lorentznet", "model.hidden=16", "model.num_layers=3"], tmp_path)  # smaller, faster
    torch.manual_seed(0)
    net = instantiate(cfg.model, input_dim=7, num_classes=3, scalar_features=[5, 6], beams=False).eval()
    b = batch(4, 16, seed=7)
    rotation = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64))[0]
    moved = _rotate(_boost(b["v"].double(), torch.tensor([0.3, -0.4, 0.5], dtype=torch.float64)), rotation)
    with torch.no_grad():
        ref = net(**b)
        assert ref.abs().max() > 1e-2  # not a trivially constant output
        torch.testing.assert_close(net(**{**b, "v": moved.float()}), ref, atol=1e-3, rtol=1e-3)  # fp32 round-off
        net64 = net.double()
        b64 = {**b, "x": b["x"].double(), "v": b["v"].double()}
        torch.testing.assert_close(net64(**{**b64, "v": moved}), net64(**b64), atol=1e-9, rtol=1e-9)

    # with the two beam particles (the default): invariant under rotations about the beam axis only
    beams = instantiate(cfg.model, input_dim=7, num_classes=3).eval().double()
    c, s = math.cos(2.0), math.sin(2.0)
    about_z = torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    b64 = {**b, "x": b["x"].double(), "v": b["v"].double()}
    with torch.no_grad():
        ref = beams(**b64)
        torch.testing.assert_close(beams(**{**b64, "v": _rotate(b64["v"], about_z)}), ref, atol=1e-9, rtol=1e-9)
        assert (beams(**{**b64, "v": _rotate(b64["v"], rotation)}) - ref).abs().max() > 1e-4


def test_particlenet_knn_exports_to_onnx(tmp_path):
    """ParticleNet (k = 16) in ONNX Runtime gives PyTorch's logits, for jets shorter and longer than k."""
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from omegaconf import OmegaConf

    from physics_tf.training.export import (
        build_network,
        example_inputs,
        export_onnx,
        onnx_feed,
    )

    cfg = compose_train(["experiment=jets_particlenet", "model.conv_params=[[16,[8,8]],[16,[16]]]",
                         "model.fc_dims=[16]"], tmp_path)
    net, dm = build_network(OmegaConf.to_container(cfg, resolve=True))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.1)
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.5)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
    export_onnx(net, dm, tmp_path / "pn.onnx")
    session = ort.InferenceSession(str(tmp_path / "pn.onnx"), providers=["CPUExecutionProvider"])
    for size, length in ((3, 9), (4, 30)):  # longest jet 8 < k and 29 > k
        check = example_inputs(net, dm, batch_size=size, length=length, seed=size)
        got = session.run(None, onnx_feed(session, check))[0]
        with torch.no_grad():
            ref = net(**check).numpy()
        assert np.abs(ref).max() > 1e-2 and float(np.abs(got - ref).max()) < 1e-4


@pytest.mark.slow
def test_jetclass_table_runs_and_resumes(tmp_path):
    """The table script on a tiny 4-class set: two models through the training pipeline, the JSON's figures; a
    second call skips the finished models."""
    from physics_tf.jets.writers import write_jetclass_root

    out = tmp_path / "data" / "generated" / "tiny"
    out.mkdir(parents=True)
    for i, split in enumerate(["train", "val", "test"]):  # QCD, Zqq, Wqq, Tbqq
        p, j, lab = synth_jetclass(96, seed=i, classes=(0, 6, 7, 8), max_particles=20)
        write_jetclass_root(out / f"{split}_000.root", p, j, lab)
    cmd = [sys.executable, str(ROOT / "benchmarks" / "jetclass_table.py"), "--data-dir", str(tmp_path / "data"),
           "--dataset", "tiny", "--models", "pfn,particlenet", "--steps", "3", "--batch", "16", "--val-every", "2",
           "--val-batches", "1", "--flops-batch", "8", "--work-dir", str(tmp_path / "runs"),
           "--json", str(tmp_path / "table.json")]
    res = subprocess.run(cmd, check=False, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    table = json.loads((tmp_path / "table.json").read_text())
    assert table["settings"]["steps"] == 3 and set(table["models"]) == {"pfn", "particlenet"}
    for name, row in table["models"].items():
        assert 0 <= row["accuracy"] <= 1 and 0 <= row["auc_macro"] <= 1, name
        assert set(row["rej50"]) == {"Tbqq", "Wqq", "Zqq"}, row["rej50"]
        assert row["params"] > 0 and row["flops_per_jet"] > 0 and row["train_s"] > 0 and row["num_jets"] == 96
    assert table["models"]["pfn"]["params"] == 84_894  # 13 kinpid features and 4 classes (86,188 with 17 and 10)
    assert table["published"]["jetclass"]["part"]["accuracy"] == 0.861
    for row in table["models"].values():  # each row carries the load and command of its own training
        assert len(row["load_average"]["before"]) == 3 and "jetclass_table.py" in row["trained_by"]
        assert row["wall_s"] > 0
    again = subprocess.run(cmd, check=False, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and again.stdout.count("skipped") == 2, again.stdout[-2000:]
    # without the JSON the finished runs are read back (no training) and keep their own load, wall time, command
    (tmp_path / "table.json").unlink()
    third = subprocess.run(cmd, check=False, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert third.returncode == 0 and "pipelines/train.py" not in third.stdout, third.stdout[-2000:]
    back = json.loads((tmp_path / "table.json").read_text())["models"]
    for name, row in table["models"].items():
        for key in ("accuracy", "load_average", "wall_s", "trained_by"):
            assert back[name][key] == row[key], (name, key)
