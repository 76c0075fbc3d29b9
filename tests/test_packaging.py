"""The installed package must carry every sub-package and find its Hydra configs."""

import tomllib
from pathlib import Path

from physics_tf.config import config_dir

ROOT = Path(__file__).resolve().parents[1]


def test_pyproject_lists_every_subpackage():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    on_disk = {
        ".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "physics_tf").rglob("__init__.py")
    }
    assert on_disk <= listed, f"add to pyproject [tool.setuptools] packages: {sorted(on_disk - listed)}"
    assert "physics_tf._conf" in listed


def test_config_dir_found(monkeypatch, tmp_path):
    assert (config_dir() / "train.yaml").is_file()
    (tmp_path / "train.yaml").write_text("{}")
    monkeypatch.setenv("PHYSICS_TF_CONFIG_DIR", str(tmp_path))
    assert config_dir() == tmp_path.resolve()
