"""benchmarks/gpu_check.sh without a GPU: one line and exit status 0; ``--smoke`` runs the CPU-able parts and
writes their JSON (slow: two benchmark processes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="these check the no-GPU behaviour")


def run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable}
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)


def test_without_a_gpu_it_says_so_in_one_line_and_succeeds(tmp_path):
    out = tmp_path / "figures"
    proc = run("--out", str(out))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 1 and "no CUDA GPU" in lines[0]
    assert not out.exists()  # nothing written, nothing timed
    bad = run("--bogus")
    assert bad.returncode == 2 and bad.stderr.startswith("physics_tf: error: ") and "--bogus" in bad.stderr


@pytest.mark.slow
def test_smoke_runs_the_cpu_parts_and_writes_their_figures(tmp_path):
    proc = run("--smoke", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "no CUDA GPU" in proc.stdout.splitlines()[-1]
    summary = json.loads((tmp_path / "gpu_check.json").read_text())
    assert summary["mode"] == "smoke" and summary["gpu"] is None
    assert {s["name"]: s["status"] for s in summary["steps"]} == {"model": "ok", "attention": "ok"}
    model = json.loads((tmp_path / "model.json").read_text())
    assert model["device"] == "cpu" and model["rows"][0]["model"] == "physics_tf"
    assert model["rows"][0]["train_jets_s"] > 0 and model["rows"][0]["infer_jets_s"] > 0
    assert json.loads((tmp_path / "attention.json").read_text())
