"""The ``manifest.json`` a generator writes next to its files: what was asked for, so that asking again is free.

A generator describes its request as JSON under one field of the manifest (jets: ``config_hash``, Auger:
``config``, light curves: ``request``). When ``out_dir/manifest.json`` holds the same value under that field and
every file the request produces exists, the data set is up to date: :func:`up_to_date` returns the old manifest
and the generator skips the work (``force`` regenerates anyway). Before rewriting, :func:`start` removes a stale
manifest, and :func:`write` puts the new one down last (atomically), so a crash never leaves a matching manifest
next to half-written files.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from physics_tf.data.atomic import atomic_path

__all__ = ["MANIFEST", "config_hash", "as_json", "up_to_date", "start", "write"]

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"


def as_json(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples → lists, int keys → str), so that requests compare equal."""
    return json.loads(json.dumps(value, default=str))


def config_hash(config: Mapping[str, Any]) -> str:
    """16 hex digits of the SHA-256 of ``config`` as sorted JSON (stable across runs and Python versions)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def up_to_date(out_dir: str | os.PathLike, field: str, value: Any, files: Iterable[str | os.PathLike] = (),
               force: bool = False) -> dict[str, Any] | None:
    """The manifest in ``out_dir`` if its ``field`` equals ``value`` and every one of ``files`` exists, else None.

    ``files`` are relative to ``out_dir`` (or absolute). ``force`` always gives None (regenerate). An unreadable
    manifest counts as absent.
    """
    out = Path(out_dir)
    path = out / MANIFEST
    if force or not path.is_file():
        return None
    try:
        old = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if not isinstance(old, dict) or old.get(field) != as_json(value):
        return None
    if not all((out / f).is_file() for f in files):
        return None
    log.info("%s matches the request; nothing to do (gen.force=true regenerates)", path)
    return old


def start(out_dir: str | os.PathLike) -> Path:
    """Create ``out_dir`` and remove a stale manifest before the files are rewritten; returns the directory."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)
    return out


def write(out_dir: str | os.PathLike, content: Mapping[str, Any]) -> Path:
    """Write ``content`` as ``out_dir/manifest.json`` (indented JSON, atomically); call after the data files."""
    path = Path(out_dir) / MANIFEST
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(content, indent=2, default=str) + "\n")
    return path
