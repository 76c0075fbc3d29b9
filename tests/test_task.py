"""The task base and heads (classification, jet tagging, regression, Auger) and the warm-up/decay schedules,
with tiny nets and synthetic batches."""

from __future__ import annotations

import json
import math
import warnings

import lightning as L
import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, IterableDataset

from physics_tf.auger.task import AugerRegressionTask
from physics_tf.jets.task import JetTaggingTask
from physics_tf.tasks.base import split_weight_decay_params
from physics_tf.tasks.classification import ClassificationTask
from physics_tf.tasks.regression import RegressionTask
from physics_tf.tasks.schedulers import WarmupDecay, build_warmup_decay_scheduler

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
P, C = 16, 4


class TinyNet(nn.Module):
    """Masked mean-pool of a per-particle embedding + a linear head; has a cls_token like ParT."""

    def __init__(self, input_dim: int = C, num_classes: int = 2, hidden: int = 16) -> None:
        super().__init__()
        self.hparams_for_checkpoint = {"input_dim": input_dim, "num_classes": num_classes, "hidden": hidden}
        self.embed = nn.Linear(input_dim, hidden)
        self.norm = nn.LayerNorm(hidden)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, hidden))
        self.head = nn.Linear(hidden, num_classes)

    def no_weight_decay(self) -> set[str]:
        return {"cls_token"}

    def forward(self, x, v=None, mask=None):
        h = self.norm(self.embed(x))  # (B, P, H)
        m = mask.unsqueeze(-1).to(h.dtype)  # (B, P, 1)
        pooled = (h * m).sum(1) / m.sum(1).clamp(min=1.0) + self.cls_token[:, 0]  # (B, H)
        return self.head(pooled)  # (B, K)


def make_batches(n_batches: int, num_classes: int = 2, batch_size: int = 32, seed: int = 0, shift: float = 1.5):
    """Batch dicts per the contract; class c jets have feature 0 shifted by ``c * shift``."""
    g = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(n_batches):
        n_part = torch.randint(1, P + 1, (batch_size,), generator=g)  # (B,)
        mask = torch.arange(P)[None, :] < n_part[:, None]  # (B, P)
        y = torch.randint(0, num_classes, (batch_size,), generator=g)  # (B,)
        x = torch.randn(batch_size, P, C, generator=g)  # (B, P, C)
        x[..., 0] += shift * y[:, None].float()
        x = x * mask[..., None]
        v = torch.randn(batch_size, P, 4, generator=g).abs() * mask[..., None]  # (B, P, 4)
        batches.append({"x": x, "v": v, "mask": mask, "y": y})
    return batches


def loader(batches):
    return DataLoader(batches, batch_size=None)  # each item already is a batch dict


def make_trainer(tmp_path, **kw):
    opts = dict(
        max_epochs=3, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
        num_sanity_val_steps=0,
    )
    opts.update(kw)
    return L.Trainer(**opts)


@torch.no_grad()
def mean_loss(task, batches) -> float:
    task.eval()
    return float(np.mean([nn.functional.cross_entropy(task(x=b["x"], v=b["v"], mask=b["mask"]), b["y"]).item() for b in batches]))


