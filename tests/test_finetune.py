"""Fine-tuning (physics_tf.tasks.finetune, task.pretrained / lr_backbone_mult / freeze_blocks): the backbone of a
pretrained network loaded with a new head for every model, the backbone's learning rate, frozen blocks, weaver-core
ParT state dicts, one-line errors, no reload on resume, and a fine-tuned ParT beating one trained from scratch."""

from __future__ import annotations

import logging

import lightning as L
import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from physics_tf.auger.hexconv import AugerHexConvNet
from physics_tf.auger.transformer import AugerTransformer
from physics_tf.data.errors import DataError
from physics_tf.jets.part import ParticleTransformer, from_weaver_state_dict
from physics_tf.jets.pfn import ParticleFlowNetwork
from physics_tf.jets.task import JetTaggingTask
from physics_tf.lightcurves.gru import LightCurveGRU
from physics_tf.lightcurves.transformer import LightCurveTransformer
from physics_tf.tasks import finetune
from physics_tf.tasks.classification import ClassificationTask
from physics_tf.tasks.metrics import auc_macro
from physics_tf.tasks.optim import split_weight_decay_params

SMALL_PART = dict(embed_dims=(16, 32, 16), pair_embed_dims=(8, 8), num_heads=2, num_layers=2, num_cls_layers=1,
                  dropout=0.0, attn_dropout=0.0, activation_dropout=0.0, train_trim_quantiles=None)
# every model, built for n outputs (classes or regression outputs), and the number of blocks it declares
MODELS = {
    "part": (lambda n: ParticleTransformer(4, n, **SMALL_PART), 2),
    "part_plain": (lambda n: ParticleTransformer(4, n, use_interaction=False, **SMALL_PART), 2),
    "pfn": (lambda n: ParticleFlowNetwork(4, n, phi_dims=(16, 16, 16), f_dims=(16,)), 3),
    "auger_transformer": (lambda n: AugerTransformer(5, 120, n, temporal_dim=16, temporal_heads=2, temporal_depth=1,
                                                     dim=16, num_heads=2, depth=2, head_hidden=16), 2),
    "auger_perceiver": (lambda n: AugerTransformer(5, 120, n, temporal_encoder="perceiver", patch=4, latents=4,
                                                   temporal_dim=16, temporal_heads=2, temporal_depth=1, dim=16,
                                                   num_heads=2, depth=2, head_hidden=16), 2),
    "auger_hexconv": (lambda n: AugerHexConvNet(5, 120, n, rnn="gru", rnn_hidden=8, trace_pool=4, station_dim=8,
                                                conv_channels=(8, 8), head_dims=(16,)), 2),
    "lightcurve_transformer": (lambda n: LightCurveTransformer(n, meta_dim=3, dim=16, num_heads=2, num_layers=2), 2),
    "lightcurve_gru": (lambda n: LightCurveGRU(n, meta_dim=3, hidden=16, num_layers=2), 2),
}


def save_checkpoint(net: nn.Module, path, lightning: bool = True):
    """The net's weights (perturbed, so that nothing equals a fresh init by chance) as a Lightning checkpoint of a
    task (``net.*`` entries) or as a plain state dict."""
    state = {k: (v + 0.1 * torch.randn_like(v) if v.is_floating_point() else v.clone())
             for k, v in net.state_dict().items()}
    torch.save({"state_dict": {f"net.{k}": v for k, v in state.items()}} if lightning else state, path)
    return state


def one_line_error(excinfo, *parts: str) -> str:
    text = str(excinfo.value)
    assert "\n" not in text, text
    for part in parts:
        assert part in text, (part, text)
    return text


# ---------------------------------------------------------------------------------------------- every model
@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("lightning", [True, False], ids=["ckpt", "state_dict"])
def test_every_model_loads_the_backbone_and_replaces_the_head(name, lightning, tmp_path):
    make, n_blocks = MODELS[name]
    torch.manual_seed(0)
    pretrained = save_checkpoint(make(4), tmp_path / "pre.ckpt", lightning)
    torch.manual_seed(1)
    net = make(2)
    fresh = {k: v.clone() for k, v in net.state_dict().items()}
    head = finetune.head_prefixes(net)
    loaded, skipped = finetune.load_backbone(net, tmp_path / "pre.ckpt")
    now = net.state_dict()
    head_keys = [k for k in now if finetune.is_head(k, head)]
    assert head_keys and sorted(skipped) == sorted(k for k in pretrained if finetune.is_head(k, head))
    assert sorted(loaded) == sorted(set(now) - set(head_keys))
    for key in loaded:
        assert torch.equal(now[key], pretrained[key]), key
    for key in head_keys:  # the new head: freshly initialised, sized for 2 outputs
        assert torch.equal(now[key], fresh[key]), key
    assert any(now[k].shape != pretrained[k].shape for k in head_keys)
    assert len(finetune.blocks(net)) == n_blocks  # the declared blocks, counted as freeze_blocks counts them


