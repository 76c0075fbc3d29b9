"""The ``manifest.json`` a generator writes next to its files: what was asked for, whether it is complete, and
what is there.

A generator describes its request as JSON under one field of the manifest (jets: ``config_hash``, Auger:
``config``, light curves: ``request``). Its life:

1. :func:`begin` creates the directory, removes temporary files a killed run left behind and writes the manifest
   **first**, ``"complete": false`` with the request, so a directory whose generator died is recognisable.
2. The generator writes its data files (each atomically, :mod:`physics_tf.data.atomic`).
3. :func:`finish` writes it **last**, atomically: ``"complete": true`` and ``data_files``, every file's
   ``entries`` and size in ``bytes``.

When ``out_dir/manifest.json`` is complete and holds the same request and every file exists, the data set is up
to date: :func:`up_to_date` returns it and the generator skips the work (``force`` regenerates anyway).
:func:`check_directory` is the reading side (called by :func:`physics_tf.data.streaming.expand_files`): a
directory with a manifest must be complete and hold exactly the data files it lists; one without a manifest (the
user's own files) is not checked. Manifests written before ``complete`` existed are read as before.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from physics_tf.data.atomic import atomic_path
from physics_tf.data.errors import DataError

__all__ = ["MANIFEST", "config_hash", "as_json", "up_to_date", "begin", "finish", "check_directory",
           "remove_stale_temporaries"]

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
# The names atomic_path gives its temporary files: ".{name}.{random}.tmp{suffix}".
_TEMPORARY = re.compile(r"\..+\.[A-Za-z0-9_]+\.tmp(\.[^.]*)?")


def as_json(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples → lists, int keys → str), so that requests compare equal."""
    return json.loads(json.dumps(value, default=str))


def config_hash(config: Mapping[str, Any]) -> str:
    """16 hex digits of the SHA-256 of ``config`` as sorted JSON (stable across runs and Python versions)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _read(path: Path) -> dict[str, Any] | None:
    try:
        old = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return old if isinstance(old, dict) else None


def up_to_date(out_dir: str | os.PathLike, field: str, value: Any, files: Iterable[str | os.PathLike] = (),
               force: bool = False) -> dict[str, Any] | None:
    """The manifest in ``out_dir`` if it is complete, its ``field`` equals ``value`` and every one of ``files``
    exists, else None.

    ``files`` are relative to ``out_dir`` (or absolute). ``force`` always gives None (regenerate). An unreadable
    or in-progress manifest counts as absent.
    """
    out = Path(out_dir)
    path = out / MANIFEST
    if force or not path.is_file():
        return None
    old = _read(path)
    if old is None or old.get("complete", True) is not True or old.get(field) != as_json(value):
        return None
    if not all((out / f).is_file() for f in files):
        return None
    log.info("%s matches the request; nothing to do (gen.force=true regenerates)", path)
    return old


def remove_stale_temporaries(out_dir: str | os.PathLike) -> list[Path]:
    """Remove the temporary files (``.{name}.{random}.tmp{suffix}``) an interrupted writer left in ``out_dir``."""
    removed = []
    for p in Path(out_dir).glob(".*"):
        if p.is_file() and _TEMPORARY.fullmatch(p.name):
            p.unlink(missing_ok=True)
            removed.append(p)
    if removed:
        log.info("removed %d stale temporary file(s) in %s", len(removed), out_dir)
    return removed


def _write(path: Path, content: Mapping[str, Any]) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w") as fh:
            fh.write(json.dumps(content, indent=2, default=str) + "\n")
            fh.flush()
            os.fsync(fh.fileno())


def begin(out_dir: str | os.PathLike, content: Mapping[str, Any]) -> Path:
    """Start a generation in ``out_dir``: create it, remove stale temporary files and write the manifest
    ``{**content, "complete": false}`` (atomically, over any old one) before any data file; returns the directory."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out)
    _write(out / MANIFEST, {**content, "complete": False})
    return out


def finish(out_dir: str | os.PathLike, content: Mapping[str, Any], entries: Mapping[str, int]) -> dict[str, Any]:
    """Write the complete manifest last (atomically): ``content`` plus ``"complete": true`` and ``data_files``
    (``entries`` per file name relative to ``out_dir``, and each file's size in bytes). Returns what was written."""
    out = Path(out_dir)
    files = {name: {"entries": int(n), "bytes": (out / name).stat().st_size} for name, n in entries.items()}
    written = {**content, "complete": True, "data_files": files}
    _write(out / MANIFEST, written)
    return as_json(written)


def check_directory(directory: str | os.PathLike) -> None:
    """Refuse (:class:`~physics_tf.data.errors.DataError`, one line) a generated directory that is incomplete.

    Nothing happens without ``directory/manifest.json``. Otherwise the manifest must be complete, and where it
    lists ``data_files``: each must exist with its recorded size, and no other file with one of their suffixes
    (a data file it does not list; a cache named like a listed file, ``train_set.h5`` of ``train_set.csv``, is
    allowed) may be there.
    """
    out = Path(directory)
    path = out / MANIFEST
    if not path.is_file():
        return
    man = _read(path)
    rerun = "re-run the generator (python pipelines/generate.py gen=...)"
    if man is None:
        raise DataError(str(out), f"{MANIFEST} is unreadable; {rerun}", MANIFEST)
    if man.get("complete", True) is not True:
        raise DataError(str(out), f"generated data set is incomplete (its generator did not finish); {rerun}",
                        "complete")
    listed = man.get("data_files")
    if not isinstance(listed, Mapping):
        return  # a manifest from before data_files: read as before
    missing = [n for n in listed if not (out / n).is_file()]
    if missing:
        raise DataError(str(out), f"files the manifest lists are missing: {sorted(missing)[:3]}; {rerun}",
                        "data_files")
    changed = [n for n, v in listed.items() if isinstance(v, Mapping) and "bytes" in v
               and (out / n).stat().st_size != v["bytes"]]
    if changed:
        raise DataError(str(out), f"files differ in size from the manifest: {sorted(changed)[:3]}; {rerun}",
                        "data_files")
    # a data file: a suffix of the listed files; one named like a listed file (train_set.h5 converted from
    # train_set.csv by a data module) is a cache derived from it, not an unlisted data file
    suffixes, stems = {Path(n).suffix for n in listed}, {Path(n).stem for n in listed}
    extra = [p.name for p in out.iterdir() if p.is_file() and not p.name.startswith(".")
             and p.suffix in suffixes and p.name not in listed and p.stem not in stems]
    if extra:
        raise DataError(str(out), f"data files the manifest does not list: {sorted(extra)[:3]}; {rerun} into an "
                        "empty directory or remove them", "data_files")
