"""W&B comparison: run names/groups/tags, flat config, summary metrics, plots and tables — all offline.

Offline runs (WANDB_MODE=offline) keep everything in ``wandb/offline-run-*/``: media under ``files/media/``, and
run record, config and summary in the transaction log ``run-<id>.wandb`` (wandb >= 0.19 writes no
``wandb-summary.json`` offline). :func:`read_offline_run` parses that log, so the tests check what ``wandb sync``
would upload.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from physics_tf.training.callbacks import WandbTestReport
from physics_tf.training.reporting import metrics_tables, scalar_metrics

from test_pipelines import compose_train  # data_dir: the tiny data sets fixture of conftest.py

ROOT = Path(__file__).resolve().parents[1]
TINY = ["data.batch_size=16", "trainer.max_epochs=1", "trainer.limit_train_batches=3", "trainer.limit_val_batches=2"]


# ----------------------------------------------------------------------------- reading offline runs
def _records(path: Path) -> list[bytes]:
    """Records of a W&B transaction log (LevelDB-style: 7-byte file header, 32 KiB blocks, chunks with a
    4-byte CRC, 2-byte length and a type FULL=1 / FIRST=2 / MIDDLE=3 / LAST=4)."""
    raw, block, pos, out, part = path.read_bytes(), 32768, 7, [], b""
    assert raw[:4] == b":W&B", f"{path}: not a W&B transaction log"
    while pos + 7 <= len(raw):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _crc, n, kind = struct.unpack("<IHB", raw[pos:pos + 7])
        pos += 7
        if pos + n > len(raw):  # still being written
            break
        if n == 0 and kind == 0:  # block padding
            pos += left - 7
            continue
        part += raw[pos:pos + n]
        pos += n
        if kind in (1, 4):
            out.append(part)
            part = b""
    return out


def _set(target: dict, keys: list[str], value):
    for k in keys[:-1]:
        target = target.setdefault(k, {})
    target[keys[-1]] = value


def _parsed_records(log: Path, timeout: float = 30.0) -> list:
    """The records of a finished run. wandb's writer may still be flushing when ``wandb.finish()`` returns (seen
    here under load: a log holding only its header), so wait for the run's closing ``exit`` record."""
    from wandb.proto import wandb_internal_pb2 as pb

    deadline = time.monotonic() + timeout
    while True:
        records = []
        for data in _records(log):
            rec = pb.Record()
            rec.ParseFromString(data)
            records.append(rec)
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.2)


def read_offline_run(run_dir: Path) -> dict:
    """name, group, tags, config and summary of an offline run directory, plus its media files."""
    (log,) = run_dir.glob("run-*.wandb")
    run: dict = {"config": {}, "summary": {}}
    for rec in _parsed_records(log):
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            run.update(name=rec.run.display_name, group=rec.run.run_group, tags=list(rec.run.tags),
                       id=rec.run.run_id)
            for item in rec.run.config.update:
                run["config"][item.key] = json.loads(item.value_json)
        elif kind == "config":
            for item in rec.config.update:
                run["config"][item.key] = json.loads(item.value_json)
        elif kind == "summary":
            for item in rec.summary.update:
                _set(run["summary"], list(item.nested_key) or [item.key], json.loads(item.value_json))
    run["files"] = sorted(str(p.relative_to(run_dir / "files")) for p in (run_dir / "files").rglob("*") if p.is_file())
    return run


def offline_runs(wandb_dir: Path) -> list[dict]:
    return [read_offline_run(d) for d in sorted(wandb_dir.glob("offline-run-*"))]