# ---------------------------------------------------------------------------------------------- learning rates
def test_lr_backbone_mult_scales_the_backbone_groups_and_keeps_the_weight_decay_split():
    torch.manual_seed(0)
    net = ParticleTransformer(4, 2, fc_dims=(8,), **SMALL_PART)
    task = ClassificationTask(net, ["a", "b"], lr=1e-3, weight_decay=0.05, lr_backbone_mult=0.1, warmup_steps=0)
    opt = task.configure_optimizers()
    groups, scheduler = opt["optimizer"].param_groups, opt["lr_scheduler"]["scheduler"]
    assert [g["lr"] for g in groups] == pytest.approx([1e-4, 1e-4, 1e-3, 1e-3])
    assert [g["weight_decay"] for g in groups] == [0.05, 0.0, 0.05, 0.0]
    assert all(not n.startswith("fc.") for g in groups[:2] for n in g["names"])
    assert all(n.startswith("fc.") for g in groups[2:] for n in g["names"])
    decay, no_decay = split_weight_decay_params(net)
    assert sorted(groups[0]["names"] + groups[2]["names"]) == sorted(decay)
    assert sorted(groups[1]["names"] + groups[3]["names"]) == sorted(no_decay)
    for _ in range(3):  # the schedule scales every group alike
        scheduler.step()
    assert groups[0]["lr"] == pytest.approx(0.1 * groups[2]["lr"])
    plain = ClassificationTask(net, ["a", "b"], lr=1e-3).configure_optimizers()["optimizer"].param_groups
    assert [g["lr"] for g in plain] == [1e-3, 1e-3] and len(plain) == 2


# ---------------------------------------------------------------------------------------------- frozen blocks
def jet_batches(n_batches: int, num_classes: int = 2, batch_size: int = 16, seed: int = 0, particles: int = 12):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_batches):
        mask = torch.arange(particles)[None] < torch.randint(3, particles + 1, (batch_size, 1), generator=g)
        y = torch.randint(0, num_classes, (batch_size,), generator=g)
        x = (torch.randn(batch_size, particles, 4, generator=g) + y[:, None, None]) * mask[..., None]
        v = torch.rand(batch_size, particles, 4, generator=g) * mask[..., None]
        v[..., 3] += v[..., :3].norm(dim=-1)  # E > |p|
        out.append({"x": x, "v": v, "mask": mask, "y": y})
    return out


def trainer(tmp_path, epochs: int = 1, **kw) -> L.Trainer:
    return L.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                     num_sanity_val_steps=0, limit_val_batches=0, **kw)


def test_frozen_blocks_and_their_embedding_are_unchanged_after_training_steps(tmp_path):
    torch.manual_seed(0)
    net = ParticleTransformer(4, 2, **SMALL_PART)
    task = JetTaggingTask(net, ["label_QCD", "label_Tbqq"], lr=2e-2, warmup_steps=0, freeze_blocks=1)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    trainer(tmp_path).fit(task, train_dataloaders=DataLoader(jet_batches(4), batch_size=None))
    after = net.state_dict()
    frozen = ("embed.", "pair_embed.", "blocks.0.")  # with the BatchNorms' running statistics
    assert any(k.startswith("embed.") and "running_mean" in k for k in before)
    for key, value in before.items():
        if key.startswith(frozen):
            assert torch.equal(after[key], value), key
    for prefix in ("blocks.1.", "pool.", "fc."):
        assert any(not torch.equal(after[k], v) for k, v in before.items() if k.startswith(prefix)), prefix
    assert not any(p.requires_grad for n, p in net.named_parameters() if n.startswith(frozen))


def test_frozen_gru_layer_is_unchanged_after_a_step():
    torch.manual_seed(0)
    net = LightCurveGRU(3, meta_dim=2, hidden=8, num_layers=2, dropout=0.0)
    task = ClassificationTask(net, ["a", "b", "c"], lr=1e-2, warmup_steps=0, freeze_blocks=1)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    optimizer = task.configure_optimizers()["optimizer"]
    task.train()
    b, length = 6, 10
    batch = dict(flux=torch.randn(b, length), flux_err=torch.rand(b, length) + 0.1,
                 time=torch.rand(b, length).cumsum(1), band=torch.randint(0, 6, (b, length)),
                 mask=torch.ones(b, length, dtype=torch.bool), meta=torch.randn(b, 2))
    nn.functional.cross_entropy(task(**batch), torch.tensor([0, 1, 2, 0, 1, 2])).backward()
    optimizer.step()
    after = net.state_dict()
    for key in before:
        changed = not torch.equal(before[key], after[key])
        assert changed == (not key.endswith("_l0")), key  # layer 0 frozen; layer 1, meta_proj and head trained


