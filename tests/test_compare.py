"""pipelines/compare.py: runs side by side from local run directories (and the W&B API through a stand-in)."""

from __future__ import annotations

import csv
import io
import json
import math
import re
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


# ----------------------------------------------------------------------------- the terminal table in 80 columns
def _tables(text: str) -> list[list[list[str]]]:
    """The tables rich printed: per table, its lines split into cells (header and body; borders dropped)."""
    tables, current = [], None
    for line in text.splitlines():
        if line.startswith("┏"):
            current = []
            tables.append(current)
        elif current is not None and line[:1] in "┃│":
            current.append([cell.strip() for cell in re.split("[┃│]", line)[1:-1]])
    return tables


def _logical_rows(lines: list[list[str]]) -> dict[str, list[list[str]]]:
    """Body lines grouped by the first column: {key: [its lines' cells]} (a continuation has an empty key cell)."""
    rows: dict[str, list[list[str]]] = {}
    key = None
    for cells in lines:
        key = cells[0] or key
        rows.setdefault(key, []).append(cells[1:])
    return rows


def _whole_or_shortened(cell: str, words: list[str]) -> bool:
    """``cell`` is one of ``words``, or one shortened in the middle (start…end), not a fragment of one."""
    if cell in words:
        return True
    head, sep, tail = cell.partition("…")
    return bool(sep) and any(w.startswith(head) and w.endswith(tail) and len(w) > len(cell) for w in words)


def test_narrow_non_terminal_table_keeps_paths_and_overrides_whole(tmp_path, capsys, monkeypatch):
    """Six runs at 80 columns (not a terminal): paths relative to their common parent, printed whole once; override
    lists broken only between overrides; long words shortened in the middle; no column narrower than 3."""
    root = tmp_path / "logs" / "train" / "jets_part_with_a_long_experiment_name" / "multirun_2026-01-01_00-00-00"
    rels, tokens = [], []
    for i in range(6):
        rel = f"lr1e-{i + 2}_batch64_cosine_warmup_job{i}"
        over = [f"task.lr=1e-{i + 2}", "data.batch_size=64", f"task.scheduler.warmup_steps={100 * i}"]
        make_run(root / rel, config(model="physics_tf.jets.part.ParticleTransformer", lr=10 ** -(i + 2), seed=i),
                 {"accuracy": 0.8, "auc_macro": 0.9 + i / 100, "rej50_Tbqq": 12.5 * i}, overrides=over,
                 model_choice="part_with_interactions")
        rels.append(rel)
        tokens += over
    monkeypatch.setenv("COLUMNS", "80")
    assert main([str(root)]) == 0
    out = capsys.readouterr().out
    assert f"source: relative to {root}/" in out.splitlines()  # the common parent in one piece, on its own line
    assert all(len(line) <= 80 for line in out.splitlines() if not line.startswith("source: "))
    tables = _tables(out)
    assert len(tables) > 1 and "6 runs (1 of" in out  # too wide for one table: parts, each with the keys column
    widths = [len(w) for line in out.splitlines() if line.startswith("┏") for w in line[1:-1].split("┳")]
    assert min(widths) - 2 >= 3, widths  # no sliver column holding a character or two
    shown = 0
    for lines in tables:
        rows = _logical_rows(lines[1:])
        assert len(rows["source"]) == 1  # a path never continues on the next line
        for cell in rows["source"][0]:
            assert _whole_or_shortened(cell, rels), cell
            shown += 1
        for cells in rows["overrides"]:
            for cell in filter(None, cells):
                assert all(_whole_or_shortened(word, tokens) for word in cell.split()), cell
        assert all(cell.strip() for cell in rows["auc_macro"][0])  # numbers: one line each
    assert shown == 6


