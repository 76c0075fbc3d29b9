"""The README is a contract: every shell command in it runs here (tiny overrides appended), or says why it cannot.

The commands run in order, in one fresh directory, as a user would run them from a checkout: the generators write
the data the trainings read, the trainings the run directories that evaluate, export and compare read. Training,
evaluation, generation and export run in this process through the console scripts' own entry points (the same
``@hydra.main`` with ``sys.argv`` as typed; a new interpreter per command would cost ~10 s of imports each), and so
does ``compare``, on the arguments the shell gives it (which expands their globs). tests/readme_commands.py says how
the commands are read.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hydra.core.global_hydra import GlobalHydra
from readme_commands import ROOT, fill_placeholders, pipeline_of, readme_commands, tiny_model, tiny_overrides

from conftest import synth_jetclass

COMMANDS = readme_commands()


def test_every_command_runs_or_says_why_not():
    """Each command is a pipeline this test runs, or carries a reason; the reasons are listed (``pytest -rA -s``)."""
    assert len(COMMANDS) >= 30, [str(c) for c in COMMANDS]
    marked = [c for c in COMMANDS if c.why_not]
    for cmd in COMMANDS:
        if not cmd.why_not:
            pipeline_of(cmd)  # raises for anything this test cannot run
    print("\nREADME commands the tests do not run:")
    for cmd in marked:
        print(f"  {cmd}\n      ({cmd.why_not})")
    assert len(marked) < len(COMMANDS) / 2


def _users_files(root: Path) -> None:
    """The files the README's "Your own data" commands name, in the public releases' layouts (small)."""
    from physics_tf.jets.writers import write_jetclass_root, write_toptagging_h5

    for seed, split in enumerate(["train_100M", "val_5M", "test_20M"]):
        out = root / "data" / "JetClass" / split
        out.mkdir(parents=True)
        for k, name in enumerate(["ZJetsToNuNu", "TTBar"]):  # JetClass file names: <process>_<NNN>.root
            p, j, lab = synth_jetclass(24, seed=10 * seed + k, classes=(0 if k == 0 else 8,), max_particles=15)
            write_jetclass_root(out / f"{name}_{seed:03d}.root", p, j, lab)
    rng = np.random.default_rng(0)
    (root / "data" / "toptag").mkdir(parents=True)
    for split in ["train", "val", "test"]:
        n, k = 48, 30
        pt = np.sort(rng.uniform(1, 100, (n, k)), axis=1)[:, ::-1] * (np.arange(k) < rng.integers(3, k, n)[:, None])
        eta, phi = rng.normal(0, 0.3, (n, k)), rng.normal(0, 0.3, (n, k))
        write_toptagging_h5(root / "data" / "toptag" / f"{split}.h5", pt * np.cosh(eta), pt * np.cos(phi),
                            pt * np.sin(phi), pt * np.sinh(eta), rng.integers(0, 2, n))


def _run_in_process(name: str, argv: list[str], monkeypatch) -> None:
    import physics_tf.cli as cli

    GlobalHydra.instance().clear()
    monkeypatch.setattr(sys, "argv", [f"pipelines/{name}.py", *argv])
    err_text = io.StringIO()
    try:
        with contextlib.redirect_stderr(err_text):
            getattr(cli, name)()
    except SystemExit as err:
        if err.code not in (0, None):
            raise AssertionError(f"exit status {err.code}: {err_text.getvalue()[-1500:]}") from None
    finally:
        GlobalHydra.instance().clear()
        logging.getLogger().handlers.clear()  # Hydra's file handler of the finished run


def _run_compare(cmd: str, cwd: Path) -> None:
    """``python pipelines/compare.py ARGS`` with ARGS expanded by the shell (its unquoted globs; quoted ones reach
    compare.py as typed), then compare.py's ``main`` run in this process on them."""
    from physics_tf.training.compare import main

    res = subprocess.run(["bash", "-c", f'printf "%s\\0" {cmd}'], cwd=cwd, capture_output=True, text=True,
                         timeout=60, check=True)
    python, script, *args = res.stdout.split("\0")[:-1]
    assert (python, script) == ("python", "pipelines/compare.py"), (python, script)
    status = main(args)
    assert status in (0, None), f"exit status {status}"


def test_readme_commands_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for var in ("PHYSICS_TF_DATA", "HYDRA_FULL_ERROR"):
        monkeypatch.delenv(var, raising=False)
    for var in ("PROJECT_ROOT", "PHYSICS_TF_HOME"):  # runs and data under this directory, as from a checkout
        monkeypatch.setenv(var, str(tmp_path))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    (tmp_path / "pipelines").symlink_to(ROOT / "pipelines")
    _users_files(tmp_path)
    import physics_tf.training.run as run

    real_train = run.run_train  # every training (each point of a sweep too) builds its network tiny
    monkeypatch.setattr(run, "run_train", lambda cfg: real_train(tiny_model(cfg)))
    timings = []
    for cmd in COMMANDS:
        if cmd.why_not:
            continue
        name, args = pipeline_of(cmd)
        start = time.monotonic()
        try:
            if name == "compare":  # the shell expands its unquoted globs
                words = [fill_placeholders(w, tmp_path) if "<" in w else w for w in cmd.text.split()]
                _run_compare(" ".join(words), tmp_path)
            else:
                argv = [fill_placeholders(a, tmp_path) for a in args] + tiny_overrides(name, args)
                _run_in_process(name, argv, monkeypatch)
        except Exception as err:  # noqa: BLE001 - name the README line
            pytest.fail(f"{cmd}\n  failed: {type(err).__name__}: {err}")
        timings.append((time.monotonic() - start, cmd))
    print("\n".join(f"{t:6.1f} s  {c}" for t, c in timings))
    assert len(timings) >= 20


def _readme_figures():
    import importlib.util

    spec = importlib.util.spec_from_file_location("readme_figures", ROOT / "docs" / "readme_figures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_sections_match_the_committed_figures():
    """README's generated sections equal what docs/readme_figures.py renders from docs/figures/*.json."""
    figures = _readme_figures()
    text = (ROOT / "README.md").read_text()
    have = figures.sections(text)
    assert {"demo", "part_vs_weaver", "pictures"} <= set(have), sorted(have)
    assert figures.sections(figures.render(text)) == have, "run: python docs/readme_figures.py render"
    for png in re.findall(r"\]\((docs/figures/[^)]+\.png)\)", text):
        assert (ROOT / png).stat().st_size > 10_000, png


def _table(text: str) -> str:
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "Test metrics")
    end = next(i for i in range(start, len(lines)) if lines[i].startswith("└"))
    return "\n".join(line.rstrip() for line in lines[start:end + 1])


@pytest.mark.slow
def test_demo_prints_the_readme_block(tmp_path):
    """``make demo`` (its two commands, from a fresh directory) prints exactly the README's table (minutes)."""
    env = {**os.environ, "PHYSICS_TF_HOME": str(tmp_path), "PROJECT_ROOT": str(tmp_path), "WANDB_MODE": "offline",
           "MPLBACKEND": "Agg", "COLUMNS": "120"}
    env.pop("PHYSICS_TF_DATA", None)
    for cmd in (["pipelines/generate.py", "gen=jets_demo"], ["pipelines/train.py", "experiment=jets_demo"]):
        res = subprocess.run([sys.executable, *cmd], cwd=ROOT, env=env, capture_output=True, text=True, timeout=3600)
        assert res.returncode == 0, res.stderr[-3000:]
    readme = _readme_figures().sections((ROOT / "README.md").read_text())["demo"]
    assert _table(res.stdout) == _table(readme)