# ----------------------------------------------------------------------------- helpers without W&B
def test_scalar_metrics_and_tables_of_a_nested_report():
    report = {"num_events": 10,
              "xmax": {"bias": 1.5, "resolution": 20.0,
                       "per_primary": {"p": {"n": 6, "bias": 1.0, "resolution": 25.0},
                                       "Fe": {"n": 4, "bias": 2.0, "resolution": 12.0}},
                       "vs_lg_energy": [{"lg_e_lo": 18.5, "lg_e_hi": 19.0, "n": 3, "bias": 0.5},
                                        {"lg_e_lo": 19.0, "lg_e_hi": 19.5, "n": 7, "bias": 2.5}]},
              "primary": {"accuracy": 0.7, "classes": ["p", "Fe"], "confusion": [[0.8, 0.2], [0.25, 0.75]]}}
    flat = scalar_metrics(report)
    assert flat == {"num_events": 10, "xmax.bias": 1.5, "xmax.resolution": 20.0, "xmax.per_primary.p.n": 6,
                    "xmax.per_primary.p.bias": 1.0, "xmax.per_primary.p.resolution": 25.0,
                    "xmax.per_primary.Fe.n": 4, "xmax.per_primary.Fe.bias": 2.0,
                    "xmax.per_primary.Fe.resolution": 12.0, "primary.accuracy": 0.7}
    tables = metrics_tables(report)
    assert set(tables) == {"xmax.per_primary", "xmax.vs_lg_energy", "primary.confusion"}
    assert tables["xmax.per_primary"] == (["name", "n", "bias", "resolution"],
                                          [["p", 6, 1.0, 25.0], ["Fe", 4, 2.0, 12.0]])
    assert tables["xmax.vs_lg_energy"][1][1] == [19.0, 19.5, 7, 2.5]
    assert tables["primary.confusion"] == (["true \\ predicted", "p", "Fe"], [["p", 0.8, 0.2], ["Fe", 0.25, 0.75]])


# ----------------------------------------------------------------------------- the callback on an offline run
class _Trainer:
    """What WandbTestReport reads of a trainer."""

    def __init__(self, loggers, root):
        self.loggers, self.default_root_dir, self.is_global_zero, self.checkpoint_callbacks = loggers, root, True, []