# ---------------------------------------------------------------------------------------------- weaver-core
def test_weaver_core_state_dict_loads_as_the_backbone(tmp_path):
    weaver = pytest.importorskip("weaver.nn.model.ParticleTransformer")
    torch.manual_seed(0)
    ref = weaver.ParticleTransformer(input_dim=4, num_classes=10, embed_dims=(16, 32, 16), pair_embed_dims=(8, 8),
                                     num_heads=2, num_layers=2, num_cls_layers=1)
    state = {k: (v + 0.1 * torch.randn_like(v) if v.is_floating_point() else v) for k, v in ref.state_dict().items()}
    # as weaver-core's training saves it: the network wrapped as `mod` (networks/example_ParticleTransformer.py)
    torch.save({f"mod.{k}": v for k, v in state.items()}, tmp_path / "weaver_part.pt")
    net = ParticleTransformer(4, 2, **SMALL_PART)
    fresh_head = net.fc[0].weight.clone()
    loaded, skipped = finetune.load_backbone(net, tmp_path / "weaver_part.pt")
    expected = from_weaver_state_dict(state)
    assert skipped == ["fc.0.weight", "fc.0.bias"] or sorted(skipped) == ["fc.bias", "fc.weight"]
    assert len(loaded) == len(net.state_dict()) - 2
    for key in loaded:
        assert torch.equal(net.state_dict()[key], expected[key]), key
    assert torch.equal(net.fc[0].weight, fresh_head) and net.fc[0].weight.shape == (2, 16)


