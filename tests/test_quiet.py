"""Quiet runs: one log format with no line twice, no third-party tips or warnings that are not ours, tables on
lines of their own, and every run ends with its test table and its run directory."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import warnings
from collections import Counter
from pathlib import Path

import pytest

from physics_tf.training.run import run_train

from test_pipelines import compose_train

ROOT = Path(__file__).resolve().parents[1]
TINY = ["experiment=jets_pfn", "data.batch_size=32", "trainer.log_every_n_steps=1"]
NOISE = ("💡 Tip", "litlogger", "litmodels", "LeafSpec", "`IterableDataset` has `__len__`", "dirpath has changed",
         "Be aware that when using `ckpt_path`", "`srun` command is available", "Traceback")
HYDRA_LINE = re.compile(r"^\[\d{4}-\d\d-\d\d [\d:,]+\]\[[^\]]+\]\[[A-Z]+\] - (.*)$")
PLAIN_LINE = re.compile(r"^(?:INFO|WARNING|ERROR): (.*)$")  # Lightning's own handler, if it were still there
OUR_WARNING = re.compile(r"physics_tf/[\w/]+\.py:\d+: ")  # "<file>:<line>: [Category: ]message"


def _run(args: list[str], log_dir: Path) -> str:
    """One CLI run with stdout and stderr interleaved as on a terminal; Python's default warning filters, so
    that deprecations raised by our own calls show up too."""
    env = {**os.environ, "WANDB_MODE": "offline", "MPLBACKEND": "Agg", "PYTHONWARNINGS": "default"}
    res = subprocess.run([sys.executable, *args, f"paths.log_dir={log_dir}"], cwd=ROOT, env=env, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=300)
    assert res.returncode == 0, res.stdout[-4000:]
    return res.stdout


def _check_quiet(out: str) -> None:
    lines = re.split(r"[\r\n]", out)  # a progress bar redraws itself after a carriage return
    messages = [m.group(1).strip() for line in lines for m in [HYDRA_LINE.match(line) or PLAIN_LINE.match(line)] if m]
    assert messages, out[-3000:]
    twice = [msg for msg, n in Counter(messages).items() if n > 1]
    assert not twice, f"logged more than once: {twice}"
    assert not any(PLAIN_LINE.match(line) for line in lines), "a line not in Hydra's log format"
    for noise in NOISE:
        assert noise not in out, f"{noise!r} in the output:\n{out[-3000:]}"
    assert not OUR_WARNING.search(out), OUR_WARNING.search(out).group(0)
    for match in re.finditer(r"\[\d{4}-\d\d-\d\d [\d:,]+\]\[", out):  # a log line glued to a progress bar
        assert match.start() == 0 or out[match.start() - 1] in "\r\n", out[max(0, match.start() - 200):match.end()]


def _check_summary(out: str, run_dir: Path) -> None:
    title = out.index("Test metrics")
    before = out[:title]
    line_start = max(before.rfind("\n"), before.rfind("\r"))
    assert before[line_start + 1:].strip() == "", f"the table title is glued to: {before[line_start + 1:]!r}"
    assert f"written to {run_dir}" in out
    assert f"run directory {run_dir}: " in out
    assert out.rstrip().splitlines()[-1].startswith(f"run directory {run_dir}: ")  # the last line of the run


def test_train_and_evaluate_are_quiet_and_end_with_their_summary(data_dir, tmp_path):
    logs = tmp_path / "logs"
    out = _run(["pipelines/train.py", *TINY, f"paths.data_dir={data_dir}", "trainer.max_epochs=1"], logs)
    (run_dir,) = (logs / "train" / "jets_pfn").iterdir()
    _check_quiet(out)
    _check_summary(out, run_dir)
    assert "checkpoints/ (" in out and "config.yaml" in out
    assert (run_dir / "train.log").is_file()  # Hydra's log file is named after the task, not after cli.py
    assert "Restoring states" in (run_dir / "train.log").read_text()  # Lightning's lines reach the log file

    out = _run(["pipelines/evaluate.py", f"ckpt_path={run_dir}/checkpoints/last.ckpt"], logs)
    (eval_dir,) = [p for p in (logs / "evaluate").rglob("*") if (p / "metrics.json").is_file()]
    _check_quiet(out)
    _check_summary(out, eval_dir)
    assert not (eval_dir / "checkpoints").exists()  # an evaluation writes no checkpoints


def test_resume_from_another_run_directory_restores_without_warnings(data_dir, tmp_path):
    """A run resumed from another run's checkpoint keeps its own checkpoint bookkeeping: the other directory's
    best scores and file lists are not restored, and Lightning has nothing to warn about."""
    first = tmp_path / "first"
    overrides = [*TINY, f"paths.data_dir={data_dir}", "logger=none", "callbacks.progress_bar.refresh_rate=0"]
    run_train(compose_train([*overrides, "trainer.max_epochs=1", "test=false"], first))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_train(compose_train([*overrides, "trainer.max_epochs=2", "test=false",
                                 f"ckpt_path={first}/checkpoints/last.ckpt"], tmp_path / "second"))
    texts = [str(w.message) for w in caught]
    assert not [t for t in texts if "dirpath has changed" in t or "Be aware that when using" in t], texts
    # the resumed run's own best: its first epoch (epoch index 1), scored afresh
    assert len(list((tmp_path / "second" / "checkpoints").glob("epoch001-*.ckpt"))) == 1


@pytest.mark.parametrize("experiment, count, extra", [
    ("lightcurves_transformer", "num_objects", ["data.max_length=32"]),
    ("auger_transformer", "num_events", ["data.batch_size=8", "data.chunk_events=16"]),
])
def test_every_wing_ends_with_the_same_summary(experiment, count, extra, data_dir, tmp_path, capsys):
    cfg = compose_train([f"experiment={experiment}", f"paths.data_dir={data_dir}", "trainer.fast_dev_run=true",
                         "logger=none", *extra], tmp_path)
    run_train(cfg)
    out = capsys.readouterr().out
    _check_summary(out, tmp_path)
    assert "num_jets" not in out
    assert re.search(rf"│ {count}\s+│\s+\d+ │", out), out


@pytest.mark.gen
def test_fastjet_banner_printed_once_at_most(tmp_path, capfd):
    """FastJet prints its banner at the first clustering of every process: the generator prints it once, before
    its progress bar, and its worker processes print none."""
    pytest.importorskip("pythia8mc")
    pytest.importorskip("fastjet")
    from physics_tf.jets.generate.orchestrate import generate_dataset

    generate_dataset(tmp_path, ["QCD", "Tbqq"], n_train=10, n_val=0, n_test=0, seed=3, n_workers=2,
                     chunk_size=5, progress=False)
    assert capfd.readouterr().out.count("FastJet release") <= 1
