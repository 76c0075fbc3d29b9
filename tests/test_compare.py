"""pipelines/compare.py: runs side by side from local run directories (and the W&B API through a stand-in)."""

from __future__ import annotations

import csv
import io
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from physics_tf.training.compare import (CompareError, comparison, find_run_dirs, load_local_run, load_wandb_runs,
                                         main)

from test_pipelines import compose_train

ROOT = Path(__file__).resolve().parents[1]


def make_run(path: Path, config: dict, metrics: dict | None, csv_rows: list[dict] | None = None,
             overrides: list[str] | None = None, model_choice: str | None = None) -> Path:
    """A run directory as run_train leaves it: config.yaml, metrics.json, csv/metrics.csv, .hydra/."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.yaml").write_text(yaml.safe_dump({**config, "paths": {"output_dir": str(path)}}))
    if metrics is not None:
        (path / "metrics.json").write_text(json.dumps(metrics))
    if csv_rows:
        (path / "csv").mkdir()
        keys = sorted({k for r in csv_rows for k in r})
        with open(path / "csv" / "metrics.csv", "w", newline="") as fh:
            writer = csv.DictWriter(fh, keys)
            writer.writeheader()
            writer.writerows(csv_rows)
    if overrides is not None or model_choice is not None:
        (path / ".hydra").mkdir()
        (path / ".hydra" / "config.yaml").write_text("seed: 0\n")  # not a run of its own
        (path / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides or []))
        (path / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump(
            {"hydra": {"runtime": {"choices": {"model": model_choice}}}}))
    return path


def config(model="physics_tf.jets.pfn.ParticleFlowNetwork", lr=1e-3, seed=1):
    return {"experiment_name": "jets", "seed": seed, "model": {"_target_": model, "dims": [64, 64]},
            "task": {"lr": lr, "schedule": "cosine"}, "trainer": {"max_epochs": 2, "default_root_dir": f"/r/{seed}"},
            "callbacks": {"model_checkpoint": {"monitor": "val/auc", "mode": "max", "dirpath": f"/r/{seed}/ckpt"},
                          "loss_ckpt": {"monitor": "val/loss", "mode": "min"}}}


@pytest.fixture
def sweep(tmp_path):
    """A Hydra multirun directory with three jobs (0, 1, 2): two models, two learning rates."""
    root = tmp_path / "multirun_2026-01-01_00-00-00"
    (root / "multirun.yaml").parent.mkdir(parents=True)
    (root / "multirun.yaml").write_text("hydra: {}\n")
    make_run(root / "0", config(lr=1e-3, seed=1), {"accuracy": 0.80, "auc_macro": 0.875, "rej50_Tbqq": 12.5},
             [{"epoch": 0, "val/auc": 0.7, "val/loss": 0.6}, {"epoch": 1, "val/auc": 0.9, "val/loss": 0.65},
              {"epoch": 1, "train/loss": 0.1}], overrides=["task.lr=1e-3"], model_choice="pfn")
    make_run(root / "1", config(lr=1e-2, seed=1), {"accuracy": 0.70, "auc_macro": 0.8, "rej50_Tbqq": float("inf")},
             [{"epoch": 0, "val/auc": 0.85, "val/loss": 0.5}], overrides=["task.lr=1e-2"], model_choice="pfn")
    make_run(root / "2", config(model="physics_tf.jets.part.ParticleTransformer", seed=1),
             {"accuracy": 0.9, "auc_macro": 0.95, "xmax": {"resolution": 20.0}}, overrides=["model=part"],
             model_choice="part")
    return root


def _rows(rows):
    return {(section, key): values for section, key, values in rows}


def test_differing_config_keys_and_metrics(sweep):
    runs = [load_local_run(d) for d in find_run_dirs([sweep])]
    assert [r.label for r in runs] == ["jets-pfn-1", "jets-pfn-1", "jets-part-1"]
    labels, rows = comparison(runs)
    assert labels == ["jets-pfn-1 #1", "jets-pfn-1 #2", "jets-part-1"]
    table = _rows(rows)
    config_keys = {k for s, k in table if s == "config"}
    assert config_keys == {"model._target_", "task.lr"}  # paths, dirpath, default_root_dir differ but are ignored
    assert table[("config", "task.lr")] == [1e-3, 1e-2, 1e-3]
    assert table[("run", "overrides")] == ["task.lr=1e-3", "task.lr=1e-2", "model=part"]
    assert table[("metric", "accuracy")] == [0.8, 0.7, 0.9]
    assert table[("metric", "xmax.resolution")] == [None, None, 20.0]  # nested metrics.json, missing elsewhere
    # best of the monitored metric from the CSV log, by the callback's mode; no CSV log → no value
    assert table[("metric", "best/val/auc")] == [0.9, 0.85, None]
    assert table[("metric", "best/val/loss")] == [0.6, 0.5, None]
    assert [k for s, k, _ in rows if s == "metric"][-2:] == ["best/val/auc", "best/val/loss"]


def test_chosen_keys_metric_patterns_all_config_and_sort(sweep):
    runs = [load_local_run(d) for d in find_run_dirs([sweep])]
    _, rows = comparison(runs, keys=["task.*", "seed"], metrics=["auc*", "rej*"])
    table = _rows(rows)
    assert ("config", "task.schedule") in table and ("config", "seed") in table  # equal, but asked for
    assert {k for s, k in table if s == "metric"} == {"auc_macro", "rej50_Tbqq"}
    _, rows = comparison(runs, all_config=True)
    assert ("config", "paths.output_dir") in _rows(rows)
    labels, rows = comparison(runs, sort="rej50_Tbqq")  # inf first, a run without the metric last
    assert _rows(rows)[("metric", "rej50_Tbqq")] == [math.inf, 12.5, None]
    labels, _ = comparison(runs, sort="accuracy", ascending=True)
    assert labels == ["jets-pfn-1 #2", "jets-pfn-1 #1", "jets-part-1"]


def test_csv_and_markdown_outputs(sweep, tmp_path, capsys):
    out_csv, out_md = tmp_path / "out" / "cmp.csv", tmp_path / "cmp.md"
    assert main([str(sweep), "--csv", str(out_csv), "--markdown", str(out_md), "--metrics", "accuracy", "rej*"]) == 0
    printed = capsys.readouterr().out
    assert "jets-part-1" in printed and "task.lr" in printed and "0.875" not in printed  # auc not selected
    lines = list(csv.reader(io.StringIO(out_csv.read_text())))
    assert lines[0] == ["section", "key", "jets-pfn-1 #1", "jets-pfn-1 #2", "jets-part-1"]
    by_key = {line[1]: line for line in lines[1:]}
    assert by_key["task.lr"] == ["config", "task.lr", "0.001", "0.01", "0.001"]
    assert by_key["rej50_Tbqq"] == ["metric", "rej50_Tbqq", "12.5", "inf", "—"]
    md = out_md.read_text().splitlines()
    assert md[0] == "| key | jets-pfn-1 #1 | jets-pfn-1 #2 | jets-part-1 |" and md[1] == "|---|---|---|---|"
    assert "| accuracy | 0.8 | 0.7 | 0.9 |" in md
    # one row per run
    assert main([str(sweep / "0"), str(sweep / "2"), "--runs-as-rows", "--csv", "-", "--quiet"]) == 0
    lines = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert [line[0] for line in lines] == ["key", "jets-pfn-1", "jets-part-1"]
    assert lines[0][:3] == ["key", "source", "overrides"] and "accuracy" in lines[0]


def test_globs_natural_order_and_nested_directories(sweep, tmp_path):
    for job in (3, 10):
        make_run(sweep / str(job), config(seed=job), {"accuracy": 0.5})
    assert [p.name for p in find_run_dirs([sweep])] == ["0", "1", "2", "3", "10"]
    for name in ("lr0.01", "lr0.001"):  # the same numbers to a natural sort: the text decides, every time
        make_run(tmp_path / "other" / name, config(), {"accuracy": 0.5})
    assert [p.name for p in find_run_dirs([tmp_path / "other"])] == ["lr0.001", "lr0.01"]
    assert [p.name for p in find_run_dirs([str(sweep / "[12]*")])] == ["1", "2", "10"]
    assert len(find_run_dirs([tmp_path])) == 7  # a parent of the multirun dir (logs/train/<experiment>/)
    assert len(find_run_dirs([sweep / "0", str(sweep / "*")])) == 5  # duplicates removed


@pytest.mark.parametrize("case", ["no_metrics", "empty", "missing", "file", "bad_json", "bad_yaml", "no_glob",
                                  "json_list"])
def test_bad_input_gives_one_line_naming_it(case, tmp_path, capsys):
    run = tmp_path / "run"
    expect = str(run)
    if case == "no_metrics":
        make_run(run, config(), None)
        expect_also = "missing metrics.json"
    elif case == "empty":
        run.mkdir()
        expect_also = "no config.yaml or metrics.json"
    elif case == "missing":
        expect_also = "no such directory"
    elif case == "file":
        run.write_text("x")
        expect_also = "not a directory"
    elif case == "bad_json":
        make_run(run, config(), {})
        (run / "metrics.json").write_text('{"accuracy": 0.5,\n "auc": }')
        expect, expect_also = str(run / "metrics.json"), "invalid JSON at line 2"
    elif case == "bad_yaml":
        make_run(run, config(), {})
        (run / "config.yaml").write_text("a: [1, 2\nb: 3\n")
        expect, expect_also = str(run / "config.yaml"), "invalid YAML"
    elif case == "json_list":
        make_run(run, config(), {})
        (run / "metrics.json").write_text("[1, 2]")
        expect, expect_also = str(run / "metrics.json"), "expected a JSON object"
    else:
        run = tmp_path / "nothing-*"
        expect, expect_also = str(run), "no directory matches"
    assert main([str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("physics_tf: error: ") and expect in err[0] and expect_also in err[0], err[0]


def test_bad_options_give_one_line(sweep, capsys, monkeypatch):
    cases = [([str(sweep), "--keys", "nope.*"], "--keys 'nope.*': no config key matches"),
             ([str(sweep), "--metrics", "nope"], "--metrics nope: no metric matches (have: accuracy"),
             ([str(sweep), "--sort", "nope"], "--sort 'nope': no run has this metric"),
             ([], "no runs given"),
             ([str(sweep), "--wandb", "e/p"], "not both"),
             ([str(sweep), "--group", "g"], "use them with --wandb"),
             (["--wandb", "e/p/x"], "expected entity/project")]
    monkeypatch.setenv("WANDB_MODE", "offline")
    cases.append((["--wandb", "team/physics_tf", "--group", "jets"], "WANDB_MODE=offline"))
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], (argv, err)


def test_skip_incomplete_sweep_jobs(sweep, capsys):
    make_run(sweep / "3", config(seed=3), None)  # a failed job: no metrics.json
    assert main([str(sweep), "--quiet"]) == 2
    assert "3: not a complete run directory, missing metrics.json" in capsys.readouterr().err
    assert main([str(sweep), "--quiet", "--skip-incomplete", "--csv", "-"]) == 0
    out = capsys.readouterr()
    assert "warning: skipped" in out.err and len(next(csv.reader(io.StringIO(out.out)))) == 2 + 3


# ----------------------------------------------------------------------------- W&B API (a stand-in for wandb.Api)
class FakeRun:
    def __init__(self, name, config, summary, group="jets_pfn"):
        self.name, self.config, self.summary_metrics, self.group = name, config, summary, group
        self.url, self.state = f"https://wandb.ai/team/physics_tf/runs/{name}", "finished"


class FakeApi:
    def __init__(self, runs):
        self._runs, self.calls = runs, []

    def runs(self, path, filters=None):
        self.calls.append((path, filters))
        return iter(self._runs)


def test_wandb_runs_become_comparable_runs():
    api = FakeApi([
        FakeRun("jets_pfn-pfn-1", {"seed": 1, "task.lr": 1e-3, "_wandb": {"x": 1}},
                {"test/accuracy": 0.8, "best/val/auc": 0.9, "train/loss": 0.3, "_runtime": 5,
                 "plots/roc": {"_type": "image-file", "path": "media/images/x.png"}}),
        FakeRun("jets_pfn-pfn-2", {"seed": 2, "task.lr": 1e-3}, {"test/accuracy": 0.7, "best/val/auc": 0.95}),
    ])
    runs = load_wandb_runs("team/physics_tf", group="jets_pfn", names=["jets_pfn-pfn-1", "jets_pfn-pfn-2"], api=api)
    assert api.calls == [("team/physics_tf", {"$and": [{"group": "jets_pfn"},
                                                        {"display_name": {"$in": ["jets_pfn-pfn-1", "jets_pfn-pfn-2"]}}]})]
    assert runs[0].metrics == {"accuracy": 0.8, "best/val/auc": 0.9}
    assert runs[0].config == {"seed": 1, "task.lr": 1e-3}
    labels, rows = comparison(runs, sort="best/val/auc")
    assert labels == ["jets_pfn-pfn-2", "jets_pfn-pfn-1"]
    table = _rows(rows)
    assert set(k for s, k in table if s == "config") == {"seed"}
    assert table[("run", "group")] == ["jets_pfn", "jets_pfn"]
    load_wandb_runs("team/physics_tf", tags=["pfn"], api=api)
    assert api.calls[-1] == ("team/physics_tf", {"tags": {"$in": ["pfn"]}})
    with pytest.raises(CompareError, match="no runs in team/physics_tf with group=other"):
        load_wandb_runs("team/physics_tf", group="other", api=FakeApi([]))


def test_wandb_without_api_key_is_one_clear_line(monkeypatch, capsys):
    import wandb

    def no_key(*args, **kwargs):
        raise wandb.errors.UsageError("No API key configured. Use `wandb login` to log in.")

    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setattr(wandb, "Api", no_key)
    assert main(["--wandb", "team/physics_tf"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["physics_tf: error: W&B API: No API key configured. Use `wandb login` to log in. "
                   "(or set WANDB_API_KEY)"]


def test_wandb_unreachable_server_is_one_clear_line(monkeypatch):
    class Down:
        def runs(self, path, filters=None):
            raise ConnectionError("Max retries exceeded with url: /graphql\n(more lines)")

    with pytest.raises(CompareError, match=r"^W&B API: cannot list the runs of team/p: Max retries exceeded"):
        load_wandb_runs("team/p", api=Down())


# ----------------------------------------------------------------------------- real training runs, from the CLI
def test_compare_real_runs_from_the_command_line(data_dir, tmp_path):
    from physics_tf.training.run import run_train

    common = ["experiment=jets_pfn", f"paths.data_dir={data_dir}", "data.batch_size=16",
              "trainer.max_epochs=1", "trainer.limit_train_batches=2", "callbacks.progress_bar.refresh_rate=0"]
    results = {lr: run_train(compose_train([*common, f"task.lr={lr}"], tmp_path / "logs" / f"lr{lr}"))
               for lr in (1e-3, 1e-2)}
    res = subprocess.run([sys.executable, "pipelines/compare.py", str(tmp_path / "logs"), "--csv", "-", "--quiet"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    lines = list(csv.reader(io.StringIO(res.stdout)))
    assert lines[0] == ["section", "key", "jets_pfn-ParticleFlowNetwork-42 #1", "jets_pfn-ParticleFlowNetwork-42 #2"]
    table = {line[1]: line for line in lines[1:]}
    assert [k for s, k, *_ in lines[1:] if s == "config"] == ["task.lr"]  # the only difference
    assert table["task.lr"][2:] == ["0.001", "0.01"]
    for i, lr in enumerate((1e-3, 1e-2)):
        assert float(table["accuracy"][2 + i]) == results[lr]["accuracy"]
        assert float(table["auc_macro"][2 + i]) == results[lr]["auc_macro"]
        (best,) = (tmp_path / "logs" / f"lr{lr}" / "checkpoints").glob("epoch*.ckpt")
        assert float(table["best/val/auc"][2 + i]) == pytest.approx(float(best.stem.split("auc")[1]), abs=1e-4)