# ----------------------------------------------------------------------------- end to end
def test_fit_lowers_loss_and_test_writes_report(tmp_path):
    torch.manual_seed(0)
    train, val, test = make_batches(8, seed=1), make_batches(3, seed=2), make_batches(4, seed=3)
    task = JetTaggingTask(
        TinyNet(), ["label_QCD", "label_Tbqq"], lr=1e-2, warmup_steps=2, schedule="cosine", min_lr_ratio=0.1
    )
    loss_before = mean_loss(task, train)
    task.train()
    trainer = make_trainer(tmp_path)
    trainer.fit(task, train_dataloaders=loader(train), val_dataloaders=loader(val))
    loss_after = mean_loss(task, train)
    assert loss_after < 0.7 * loss_before
    for key in ("train/loss", "train/acc", "val/loss", "val/acc", "val/auc"):
        assert key in trainer.callback_metrics, key
    assert float(trainer.callback_metrics["val/auc"]) > 0.85

    # 3 epochs x 8 batches = 24 optimizer steps = estimated_stepping_batches -> schedule ends on the floor
    sched = trainer.lr_scheduler_configs[0].scheduler
    assert sched.lr_lambdas[0].total_steps == 24
    assert sched.get_last_lr()[0] == pytest.approx(1e-2 * 0.1)

    results = trainer.test(task, dataloaders=loader(test), verbose=False)
    # output_dir=None and logger=False -> files land in default_root_dir
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["accuracy"] > 0.8
    assert metrics["num_jets"] == 4 * 32
    assert {"auc_macro", "rej50_Tbqq", "rej30_Tbqq"} <= set(metrics)
    assert metrics["rej30_Tbqq"] >= metrics["rej50_Tbqq"] > 1.0
    assert results[0]["test/accuracy"] == pytest.approx(metrics["accuracy"])
    assert task.test_summary == metrics
    for name in ("roc.png", "confusion.png"):
        assert (tmp_path / name).read_bytes()[:8] == PNG_MAGIC
    pred = np.load(tmp_path / "predictions.npz")
    assert pred["probs"].shape == (128, 2) and pred["labels"].shape == (128,)
    np.testing.assert_allclose(pred["probs"].sum(1), 1.0, atol=1e-5)
    assert list(pred["class_names"]) == ["label_QCD", "label_Tbqq"]
    assert not list(tmp_path.glob(".*.tmp"))

    # checkpoint round trip: hparams hold the net's config, not the net
    ckpt = tmp_path / "task.ckpt"
    trainer.save_checkpoint(ckpt)
    restored = JetTaggingTask.load_from_checkpoint(ckpt, net=TinyNet())
    assert restored.hparams["net_config"]["_target_"].endswith("TinyNet")
    assert "net" not in restored.hparams
    b = test[0]
    torch.testing.assert_close(restored(x=b["x"], v=b["v"], mask=b["mask"]), task(x=b["x"], v=b["v"], mask=b["mask"]))


def test_multiclass_test_stage_with_explicit_output_dir(tmp_path):
    torch.manual_seed(0)
    names = ["label_Hbb", "label_QCD", "label_Tbqq"]
    task = JetTaggingTask(TinyNet(num_classes=3), names, output_dir=tmp_path / "report")
    trainer = make_trainer(tmp_path / "root")
    trainer.test(task, dataloaders=loader(make_batches(2, num_classes=3, seed=4)), verbose=False)
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    # QCD (index 1) is the background: the two other classes get rejection keys
    assert {"rej50_Hbb", "rej30_Hbb", "rej50_Tbqq", "rej30_Tbqq"} <= set(metrics)
    assert not any(k.endswith("_QCD") for k in metrics)
    assert (tmp_path / "report" / "roc.png").exists() and (tmp_path / "report" / "confusion.png").exists()

    probs = task.predict_step(make_batches(1, num_classes=3, seed=5)[0], 0)
    assert probs.shape == (32, 3)
    torch.testing.assert_close(probs.sum(-1), torch.ones(32))


def test_bad_batch_and_bad_net_output_raise():
    task = ClassificationTask(TinyNet(), ["a", "b"])
    batch = make_batches(1)[0]
    with pytest.raises(ValueError, match=r"missing \['x'\]"):
        task.training_step({k: v for k, v in batch.items() if k != "x"}, 0)
    with pytest.raises(ValueError, match=r"not accepted \['bogus'\]"):
        task.training_step({**batch, "bogus": batch["x"]}, 0)
    task.training_step({**batch, "aux_truth": batch["y"]}, 0)  # aux_* truth is never a net input
    with pytest.raises(ValueError, match="'y'"):
        task.validation_step({k: v for k, v in batch.items() if k != "y"}, 0)
    wrong = ClassificationTask(TinyNet(num_classes=3), ["a", "b"])
    with pytest.raises(ValueError, match="net output"):
        wrong.predict_step(batch, 0)
    with pytest.raises(ValueError, match="schedule"):
        ClassificationTask(TinyNet(), ["a", "b"], schedule="step")