def test_automatic_layout_transposes_many_runs_with_few_keys_and_counts_runs(tmp_path, capsys, monkeypatch):
    from physics_tf.training.compare import build_parser
    from physics_tf.training.compare_tables import layout

    runs = [make_run(tmp_path / f"job{i}", config(seed=i), {"accuracy": 0.5 + i / 100}) for i in range(8)]
    labels, rows = comparison([load_local_run(r) for r in runs], metrics=["accuracy"])
    prefix, runs_as_rows, parts = layout(labels, rows, width=80)
    assert prefix == f"{tmp_path}/" and runs_as_rows and len(parts) == 1  # 8 runs x (source, seed, accuracy)
    (lines, widths), = parts
    assert [line[0] for line in lines] == ["run", *labels] and lines[0][1:] == ["source", "seed", "accuracy"]
    assert lines[1][1] == "job0" and sum(widths) + 3 * len(widths) + 1 <= 80
    _, runs_as_rows, parts = layout(labels, rows, width=400)  # wide enough: keys down the side, one table
    assert not runs_as_rows and len(parts) == 1 and parts[0][0][0] == ["key", *labels]
    assert "transposed (runs as rows)" in " ".join(build_parser().format_help().split())  # the rule, in --help
    monkeypatch.setenv("COLUMNS", "80")
    assert main([str(runs[0])]) == 0
    assert re.search(r"^\s*1 run\s*$", capsys.readouterr().out, re.M)  # not "1 runs"
    assert main([str(r) for r in runs[:2]]) == 0
    assert re.search(r"^\s*2 runs\s*$", capsys.readouterr().out, re.M)


# ----------------------------------------------------------------------------- best scores from any logger
def _checkpoint(path: Path, best_auc: float | None) -> Path:
    """A checkpoint holding what compare reads of it: the checkpoint callbacks' state (a best-by-val/auc one and
    a last one without a monitor)."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {"net.w": torch.zeros(3)}, "callbacks": {
        "BestCheckpoint{'monitor': 'val/auc', 'mode': 'max'}": {
            "monitor": "val/auc", "best_model_score": None if best_auc is None else torch.tensor(best_auc),
            "best_model_path": str(path.parent / "epoch000.ckpt")},
        "ModelCheckpoint{'monitor': None, 'mode': 'min'}": {"monitor": None, "best_model_score": None}}}, path)
    return path


def test_best_score_from_the_checkpoint_when_there_is_no_csv_log(tmp_path, capsys):
    import os

    no_csv = make_run(tmp_path / "wandb_run", config(), {"accuracy": 0.8})
    os.utime(_checkpoint(no_csv / "checkpoints" / "epoch000-auc0.5000.ckpt", 0.5), (1, 1))  # older than last.ckpt
    _checkpoint(no_csv / "checkpoints" / "last.ckpt", 0.875)
    with_csv = make_run(tmp_path / "csv_run", config(), {"accuracy": 0.7},
                        [{"epoch": 0, "val/auc": 0.6, "val/loss": 0.4}, {"epoch": 1, "val/auc": 0.65, "val/loss": 0.5}])
    _checkpoint(with_csv / "checkpoints" / "last.ckpt", 0.99)  # the CSV log comes first, as before
    broken = make_run(tmp_path / "broken", config(), {"accuracy": 0.6})
    (broken / "checkpoints").mkdir()
    (broken / "checkpoints" / "last.ckpt").write_bytes(b"truncated")
    never = make_run(tmp_path / "never_improved", config(), {"accuracy": 0.5})
    _checkpoint(never / "checkpoints" / "last.ckpt", None)
    capsys.readouterr()
    runs = [load_local_run(d) for d in (no_csv, with_csv, broken, never)]
    assert runs[0].metrics["best/val/auc"] == 0.875 and "best/val/loss" not in runs[0].metrics
    assert runs[1].metrics["best/val/auc"] == 0.65 and runs[1].metrics["best/val/loss"] == 0.4
    assert "best/val/auc" not in runs[2].metrics and "best/val/auc" not in runs[3].metrics
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"physics_tf: warning: {broken / 'checkpoints' / 'last.ckpt'}: "
                                               "cannot read the best scores"), err


def test_wandb_logged_run_shows_its_best_val_score(data_dir, tmp_path, monkeypatch, capsys):
    """A real ``logger=wandb`` run (offline, no CSV log): its best val/auc comes from its checkpoint."""
    from physics_tf.training.run import run_train

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run_dir = tmp_path / "run"
    run_train(compose_train(["experiment=jets_pfn", f"paths.data_dir={data_dir}", "logger=wandb", "data.batch_size=16",
                             "trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=2",
                             "trainer.log_every_n_steps=1", "callbacks.progress_bar.refresh_rate=0"], run_dir))
    assert any((run_dir / "wandb").glob("offline-run-*")) and not (run_dir / "csv").exists()
    capsys.readouterr()
    assert main([str(run_dir), "--metrics", "best/*", "--csv", "-", "--quiet"]) == 0
    lines = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    (best,) = (run_dir / "checkpoints").glob("epoch*.ckpt")
    assert lines[-1][:2] == ["metric", "best/val/auc"]
    assert float(lines[-1][2]) == pytest.approx(float(best.stem.split("auc")[1]), abs=1e-4)
