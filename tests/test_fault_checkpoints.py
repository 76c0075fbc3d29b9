"""Checkpoints and a full disk: writes are atomic (no half-written last.ckpt, no temp file left), a full disk is
one line naming the run directory, and ``ckpt_path=last`` skips a broken checkpoint for the newest readable one."""

from __future__ import annotations

import errno
import logging
import os
import subprocess

import pytest
import torch
from test_faults import _tiny_run

from physics_tf.cli import is_input_error, one_line
from physics_tf.training.checkpoint_io import save_checkpoint_atomically
from physics_tf.training.checkpoints import resolve_ckpt_path
from physics_tf.training.run import OutputDirError


def _no_space(fd: int) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_failed_checkpoint_write_keeps_the_old_file_and_leaves_no_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "checkpoints" / "last.ckpt"
    save_checkpoint_atomically({"epoch": 0, "w": torch.ones(3)}, path)
    assert torch.load(path, weights_only=True)["epoch"] == 0
    monkeypatch.setattr(os, "fsync", _no_space)
    with pytest.raises(OSError) as info:
        save_checkpoint_atomically({"epoch": 1, "w": torch.zeros(1000)}, path)
    assert (info.value.errno, info.value.filename) == (errno.ENOSPC, str(path))
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]  # no .last.ckpt.*.tmp.ckpt
    assert torch.load(path, weights_only=True)["epoch"] == 0


def test_no_space_while_checkpointing_is_one_line_naming_the_run_dir(data_dir, tmp_path, monkeypatch):  # noqa: F811
    """ENOSPC while Lightning writes the first checkpoint: no checkpoint file at all, one input-style line."""
    run = tmp_path / "run"
    monkeypatch.setattr(os, "fsync", _no_space)
    with pytest.raises(OutputDirError) as info:
        _tiny_run(data_dir, run)
    line = one_line(info.value)
    assert is_input_error(info.value) and "\n" not in line, line
    assert line.startswith(f"no space left for the run directory {run} (writing {run}/checkpoints/"), line
    assert "No space left on device" in line and "hydra.run.dir" in line, line
    assert list((run / "checkpoints").iterdir()) == []


def test_ckpt_path_last_skips_a_truncated_last_ckpt(data_dir, tmp_path, caplog):  # noqa: F811
    """A last.ckpt cut short (a crash or a full disk under the old, non-atomic writer) beside the epoch's intact
    best checkpoint: ``ckpt_path=last`` warns naming last.ckpt and resumes from the epoch checkpoint."""
    run = tmp_path / "logs" / "train" / "jets_demo" / "run"
    _tiny_run(data_dir, run)
    checkpoints = run / "checkpoints"
    last = checkpoints / "last.ckpt"
    (best,) = [p for p in checkpoints.glob("*.ckpt") if p != last]
    first = torch.load(best, weights_only=True)
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    later = best.stat().st_mtime + 10
    os.utime(last, (later, later))  # the broken file is the newest
    with caplog.at_level(logging.WARNING, logger="physics_tf"):
        assert resolve_ckpt_path("last", run) == str(best)
    assert any(r.levelno == logging.WARNING and f"skipping {last}, it cannot be read" in r.getMessage()
               for r in caplog.records), caplog.text
    # and the run really continues from it
    _tiny_run(data_dir, run, "ckpt_path=last", "trainer.max_epochs=2")
    resumed = torch.load(last, weights_only=True)
    assert (first["epoch"], resumed["epoch"]) == (0, 1)
    assert resumed["global_step"] == 2 * first["global_step"]


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A real 256 KiB file system (root and a working ``mount -t tmpfs`` only)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], capture_output=True)
    if res.returncode != 0:
        pytest.skip(f"mount -t tmpfs failed: {res.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_a_real_full_disk_is_one_line_and_leaves_no_partial_checkpoint(data_dir, tiny_tmpfs):  # noqa: F811
    """The run directory on a 256 KiB tmpfs: the config fits, the first checkpoint does not."""
    run = tiny_tmpfs / "run"
    with pytest.raises(OutputDirError) as info:
        _tiny_run(data_dir, run)
    line = one_line(info.value)
    assert line.startswith(f"no space left for the run directory {run} (writing {run}/checkpoints/"), line
    assert (run / "config.yaml").is_file()
    assert list((run / "checkpoints").iterdir()) == []