# ---------------------------------------------------------------------------------------------- errors
def test_architecture_mismatch_and_bad_files_are_one_line_errors(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "pre.ckpt"
    save_checkpoint(ParticleTransformer(4, 4, **{**SMALL_PART, "num_layers": 3}), path)
    with pytest.raises(DataError) as err:  # a block the configured network lacks
        finetune.load_backbone(ParticleTransformer(4, 2, **SMALL_PART), path)
    one_line_error(err, str(path), "task.pretrained", "'blocks.2.")
    with pytest.raises(DataError) as err:  # a block the file lacks
        finetune.load_backbone(ParticleTransformer(4, 2, **{**SMALL_PART, "num_layers": 4}), path)
    one_line_error(err, str(path), "has no 'blocks.3.")
    save_checkpoint(ParticleTransformer(7, 4, **SMALL_PART), path)
    with pytest.raises(DataError) as err:  # other input features: the embedding's first tensor
        finetune.load_backbone(ParticleTransformer(4, 2, **SMALL_PART), path)
    one_line_error(err, str(path), "parameter 'embed.", "(7)", "(4)")
    save_checkpoint(ParticleTransformer(4, 4, **{**SMALL_PART, "use_interaction": False}), path)
    with pytest.raises(DataError) as err:  # ParT (plain) weights into ParT
        finetune.load_backbone(ParticleTransformer(4, 2, **SMALL_PART), path)
    one_line_error(err, "has no 'pair_embed.")
    for content, what in [(b"not a checkpoint", "cannot read"), (None, "not found")]:
        bad = tmp_path / f"bad_{what[:3]}.ckpt"
        if content is not None:
            bad.write_bytes(content)
        with pytest.raises(DataError) as err:
            finetune.load_backbone(ParticleTransformer(4, 2, **SMALL_PART), bad)
        one_line_error(err, str(bad), what)
    torch.save({"state_dict": {"other.weight": torch.zeros(2)}}, path)
    with pytest.raises(DataError) as err:
        finetune.load_backbone(ParticleTransformer(4, 2, **SMALL_PART), path)
    one_line_error(err, "no network weights")
    with pytest.raises(DataError) as err:
        JetTaggingTask(ParticleTransformer(4, 2, **SMALL_PART), ["a", "b"], freeze_blocks=3)
    one_line_error(err, "task.freeze_blocks", "[0, 2]")

    class NoHead(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(2, 2)

    with pytest.raises(DataError) as err:
        ClassificationTask(NoHead(), ["a", "b"], lr_backbone_mult=0.1)
    one_line_error(err, "NoHead declares no 'head_modules'", "task.lr_backbone_mult")


# ---------------------------------------------------------------------------------------------- fit and resume
def test_loaded_once_at_a_fresh_fit_and_never_on_resume(tmp_path, caplog):
    torch.manual_seed(0)
    pre = tmp_path / "pre.ckpt"
    pretrained = save_checkpoint(ParticleTransformer(4, 4, **SMALL_PART), pre)
    net = ParticleTransformer(4, 2, **SMALL_PART)
    task = JetTaggingTask(net, ["label_QCD", "label_Tbqq"], lr=1e-3, pretrained=str(pre), lr_backbone_mult=0.0,
                          weight_decay=0.0)
    first = trainer(tmp_path)
    with caplog.at_level(logging.INFO):
        first.fit(task, train_dataloaders=DataLoader(jet_batches(2), batch_size=None))
    line = [r.getMessage() for r in caplog.records if "backbone tensors" in r.getMessage()]
    assert len(line) == 1 and f"pretrained {pre}: loaded" in line[0] and "fc.0.weight" in line[0]
    # the backbone (learning rate 0) is the pretrained one after the fit, the head was trained
    assert torch.equal(net.blocks[0].fc1.weight, pretrained["blocks.0.fc1.weight"])
    first.save_checkpoint(tmp_path / "resume.ckpt")
    saved = {k: v.clone() for k, v in net.state_dict().items()}
    pre.unlink()  # a resumed fit must not read the pretrained file again
    torch.manual_seed(1)
    resumed_net = ParticleTransformer(4, 2, **SMALL_PART)
    resumed = JetTaggingTask(resumed_net, ["label_QCD", "label_Tbqq"], lr=1e-3, pretrained=str(pre),
                             lr_backbone_mult=0.0, weight_decay=0.0)
    trainer(tmp_path, epochs=2).fit(resumed, train_dataloaders=DataLoader(jet_batches(2), batch_size=None),
                                    ckpt_path=tmp_path / "resume.ckpt")
    assert torch.equal(resumed_net.blocks[0].fc1.weight, saved["blocks.0.fc1.weight"])
    fresh = JetTaggingTask(ParticleTransformer(4, 2, **SMALL_PART), ["label_QCD", "label_Tbqq"], pretrained=str(pre))
    with pytest.raises(DataError, match="pretrained network not found"):  # a fresh fit does read it
        trainer(tmp_path).fit(fresh, train_dataloaders=DataLoader(jet_batches(1), batch_size=None))


# ---------------------------------------------------------------------------------------------- the gain
def prong_jets(n: int, prongs: int, rng: np.random.Generator, particles: int = 24):
    """Toy jets: 12-24 particles around ``prongs`` axes 0.15-0.4 apart in (η, φ) (one wide prong for 1), pT ordered;
    features [ln pT, 5Δη, 5Δφ, ln(pT/ΣpT)] and four-vectors."""
    x, v = np.zeros((n, particles, 4), np.float32), np.zeros((n, particles, 4), np.float32)
    mask = np.zeros((n, particles), bool)
    for i in range(n):
        angle = rng.uniform(0, 2 * np.pi) + np.arange(prongs) * 2 * np.pi / prongs
        axes = np.stack([np.cos(angle), np.sin(angle)], -1) * rng.uniform(0.15, 0.4) * (prongs > 1)
        m = int(rng.integers(12, particles + 1))
        which = rng.choice(prongs, size=m, p=rng.dirichlet(np.full(prongs, 3.0)))
        spread = 0.04 if prongs > 1 else 0.12
        eta, phi = axes[which, 0] + rng.normal(0, spread, m), axes[which, 1] + rng.normal(0, spread, m)
        pt = np.sort(rng.exponential(40.0, m) + 1.0)[::-1]
        px, py, pz = pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta)
        x[i, :m] = np.stack([np.log(pt) - 3, 5 * eta, 5 * phi, np.log(pt / pt.sum()) + 2.5], -1)
        v[i, :m] = np.stack([px, py, pz, np.sqrt(px**2 + py**2 + pz**2)], -1)
        mask[i, :m] = True
    return x, v, mask


def toy_set(prongs_per_class, n_per_class: int, seed: int) -> dict[str, torch.Tensor]:
    rng = np.random.default_rng(seed)
    parts = [prong_jets(n_per_class, k, rng) for k in prongs_per_class]
    y = np.repeat(np.arange(len(parts)), n_per_class)
    order = rng.permutation(len(y))
    x, v, mask = (np.concatenate([p[j] for p in parts])[order] for j in range(3))
    return {"x": torch.tensor(x), "v": torch.tensor(v), "mask": torch.tensor(mask), "y": torch.tensor(y[order])}


def batches(data, batch_size):
    return [{k: t[i:i + batch_size] for k, t in data.items()} for i in range(0, len(data["y"]), batch_size)]


@torch.no_grad()
def held_out_auc(task, data) -> float:
    task.eval()
    probs = torch.softmax(task(x=data["x"], v=data["v"], mask=data["mask"]), -1)
    return auc_macro(probs.numpy(), data["y"].numpy())


def test_finetuned_part_beats_the_same_network_from_scratch_on_held_out_jets(tmp_path):
    """Pre-train a tiny ParT on 4 toy classes (1-, 2-, 2-, 3-prong jets), then on 64 1- vs 3-prong jets fine-tune it
    (backbone loaded, new head, backbone at 0.1 × lr) and train the same network from scratch, with the same steps;
    the fine-tuned one separates held-out jets better (seeds 0-3: AUC 0.90-0.97 against 0.54-0.77). With the backbone
    not loaded both start from scratch and the fine-tuned one (slower backbone) is no better (seed 0: 0.56 / 0.62)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: one thread is faster on a shared CPU
    try:
        L.seed_everything(0)
        pre = JetTaggingTask(ParticleTransformer(4, 4, **SMALL_PART), ["label_QCD", "label_Wqq", "label_Zqq",
                                                                         "label_Tbqq"], lr=5e-3, warmup_steps=5)
        fit = trainer(tmp_path, epochs=6)
        fit.fit(pre, train_dataloaders=DataLoader(batches(toy_set([1, 2, 2, 3], 300, seed=1), 64), batch_size=None,
                                                  shuffle=True))
        fit.save_checkpoint(tmp_path / "pretrained.ckpt")
        small, test = toy_set([1, 3], 32, seed=2), toy_set([1, 3], 150, seed=3)
        auc = {}
        for name, extra in {"finetuned": dict(pretrained=str(tmp_path / "pretrained.ckpt"), lr_backbone_mult=0.1),
                            "scratch": {}}.items():
            L.seed_everything(0)
            task = JetTaggingTask(ParticleTransformer(4, 2, **SMALL_PART), ["label_QCD", "label_Tbqq"], lr=2e-2,
                                  warmup_steps=2, **extra)
            run = trainer(tmp_path, epochs=8)
            run.fit(task, train_dataloaders=DataLoader(batches(small, 32), batch_size=None, shuffle=True))
            auc[name] = (held_out_auc(task, test), run.global_step)
    finally:
        torch.set_num_threads(threads)
    (ft, ft_steps), (scratch, scratch_steps) = auc["finetuned"], auc["scratch"]
    assert ft_steps == scratch_steps == 16
    assert ft > 0.85 and ft > scratch + 0.1, auc


# ---------------------------------------------------------------------------------------------- the experiment
def test_experiment_fine_tunes_a_pretrained_part_and_requires_one(data_dir, tmp_path, caplog):
    """``experiment=jets_part_finetune task.pretrained=PATH`` end to end (one batch), and without PATH one line."""
    from hydra.utils import instantiate
    from test_pipelines import FAST, compose_train  # the pipelines tests' Hydra composition

    from physics_tf.training.run import run_train

    overrides = ["experiment=jets_part_finetune", "model=part_small", f"paths.data_dir={data_dir}", *FAST,
                 "data.shuffle_buffer=64", "logger=none"]
    from physics_tf.cli import is_input_error, one_line

    cfg = compose_train(overrides, tmp_path / "required")
    with pytest.raises(Exception) as err:  # DataError, through Hydra's instantiate of the task
        run_train(cfg)
    assert is_input_error(err.value)  # the command line prints one line and exits with status 2
    assert "field 'task.pretrained': this experiment fine-tunes a pretrained network: give task.pretrained=PATH" \
        in one_line(err.value)
    assert "Error in call to target" not in one_line(err.value)  # the DataError's own line, not Hydra's wrapper
    assert cfg.task.lr_backbone_mult == 0.1

    datamodule = instantiate(cfg.data)
    torch.manual_seed(0)
    pretrained = save_checkpoint(instantiate(cfg.model, **{**datamodule.model_dims, "num_classes": 4}),
                                 tmp_path / "pretrained.pt", lightning=False)
    cfg = compose_train([*overrides, f"task.pretrained={tmp_path / 'pretrained.pt'}"], tmp_path / "run")
    with caplog.at_level(logging.INFO):
        metrics = run_train(cfg)
    assert metrics["num_jets"] > 0
    assert any(f"pretrained {tmp_path / 'pretrained.pt'}: loaded" in r.getMessage() for r in caplog.records)
    assert len(pretrained) > 50