# ----------------------------------------------------------------------------- optimizer groups
def test_weight_decay_excludes_bias_norm_and_cls_token():
    net = TinyNet()
    decay, no_decay = split_weight_decay_params(net)
    assert set(decay) == {"embed.weight", "head.weight"}
    assert set(no_decay) == {"embed.bias", "norm.weight", "norm.bias", "cls_token", "head.bias"}

    task = ClassificationTask(net, ["a", "b"], weight_decay=0.05, warmup_steps=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "total steps unknown" (no trainer attached)
        cfg = task.configure_optimizers()
    groups = cfg["optimizer"].param_groups
    by_wd = {g["weight_decay"]: g for g in groups}
    assert set(by_wd) == {0.05, 0.0}
    assert {id(p) for p in by_wd[0.05]["params"]} == {id(net.embed.weight), id(net.head.weight)}
    assert id(net.cls_token) in {id(p) for p in by_wd[0.0]["params"]}
    assert sum(len(g["params"]) for g in groups) == len(list(net.parameters()))
    assert cfg["lr_scheduler"]["interval"] == "step"


def test_no_weight_decay_prefix_excludes_submodule():
    class Wrapper(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = TinyNet()
            self.pos = nn.Parameter(torch.zeros(1, 8, 4))

        def no_weight_decay(self):
            return {"body.head", "pos"}

    decay, no_decay = split_weight_decay_params(Wrapper())
    assert set(decay) == {"body.embed.weight"}
    # the wrapper's list plus the inner net's own no_weight_decay() ({"cls_token"})
    assert {"body.head.weight", "pos", "body.cls_token"} <= set(no_decay)


# ----------------------------------------------------------------------------- schedules
def test_warmup_then_cosine_and_linear_decay_values():
    cos = WarmupDecay(warmup_steps=4, total_steps=20, schedule="cosine", min_lr_ratio=0.1)
    lin = WarmupDecay(warmup_steps=4, total_steps=20, schedule="linear", min_lr_ratio=0.1)
    for f in (cos, lin):
        assert [f(s) for s in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])
        assert f(4) == pytest.approx(1.0)
        assert f(20) == pytest.approx(0.1) and f(1000) == pytest.approx(0.1)
    # step 8: progress (8 - 4) / 16 = 0.25
    assert cos(8) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4)))
    assert lin(8) == pytest.approx(0.1 + 0.9 * 0.75)
    assert cos(12) == pytest.approx(0.55) and lin(12) == pytest.approx(0.55)  # midpoint
    const = WarmupDecay(warmup_steps=2, total_steps=None, schedule="cosine", min_lr_ratio=0.1)
    assert [const(s) for s in (0, 1, 5, 10**6)] == pytest.approx([0.5, 1.0, 1.0, 1.0])
    assert WarmupDecay(0, float("inf"))(0) == 1.0
    with pytest.raises(ValueError, match="min_lr_ratio"):
        WarmupDecay(1, 10, min_lr_ratio=2.0)


def test_scheduler_lr_values_when_stepped():
    p = nn.Parameter(torch.zeros(2))
    opt = torch.optim.AdamW([p], lr=0.1)
    sched = build_warmup_decay_scheduler(opt, warmup_steps=2, total_steps=6, schedule="linear", min_lr_ratio=0.0)
    lrs = []
    for _ in range(7):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    # warm-up 0.05, 0.1; then linear over 4 steps: 0.1, 0.075, 0.05, 0.025; floor 0
    assert lrs == pytest.approx([0.05, 0.1, 0.1, 0.075, 0.05, 0.025, 0.0])
    state = sched.state_dict()  # callable object -> its fields are checkpointed
    assert state["lr_lambdas"][0]["total_steps"] == 6


class _UnsizedJets(IterableDataset):
    def __init__(self, batches):
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)


