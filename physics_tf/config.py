"""Locating the Hydra configs of physics_tf, from a source checkout or an installed package."""

from __future__ import annotations

import os
from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent


def config_dir() -> Path:
    """The directory holding ``train.yaml``.

    Order: ``$PHYSICS_TF_CONFIG_DIR``; the repository's top-level ``conf/`` (source checkout or editable
    install); the copy shipped inside the wheel (``physics_tf/_conf``).
    """
    candidates = []
    if os.environ.get("PHYSICS_TF_CONFIG_DIR"):
        candidates.append(Path(os.environ["PHYSICS_TF_CONFIG_DIR"]))
    candidates += [_PACKAGE_DIR.parent / "conf", _PACKAGE_DIR / "_conf"]
    for path in candidates:
        if (path / "train.yaml").is_file():
            return path.resolve()
    raise FileNotFoundError(
        "physics_tf cannot find its Hydra configs (train.yaml); looked in: " + ", ".join(map(str, candidates))
        + ". Set PHYSICS_TF_CONFIG_DIR to the repository's conf/ directory."
    )
