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
    if os.environ.get("PHYSICS_TF_CONFIG_DIR") and user_config_dir() is None:
        candidates.append(Path(os.environ["PHYSICS_TF_CONFIG_DIR"]))
    candidates += [_PACKAGE_DIR.parent / "conf", _PACKAGE_DIR / "_conf"]
    for path in candidates:
        if (path / "train.yaml").is_file():
            return path.resolve()
    raise FileNotFoundError(
        "physics_tf cannot find its Hydra configs (train.yaml); looked in: " + ", ".join(map(str, candidates))
        + ". Set PHYSICS_TF_CONFIG_DIR to the repository's conf/ directory."
    )


def user_config_dir() -> Path | None:
    """``$PHYSICS_TF_CONFIG_DIR`` when it holds only the user's own configs (no ``train.yaml``), e.g.
    ``myconf/data/mytree.yaml``: it is then added to Hydra's search path beside the package's configs instead of
    replacing them. None when the variable is unset or points at a whole copy of ``conf/``."""
    value = os.environ.get("PHYSICS_TF_CONFIG_DIR")
    if not value or (Path(value) / "train.yaml").is_file():
        return None
    path = Path(value).expanduser().resolve()
    if not path.is_dir():
        raise FileNotFoundError(f"PHYSICS_TF_CONFIG_DIR={value}: no such directory")
    return path