def test_unknown_total_steps_gives_constant_after_warmup(tmp_path):
    task = ClassificationTask(TinyNet(), ["a", "b"], lr=1e-3, warmup_steps=2)
    trainer = make_trainer(tmp_path, max_epochs=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(task, train_dataloaders=DataLoader(_UnsizedJets(make_batches(5)), batch_size=None))
    sched = trainer.lr_scheduler_configs[0].scheduler
    assert trainer.global_step == 5
    assert sched.lr_lambdas[0].total_steps is None
    assert sched.get_last_lr()[0] == pytest.approx(1e-3)


# ----------------------------------------------------------------------------- heads and analyses
def test_jet_tagger_report_table_carries_rejections(tmp_path):
    torch.manual_seed(0)
    task = JetTaggingTask(TinyNet(), ["label_QCD", "label_Tbqq"], output_dir=tmp_path)
    make_trainer(tmp_path).test(task, dataloaders=loader(make_batches(3, seed=6)), verbose=False)
    columns, rows = task.report_tables()["per_class"]
    assert columns == ["class", "n_true", "n_predicted", "efficiency", "purity", "auc_vs_rest", "rej50", "rej30"]
    assert [r[0] for r in rows] == ["label_QCD", "label_Tbqq"] and sum(r[1] for r in rows) == 96
    assert rows[0][6:] == [None, None]  # the background has no rejection
    assert rows[1][6:] == [task.test_summary["rej50_Tbqq"], task.test_summary["rej30_Tbqq"]]


def test_generic_classifier_reports_without_jet_metrics(tmp_path):
    torch.manual_seed(0)
    names = ["a", "b", "c"]
    task = ClassificationTask(TinyNet(num_classes=3), names, output_dir=tmp_path)
    assert ClassificationTask(TinyNet(), ["a", "b"]).report_tables() == {}  # nothing before a test stage
    results = make_trainer(tmp_path).test(task, dataloaders=loader(make_batches(2, num_classes=3, seed=4)),
                                          verbose=False)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert set(metrics) == {"accuracy", "auc_macro", "num_samples"} and metrics["num_samples"] == 64
    assert results[0]["test/auc_macro"] == pytest.approx(metrics["auc_macro"])
    for name in ("roc.png", "confusion.png"):
        assert (tmp_path / name).read_bytes()[:8] == PNG_MAGIC
    columns, rows = task.report_tables()["per_class"]
    assert columns[-1] == "auc_vs_rest" and [r[0] for r in rows] == names
    pred = np.load(tmp_path / "predictions.npz")
    assert [r[1] for r in rows] == np.bincount(pred["labels"], minlength=3).tolist()


class RegNet(nn.Module):
    """Linear map of a flat input to ``outputs`` values."""

    def __init__(self, outputs: int = 1) -> None:
        super().__init__()
        self.lin = nn.Linear(3, outputs)
        self.norm = nn.LayerNorm(3)

    def forward(self, x):
        return self.lin(self.norm(x))


def reg_batches(n_batches: int, targets: int = 1, batch_size: int = 16, seed: int = 0):
    """Targets linear in the inputs (standardised units), with Auger-style truth fields."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_batches):
        x = torch.randn(batch_size, 3, generator=g)
        y = torch.stack([x[:, 0] + 0.1 * k for k in range(targets)], dim=1)  # (B, T)
        out.append({"x": x, "y": y, "aux_lg_energy": 18.5 + 1.5 * torch.rand(batch_size, generator=g),
                    "aux_primary": torch.randint(0, 4, (batch_size,), generator=g)})
    return out


def test_generic_regression_reports_per_target_numbers(tmp_path):
    torch.manual_seed(0)
    task = RegressionTask(RegNet(2), ["a", "b"], [10.0, 0.0], [2.0, 1.0], loss="huber", lr=1e-2, output_dir=tmp_path)
    trainer = make_trainer(tmp_path, max_epochs=2)
    trainer.fit(task, train_dataloaders=loader(reg_batches(4, 2)), val_dataloaders=loader(reg_batches(1, 2, seed=1)))
    results = trainer.test(task, dataloaders=loader(reg_batches(2, 2, seed=2)), verbose=False)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["num_samples"] == 32 and set(metrics) == {"num_samples", "a", "b"}
    assert set(metrics["a"]) == {"n", "bias", "resolution", "rms", "true_std"}
    assert results[0]["test/a_rms"] == pytest.approx(metrics["a"]["rms"])
    pred = np.load(tmp_path / "predictions.npz")
    assert set(pred.files) == {"pred_a", "pred_b", "true_a", "true_b"}
    res = pred["pred_a"] - pred["true_a"]
    assert metrics["a"]["bias"] == pytest.approx(res.mean()) and metrics["a"]["rms"] == pytest.approx(np.sqrt(np.mean(res**2)))
    assert (tmp_path / "residuals_a.png").read_bytes()[:8] == PNG_MAGIC
    groups = trainer.optimizers[0].param_groups  # names stored for regression too (legacy optimizer upgrade)
    assert [g["names"] for g in groups] == [["lin.weight"], ["lin.bias", "norm.weight", "norm.bias"]]


def test_auger_task_classifier_and_summary(tmp_path):
    torch.manual_seed(0)
    task = AugerRegressionTask(RegNet(1 + 4), ["xmax"], [750.0], [70.0], num_classes=4,
                               primary_lna=[0.0, 1.39, 2.64, 4.03], lg_e_bins=[18.5, 19.0, 20.0], output_dir=tmp_path)
    trainer = make_trainer(tmp_path, max_epochs=1)
    trainer.fit(task, train_dataloaders=loader(reg_batches(3)), val_dataloaders=loader(reg_batches(1, seed=1)))
    assert {"val/loss", "val/accuracy", "val/resolution", "val/bias"} <= set(trainer.callback_metrics)
    trainer.test(task, dataloaders=loader(reg_batches(4, seed=2)), verbose=False)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert list(metrics) == ["num_events", "xmax", "primary"] and metrics["num_events"] == 64
    assert [b["lg_e_lo"] for b in metrics["xmax"]["vs_lg_energy"]] == [18.5, 19.0]
    assert sum(p["n"] for p in metrics["xmax"]["per_primary"].values()) == 64
    primary = metrics["primary"]
    assert set(primary) == {"accuracy", "auc_macro", "confusion", "classes", "lna_from_probs"}
    assert np.allclose(np.array(primary["confusion"]).sum(1), 1.0)
    assert "num_jets" not in metrics and "macro_auc" not in primary
    for name in ("resolution.png", "residuals.png", "confusion.png"):
        assert (tmp_path / name).read_bytes()[:8] == PNG_MAGIC
    assert set(np.load(tmp_path / "predictions.npz").files) == {"lg_energy", "primary", "pred_xmax", "true_xmax",
                                                               "probs_primary"}
    with pytest.raises(ValueError, match="num_classes=3"):
        AugerRegressionTask(RegNet(), ["xmax"], [750.0], [70.0], num_classes=3)


# ----------------------------------------------------------------------------- total steps (resume)
class _SizedData:
    """A data module with a sized train loader, as estimate_total_steps reads it."""

    def train_dataloader(self):
        return [None] * 7


class _Trainer:
    """The trainer fields estimate_total_steps reads. Lightning's own estimate builds the train iterator — before a
    resumed run has restored its loop state, so the first resumed epoch replays epoch 0's order — so reading it
    fails the test."""

    max_steps, max_epochs, limit_train_batches, accumulate_grad_batches = -1, 3, 1.0, 1
    datamodule = _SizedData()

    @property
    def estimated_stepping_batches(self):
        raise AssertionError("trainer.estimated_stepping_batches was read")


@pytest.mark.parametrize("make", [
    lambda: AugerRegressionTask(RegNet(), ["xmax"], [750.0], [70.0]),
    lambda: RegressionTask(RegNet(), ["xmax"], [750.0], [70.0]),
    lambda: JetTaggingTask(TinyNet(), ["QCD", "Tbqq"]),
    lambda: ClassificationTask(TinyNet(), ["a", "b"]),
], ids=["auger", "regression", "jets", "classification"])
def test_total_steps_from_the_data_module_not_from_lightning(make):
    task = make()
    task._trainer = _Trainer()
    schedule = task.configure_optimizers()["lr_scheduler"]["scheduler"].lr_lambdas[0]
    assert (schedule.total_steps, schedule.warmup_steps) == (21, 1)  # 7 batches x 3 epochs, 5 % warm-up


def test_auger_fit_never_reads_lightnings_step_estimate(tmp_path, monkeypatch):
    """The resume bug end to end: a fit with a data module whose train loader is sized."""

    class Data(L.LightningDataModule):
        def train_dataloader(self):
            return loader(reg_batches(4))

    def refuse(trainer):
        raise AssertionError("trainer.estimated_stepping_batches was read")

    monkeypatch.setattr(L.Trainer, "estimated_stepping_batches", property(refuse))
    task = AugerRegressionTask(RegNet(), ["xmax"], [750.0], [70.0], output_dir=tmp_path)
    trainer = make_trainer(tmp_path, max_epochs=2, limit_val_batches=0)
    trainer.fit(task, datamodule=Data())
    assert trainer.lr_scheduler_configs[0].scheduler.lr_lambdas[0].total_steps == 8


# ----------------------------------------------------------------------------- configs before the move
@pytest.mark.parametrize("name", ["jets_demo", "lightcurves_transformer", "auger_transformer"])
def test_pre_move_task_config_builds_the_mapped_task(name):
    """A checkpoint's stored task config (old ``_target_`` mapped as physics_tf.training.legacy does) still
    instantiates with the data module's task_kwargs, which its hparams hold."""
    from hydra.utils import instantiate

    from physics_tf.training.legacy import LEGACY_TARGETS, LEGACY_TASK_TARGETS

    checkpoint = torch.load(f"{__file__.rsplit('/', 1)[0]}/data/legacy/{name}.ckpt", map_location="cpu",
                            weights_only=True)
    stored, hparams = dict(checkpoint["physics_tf_config"]["task"]), checkpoint["hyper_parameters"]
    stored["_target_"] = {**LEGACY_TARGETS, **LEGACY_TASK_TARGETS}[stored["_target_"]]
    keys = {"jets_demo": ["class_names"], "lightcurves_transformer": ["class_names", "class_codes"],
            "auger_transformer": ["target_names", "target_mean", "target_std", "primaries", "num_classes",
                                  "primary_lna"]}[name]
    task = instantiate(stored, net=RegNet(), **{k: hparams[k] for k in keys})
    expected = {"jets_demo": JetTaggingTask, "lightcurves_transformer": "LightCurveClassificationTask",
                "auger_transformer": AugerRegressionTask}[name]
    assert type(task).__name__ == getattr(expected, "__name__", expected)
    for key in keys:
        assert task.hparams[key] == hparams[key], key


def test_total_steps_of_a_map_style_loader_are_counted_per_ddp_rank():
    """Lightning deals a map-style train loader over the ranks with a DistributedSampler only after the schedule is
    built: the estimate must count ceil(N / world) samples per rank, or warm-up and decay stretch world-fold."""
    from types import SimpleNamespace

    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from physics_tf.tasks.base import estimate_total_steps

    loader = DataLoader(TensorDataset(torch.arange(10)), batch_size=3)

    def trainer(world):
        dm = SimpleNamespace(train_dataloader=lambda: loader)
        return SimpleNamespace(max_steps=-1, datamodule=dm, limit_train_batches=1.0, accumulate_grad_batches=1,
                               max_epochs=3, world_size=world)

    assert estimate_total_steps(trainer(1)) == 3 * 4  # ceil(10 / 3) batches per epoch
    assert estimate_total_steps(trainer(2)) == 3 * 2  # 5 samples per rank → 2 batches
    assert estimate_total_steps(trainer(4)) == 3 * 1  # 3 samples per rank → 1 batch
