"""The installed package must carry every sub-package and its Hydra configs, and build without warnings."""

import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

from physics_tf.config import config_dir

ROOT = Path(__file__).resolve().parents[1]


def _listed() -> set[str]:
    return set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])


def test_pyproject_lists_every_subpackage():
    listed = _listed()
    on_disk = {
        ".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "physics_tf").rglob("__init__.py")
    }
    assert on_disk <= listed, f"add to pyproject [tool.setuptools] packages: {sorted(on_disk - listed)}"
    assert "physics_tf._conf" in listed


def test_pyproject_lists_every_config_directory():
    """setuptools warns about every conf/ sub-directory that holds data but is not a listed package."""
    conf_dirs = {".".join(("physics_tf._conf", *p.relative_to(ROOT / "conf").parts))
                 for p in (ROOT / "conf").rglob("*") if p.is_dir() and any(p.glob("*.yaml"))}
    missing = conf_dirs - _listed()
    assert not missing, f"add to pyproject [tool.setuptools] packages: {sorted(missing)}"


def test_wheel_builds_quietly_and_ships_every_config(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.orig")
    for name in ("physics_tf", "conf"):
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                           "-w", str(tmp_path / "dist"), str(src)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    output = proc.stdout + proc.stderr
    assert "Warning" not in output and "absent from the `packages`" not in output, output
    (wheel,) = (tmp_path / "dist").glob("physics_tf-*.whl")
    shipped = {n for n in zipfile.ZipFile(wheel).namelist() if n.startswith("physics_tf/_conf/")}
    expected = {"physics_tf/_conf/" + p.relative_to(ROOT / "conf").as_posix() for p in (ROOT / "conf").rglob("*.yaml")}
    assert expected == shipped, sorted(expected ^ shipped)


def test_config_dir_found(monkeypatch, tmp_path):
    assert (config_dir() / "train.yaml").is_file()
    (tmp_path / "train.yaml").write_text("{}")
    monkeypatch.setenv("PHYSICS_TF_CONFIG_DIR", str(tmp_path))
    assert config_dir() == tmp_path.resolve()
