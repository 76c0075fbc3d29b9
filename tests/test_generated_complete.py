"""A generated data set is complete, or readers refuse it (issue 13): the manifest is written first as in
progress and last as complete, readers check it, a re-run removes stale temporaries, and killing the jet
generator leaves neither a usable directory nor a process behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from physics_tf.data import manifest
from physics_tf.data.atomic import atomic_path
from physics_tf.data.errors import DataError
from physics_tf.data.streaming import expand_files

ROOT = Path(__file__).resolve().parents[1]


def _refused(pattern) -> str:
    with pytest.raises(DataError) as err:
        expand_files([str(pattern)], "train")
    msg = str(err.value)
    assert "\n" not in msg and "re-run the generator" in msg
    return msg


def test_in_progress_and_mismatching_directories_are_refused(tmp_path):
    out = tmp_path / "gen"
    manifest.begin(out, {"config": {"seed": 1}})
    (out / "train_000.root").write_bytes(b"x" * 10)
    assert json.loads((out / manifest.MANIFEST).read_text())["complete"] is False
    msg = _refused(out / "train_*.root")
    assert str(out) in msg and "incomplete" in msg

    written = manifest.finish(out, {"config": {"seed": 1}}, {"train_000.root": 5})
    assert written["complete"] is True and written["data_files"] == {"train_000.root": {"entries": 5, "bytes": 10}}
    assert expand_files([str(out / "train_*.root")]) == [str(out / "train_000.root")]
    assert manifest.up_to_date(out, "config", {"seed": 1}, ["train_000.root"]) is not None

    (out / "train_000.h5").write_bytes(b"c")  # a cache converted from a listed file is allowed
    assert expand_files([str(out / "train_*")]) == [str(out / "train_000.h5"), str(out / "train_000.root")]
    (out / "train_001.root").write_bytes(b"y")  # a data file the manifest does not list
    assert "does not list" in _refused(out / "train_000.root")
    (out / "train_001.root").unlink()
    (out / "train_000.root").write_bytes(b"x" * 11)  # changed since
    assert "size" in _refused(out / "train_*.root")
    (out / "train_000.root").unlink()  # a listed file is missing
    (out / "train_002.root").write_bytes(b"z")
    assert "missing" in _refused(out / "train_*.root")

    # an in-progress manifest never counts as up to date
    manifest.begin(out, {"config": {"seed": 1}})
    (out / "train_000.root").write_bytes(b"x" * 10)
    assert manifest.up_to_date(out, "config", {"seed": 1}, ["train_000.root"]) is None


def test_directory_without_manifest_reads_as_before(tmp_path):
    (tmp_path / "mine_0.root").write_bytes(b"a")
    (tmp_path / "other.txt").write_text("b")
    assert expand_files(str(tmp_path / "*.root")) == [str(tmp_path / "mine_0.root")]


def test_begin_removes_stale_temporaries_only(tmp_path):
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "train_000.root") as tmp:
        name = tmp.name  # the name a killed writer would have left behind
        raise RuntimeError
    (tmp_path / name).write_bytes(b"half")
    (tmp_path / ".hidden_user_file").write_text("keep")
    (tmp_path / "train_000.root").write_bytes(b"keep")
    manifest.begin(tmp_path, {"config": {}})
    assert not (tmp_path / name).exists()
    assert (tmp_path / ".hidden_user_file").exists() and (tmp_path / "train_000.root").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".hidden_user_file", "manifest.json", "train_000.root"]


def _gone(pids, timeout=15.0) -> list[int]:
    """The pids of ``pids`` still alive (zombies count as gone) after waiting up to ``timeout`` seconds."""
    psutil = pytest.importorskip("psutil")
    deadline = time.monotonic() + timeout
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if psutil.pid_exists(p)
                 and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
        time.sleep(0.2)
    return alive


def test_workers_die_when_the_generator_is_killed(tmp_path):
    """The pool workers and the manager process the jet generator starts die with a SIGKILLed parent."""
    psutil = pytest.importorskip("psutil")
    script = tmp_path / "parent.py"
    script.write_text(textwrap.dedent("""
        import multiprocessing as mp, os, sys, time
        from multiprocessing.managers import SyncManager
        from physics_tf.jets.generate.orchestrate import _die_with_parent

        if __name__ == "__main__":
            ctx = mp.get_context("spawn")
            mgr = SyncManager(ctx=ctx)
            mgr.start(_die_with_parent, (os.getpid(),))
            pool = ctx.Pool(2, _die_with_parent, (os.getpid(),))
            pool.map(abs, range(4))
            print("ready", flush=True)
            time.sleep(600)
    """))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert proc.stdout.readline().strip() == "ready"
        children = [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
        assert len(children) >= 3  # manager + 2 workers
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        assert _gone(children) == []
    finally:
        proc.kill()


def _generate(out, log_dir, *extra):
    cmd = [sys.executable, "pipelines/generate.py", "gen=jets_demo", f"gen.out_dir={out}", f"paths.log_dir={log_dir}",
           "gen.n_train=40", "gen.n_val=0", "gen.n_test=0", "gen.n_workers=2", "gen.jets_per_file=20",
           "gen.chunk_size=10", "gen.progress=false", *extra]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "PROJECT_ROOT": str(ROOT)})


def test_kill_9_mid_run_then_rerun(tmp_path):
    """kill -9 of `pipelines/generate.py` after its first file: no process left, the directory is refused in one
    line, and a re-run completes, removes the temporaries and is accepted."""
    psutil = pytest.importorskip("psutil")
    pytest.importorskip("pythia8mc")
    pytest.importorskip("fastjet")
    out, logs = tmp_path / "jets", tmp_path / "logs"
    proc = _generate(out, logs)
    try:
        children: set[int] = set()
        deadline = time.monotonic() + 240
        while not list(out.glob("train_*.root")):
            assert proc.poll() is None, "the generator ended before writing its first file"
            assert time.monotonic() < deadline, "no file after 240 s"
            children |= {c.pid for c in psutil.Process(proc.pid).children(recursive=True)}
            time.sleep(0.05)
        children |= {c.pid for c in psutil.Process(proc.pid).children(recursive=True)}
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        proc.kill()
    assert children, "the generator started no worker process"
    assert _gone(children) == []
    assert json.loads((out / manifest.MANIFEST).read_text())["complete"] is False
    assert str(out) in _refused(out / "train_*.root")

    stale = out / ".train_001.root.abcd1234.tmp.root"
    stale.write_bytes(b"half-written")
    rerun = _generate(out, logs)
    assert rerun.wait(300) == 0
    assert not stale.exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
    files = expand_files([str(out / "train_*.root")])
    man = json.loads((out / manifest.MANIFEST).read_text())
    assert man["complete"] is True and "config_hash" in man and "summary" in man
    assert sorted(man["data_files"]) == [Path(f).name for f in files]
    assert sum(v["entries"] for v in man["data_files"].values()) == 80