def _png(path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([0, 1], [0, 1])
    fig.savefig(path)
    plt.close(fig)


def test_callback_logs_regression_plots_tables_and_summary(tmp_path, monkeypatch):
    """An Auger-like run directory (nested metrics.json, resolution/residuals plots, no predictions.npz)."""
    from lightning.pytorch.loggers import WandbLogger

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    report = {"num_events": 10, "xmax": {"bias": 1.5, "resolution": 20.0, "merit_factor_p_fe": float("nan"),
                                         "per_primary": {"p": {"n": 6, "bias": 1.0, "resolution": 25.0}}}}
    (tmp_path / "metrics.json").write_text(json.dumps(report))
    for name in ("resolution", "residuals", "early_classification"):
        _png(tmp_path / f"{name}.png")
    logger = WandbLogger(project="t", name="auger-x-1", save_dir=str(tmp_path), offline=True)
    WandbTestReport().on_test_end(_Trainer([logger], tmp_path), pl_module=object())
    import wandb

    wandb.finish()
    (run,) = offline_runs(tmp_path / "wandb")
    assert run["name"] == "auger-x-1"
    summary = run["summary"]
    assert summary["test/xmax.resolution"] == 20.0 and summary["test/xmax.per_primary.p.n"] == 6
    assert summary["test/xmax.merit_factor_p_fe"] is None  # NaN is stored as null
    for name in ("resolution", "residuals", "early_classification"):
        assert summary[f"plots/{name}"]["_type"] == "image-file"
        assert any(f.startswith(f"media/images/plots/{name}_") for f in run["files"]), name
    (table,) = [f for f in run["files"] if f.startswith("media/table/tables/xmax.per_primary")]
    assert json.loads((next((tmp_path / "wandb").glob("offline-run-*")) / "files" / table).read_text()) == {
        "columns": ["name", "n", "bias", "resolution"], "data": [["p", 6, 1.0, 25.0]]}


def test_callback_logs_the_tasks_report_tables(tmp_path, monkeypatch):
    """Tables come from the task's report hook (the callback knows no analysis) next to those of metrics.json."""
    from lightning.pytorch.loggers import WandbLogger

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    (tmp_path / "metrics.json").write_text(json.dumps({"accuracy": 0.5, "num_objects": 4}))

    class Task:
        def resolve_output_dir(self):
            return tmp_path

        def report_tables(self):
            return {"per_class": (["class", "n_true"], [["a", 3], ["b", 1]])}

    logger = WandbLogger(project="t", name="hook-1", save_dir=str(tmp_path), offline=True)
    WandbTestReport().on_test_end(_Trainer([logger], tmp_path / "elsewhere"), pl_module=Task())
    import wandb

    wandb.finish()
    (run,) = offline_runs(tmp_path / "wandb")
    assert run["summary"]["test/accuracy"] == 0.5 and run["summary"]["test/num_objects"] == 4
    (table,) = [f for f in run["files"] if f.startswith("media/table/tables/per_class")]
    content = json.loads((next((tmp_path / "wandb").glob("offline-run-*")) / "files" / table).read_text())
    assert content == {"columns": ["class", "n_true"], "data": [["a", 3], ["b", 1]]}


def test_callback_does_nothing_without_wandb_logger(tmp_path):
    (tmp_path / "metrics.json").write_text("{not json")  # would raise if it were read
    WandbTestReport().on_test_end(_Trainer([], tmp_path), pl_module=object())


# ----------------------------------------------------------------------------- training runs
def test_training_run_reports_to_wandb_offline(data_dir, tmp_path, monkeypatch):
    """Name, group, tags, flat config, test metrics + best val/auc in the summary, plots and per-class table."""
    from physics_tf.training.run import run_train

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = compose_train(["experiment=jets_pfn", f"paths.data_dir={data_dir}", "logger=many", "seed=7", *TINY], tmp_path)
    metrics = run_train(cfg)
    (run,) = offline_runs(tmp_path / "wandb")
    assert (run["name"], run["group"], run["tags"]) == ("jets_pfn-pfn-7", "jets_pfn", ["jets", "pfn"])
    config = run["config"]
    assert config["model._target_"] == "physics_tf.jets.pfn.ParticleFlowNetwork"  # flat keys, not nested
    assert config["seed"] == 7 and config["data.batch_size"] == 16 and config["n_parameters"] > 0
    assert not any(isinstance(v, dict) and k != "_wandb" for k, v in config.items())

    summary = run["summary"]
    for key in ("accuracy", "auc_macro", "num_jets", "rej50_Tbqq"):
        assert summary[f"test/{key}"] == pytest.approx(metrics[key]), key
    (best,) = (tmp_path / "checkpoints").glob("epoch*.ckpt")
    assert summary["best/val/auc"] == pytest.approx(float(best.stem.split("auc")[1]), abs=1e-4)
    for plot in ("roc", "confusion"):
        assert any(f.startswith(f"media/images/plots/{plot}_") and f.endswith(".png") for f in run["files"]), plot

    (table,) = [f for f in run["files"] if f.startswith("media/table/tables/per_class")]
    content = json.loads((next((tmp_path / "wandb").glob("offline-run-*")) / "files" / table).read_text())
    pred = np.load(tmp_path / "predictions.npz")
    assert content["columns"] == ["class", "n_true", "n_predicted", "efficiency", "purity", "auc_vs_rest", "rej50",
                                  "rej30"]  # the jet tagger's rejection columns, through the task's report hook
    assert [r[0] for r in content["data"]] == ["QCD", "Tbqq"]
    assert content["data"][1][6:] == [pytest.approx(metrics["rej50_Tbqq"]), pytest.approx(metrics["rej30_Tbqq"])]
    assert [r[1] for r in content["data"]] == np.bincount(pred["labels"], minlength=2).tolist()
    assert sum(r[1] for r in content["data"]) == metrics["num_jets"]


def test_multirun_names_each_job_and_finishes_between_jobs(data_dir, tmp_path):
    """`-m model=pfn,part_small`: one offline run per job, named {experiment}-{model}-{seed}, grouped by experiment,
    each in its job's own directory — and syncable (`wandb sync --dry-run` lists them)."""
    sweep = tmp_path / "sweep"
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "MPLBACKEND": "Agg"}
    res = subprocess.run([sys.executable, "pipelines/train.py", "-m", "experiment=jets_pfn", "model=pfn,part_small",
                          "seed=3", "logger=wandb", f"paths.data_dir={data_dir}", *TINY, "trainer.limit_test_batches=2",
                          f"hydra.sweep.dir={sweep}"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    runs = [offline_runs(sweep / str(job) / "wandb") for job in (0, 1)]
    assert [len(r) for r in runs] == [1, 1]
    (a,), (b,) = runs
    assert (a["name"], b["name"]) == ("jets_pfn-pfn-3", "jets_pfn-part_small-3")
    assert a["group"] == b["group"] == "jets_pfn" and a["id"] != b["id"]
    assert a["config"]["model._target_"] != b["config"]["model._target_"]
    assert "test/accuracy" in a["summary"] and "test/accuracy" in b["summary"]
    dirs = [str(d) for job in (0, 1) for d in (sweep / str(job) / "wandb").glob("offline-run-*")]
    sync = subprocess.run([sys.executable, "-m", "wandb", "sync", "--dry-run", *dirs], env=env, capture_output=True,
                          text=True, timeout=120)
    assert sync.returncode == 0 and "Would sync 2 run(s)" in sync.stdout + sync.stderr, sync.stdout + sync.stderr
