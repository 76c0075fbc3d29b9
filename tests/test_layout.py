"""The package layout's house rules, read from the source (``ast``), and the README's module names exist.

- the core (nn, data, tasks, training, cli, config) never imports a wing (jets, auger, lightcurves), not even inside
  a function; it reaches a wing through Hydra ``_target_`` strings or hooks of objects the wing built;
- a wing never imports another wing;
- a model module never imports a reader / data module of a wing (constants both need live in a schema module);
- a module stays under :data:`MAX_LINES` lines unless the first paragraph of its docstring says why
  (:data:`LONG_MARKER`);
- every ``physics_tf/...`` path and ``physics_tf.x.y`` dotted name in README.md exists.

Each checker takes the package directory, so the tests at the bottom plant violations in a fake tree.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "physics_tf"
WINGS = {"jets", "auger", "lightcurves"}
CORE = {"nn", "data", "tasks", "training", "cli", "config"}
MODEL_MODULES = {"jets.part", "jets.pfn", "jets.pcnn", "jets.particlenet", "jets.lorentznet", "lightcurves.patching", "jets.pairwise", "auger.transformer", "auger.hexconv", "auger.geometry",
                 "lightcurves.transformer", "lightcurves.gru"}
# reader / data modules (and packages) of the wings, which no model module may import
DATA_MODULES = {"jets.readers", "jets.writers", "jets.dataset", "jets.data", "jets.features", "jets.generate",
                "jets.jetgen", "auger.data", "auger.io", "auger.simulate", "lightcurves.io", "lightcurves.hdf5", "lightcurves.data",
                "lightcurves.simulate"}
MAX_LINES = 400
LONG_MARKER = "Longer than 400 lines because"


# ----------------------------------------------------------------------------------------------- the checkers
def modules(package_dir: Path) -> dict[str, Path]:
    """``{"jets.part": path, "jets": path of jets/__init__.py, "": the package's __init__.py, ...}``."""
    out = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = list(path.relative_to(package_dir).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imported_modules(path: Path, module: str, is_package: bool) -> list[tuple[int, list[str]]]:
    """``(line, dotted names)`` of each import statement of a module, anywhere in it (function bodies included):
    ``import a.b``, ``from a import b`` (both ``a`` and ``a.b``: ``b`` may be a module), relative imports resolved,
    and ``importlib.import_module("...")`` / ``__import__("...")`` with a literal name."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = [PACKAGE, *module.split(".")] if module else [PACKAGE]
    if not is_package:
        package = package[:-1]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.append((node.lineno, [alias.name for alias in node.names]))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # from . import x: relative to the module's package (level 2: its parent, ...)
                base = ".".join([*package[:len(package) - node.level + 1], *([base] if base else [])])
            found.append((node.lineno, [base, *(f"{base}.{a.name}" for a in node.names if a.name != "*")]))
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            func = node.func
            if (func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")) in ("import_module",
                                                                                             "__import__"):
                found.append((node.lineno, [node.args[0].value]))
    return found


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def import_violations(package_dir: Path) -> list[str]:
    """One line per import statement and broken rule (core / wing / model)."""
    out = []
    for module, path in modules(package_dir).items():
        top = module.split(".")[0]
        for line, names in imported_modules(path, module, path.name == "__init__.py"):
            targets = [n[len(PACKAGE) + 1:] for n in names if n.startswith(PACKAGE + ".")]
            wings = {t.split(".")[0] for t in targets} & WINGS
            where = f"{path.relative_to(package_dir.parent)}:{line} imports {names[-1]}"
            if wings and top in CORE:
                out.append(f"{where}: the core never imports a wing")
            elif wings - {top} and top in WINGS:
                out.append(f"{where}: a wing never imports another wing")
            if module in MODEL_MODULES and any(_within(t, d) for t in targets for d in DATA_MODULES):
                out.append(f"{where}: a model module never imports a reader/data module")
    return out


def length_violations(package_dir: Path) -> list[str]:
    """Modules over MAX_LINES lines whose docstring's first paragraph does not say why."""
    out = []
    for path in modules(package_dir).values():
        text = path.read_text()
        n = len(text.splitlines())
        if n <= MAX_LINES:
            continue
        doc = ast.get_docstring(ast.parse(text)) or ""
        first = doc.split("\n\n")[0]
        if LONG_MARKER not in " ".join(first.split()):
            out.append(f"{path.relative_to(package_dir.parent)}: {n} lines; split it, or say "
                       f"'{LONG_MARKER} ...' in the first paragraph of its docstring")
    return out


def _defines(tree: ast.AST, name: str) -> ast.AST | None:
    """The top-level statement of ``tree`` (a module or class body) that binds ``name``, if any."""
    for node in getattr(tree, "body", []):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name == name:
            return node
        targets = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, (ast.AnnAssign, ast.AugAssign)):
            targets = [node.target]
        if any(isinstance(t, ast.Name) and t.id == name for t in targets):
            return node
        if isinstance(node, (ast.Import, ast.ImportFrom)) and any((a.asname or a.name.split(".")[0]) == name
                                                                  for a in node.names):
            return node
    return None


def dotted_name_exists(name: str, package_dir: Path) -> bool:
    """``physics_tf.a.b.C.d``: the longest prefix that is a module file or package, the rest bound inside it."""
    parts = name.split(".")[1:]
    for cut in range(len(parts), -1, -1):
        base = package_dir.joinpath(*parts[:cut])
        path = base / "__init__.py"
        if cut and base.with_suffix(".py").is_file():
            path = base.with_suffix(".py")
        if not path.is_file():
            continue
        node: ast.AST | None = ast.parse(path.read_text())
        for attr in parts[cut:]:
            node = _defines(node, attr) if isinstance(node, (ast.Module, ast.ClassDef)) else None
            if node is None:
                return False
        return True
    return False


PATH_RE = re.compile(r"(?<![\w/.-])physics_tf/[\w/.-]*[\w/]")
NAME_RE = re.compile(r"(?<![\w./\"'])physics_tf(?:\.[A-Za-z_]\w*)+")  # not a "physics_tf.x" string key


def readme_violations(readme: Path, package_dir: Path) -> list[str]:
    """README paths ``physics_tf/...`` (files or directories) and dotted names ``physics_tf.x.y`` that do not exist."""
    text = readme.read_text()
    out = []
    for match in sorted(set(PATH_RE.findall(text))):
        if not (package_dir.parent / match).exists():
            out.append(f"{readme.name}: {match} does not exist")
    for match in sorted(set(NAME_RE.findall(text))):
        if not dotted_name_exists(match, package_dir):
            out.append(f"{readme.name}: {match} names no module or attribute")
    return out


# ----------------------------------------------------------------------------------------------- the package
def test_core_and_wings_import_by_the_rules():
    assert not import_violations(ROOT / PACKAGE), "\n".join(import_violations(ROOT / PACKAGE))


def test_modules_stay_short_or_say_why():
    assert not length_violations(ROOT / PACKAGE), "\n".join(length_violations(ROOT / PACKAGE))


def test_readme_names_only_existing_modules():
    found = readme_violations(ROOT / "README.md", ROOT / PACKAGE)
    assert not found, "\n".join(found)


def test_the_rules_know_every_package():
    """A new top-level package must be classed as core or wing (else the import rules would not see it)."""
    packages = {p.name for p in (ROOT / PACKAGE).iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    top_modules = {p.stem for p in (ROOT / PACKAGE).glob("*.py") if p.stem != "__init__"}
    assert packages | top_modules <= CORE | WINGS, sorted((packages | top_modules) - CORE - WINGS)
    known = modules(ROOT / PACKAGE)
    missing = [m for m in MODEL_MODULES if m not in known]
    assert not missing, f"model modules named in this test but absent: {missing}"


# ----------------------------------------------------------------------------------------------- planted violations
def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    """A fake physics_tf package: ``{"jets/part.py": source}``; every directory gets an __init__.py."""
    package = tmp_path / PACKAGE
    for rel, source in files.items():
        path = package / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        for parent in [path.parent, *path.parent.parents]:
            if parent == tmp_path:
                break
            (parent / "__init__.py").touch()
        path.write_text(source)
    return package


CLEAN = {
    "tasks/base.py": "import torch\nfrom physics_tf.nn.blocks import Block\n"
                     "TARGET = 'physics_tf.jets.task.JetTaggingTask'  # a _target_ string is fine\n",
    "nn/blocks.py": "class Block:\n    pass\n",
    "jets/part.py": "from physics_tf.nn.blocks import Block\nfrom physics_tf.jets.schema import N\n",
    "jets/schema.py": "N = 3\n",
    "jets/readers.py": "from physics_tf.jets.schema import N\nfrom physics_tf.data.errors import DataError\n",
}


def test_a_clean_tree_passes(tmp_path):
    assert import_violations(_tree(tmp_path, CLEAN)) == []


@pytest.mark.parametrize("rel,source,rule", [
    ("tasks/base.py", "def f():\n    from physics_tf.jets.part import ParT\n", "the core never imports a wing"),
    ("training/run.py", "import physics_tf.auger.data\n", "the core never imports a wing"),
    ("cli.py", "from physics_tf import lightcurves\n", "the core never imports a wing"),
    ("training/run.py", "import importlib\nm = importlib.import_module('physics_tf.jets.data')\n",
     "the core never imports a wing"),
    ("jets/part.py", "from physics_tf.auger.schema import C\n", "a wing never imports another wing"),
    ("jets/part.py", "from .readers import read\n", "a model module never imports a reader/data module"),
    ("auger/transformer.py", "from physics_tf.auger import data\n", "a model module never imports a reader/data"),
    ("lightcurves/gru.py", "def f():\n    import physics_tf.lightcurves.io\n", "a model module never imports"),
])
def test_each_import_rule_catches_a_planted_violation(rel, source, rule, tmp_path):
    found = import_violations(_tree(tmp_path, {**CLEAN, rel: source}))
    assert len(found) == 1 and rule in found[0] and rel in found[0], found


def test_relative_imports_resolve_from_the_module(tmp_path):
    package = _tree(tmp_path, {**CLEAN, "tasks/__init__.py": "from ..jets import part\n",
                               "jets/task.py": "from ..auger.schema import C\n"})
    found = import_violations(package)
    assert any("tasks/__init__.py" in f and "the core never imports a wing" in f for f in found), found
    assert any("jets/task.py" in f and "another wing" in f for f in found), found


def test_long_module_needs_its_reason_in_the_first_paragraph(tmp_path):
    body = "x = 1\n" * MAX_LINES
    package = _tree(tmp_path, {
        "nn/short.py": '"""Short."""\n' + "x = 1\n" * (MAX_LINES - 1),
        "nn/long.py": '"""Long.\n\nLonger than 400 lines because of nothing (second paragraph)."""\n' + body,
        "nn/said.py": f'"""One algorithm.\n{LONG_MARKER} the tokenizer\nand parser share state."""\n' + body,
    })
    found = length_violations(package)
    assert len(found) == 1 and "nn/long.py" in found[0], found


def test_readme_paths_and_dotted_names_are_checked(tmp_path):
    package = _tree(tmp_path, {**CLEAN, "jets/part.py": "class ParT:\n    def forward(self):\n        pass\n"
                                                        "LEGACY = {}\n"})
    readme = tmp_path / "README.md"
    readme.write_text(
        "See `physics_tf/jets/part.py`, the folder physics_tf/nn/, `physics_tf.jets.part.ParT.forward`,\n"
        "physics_tf.jets.part.LEGACY and physics_tf.nn. A key meta[\"physics_tf.task\"] is no module.\n"
        "Missing: physics_tf/jets/gone.py, physics_tf.jets.part.Gone, physics_tf.jets.part.ParT.gone, "
        "physics_tf.nowhere.\n")
    found = readme_violations(readme, package)
    assert sorted(found) == sorted([
        "README.md: physics_tf/jets/gone.py does not exist",
        "README.md: physics_tf.jets.part.Gone names no module or attribute",
        "README.md: physics_tf.jets.part.ParT.gone names no module or attribute",
        "README.md: physics_tf.nowhere names no module or attribute",
    ]), found


def test_console_entry_points_import_no_lightning():
    """A config error is reported before any heavy import: the console scripts' module (and the resolvers it
    registers) must not import Lightning or torch at import time (Lightning would also install its own log handler
    before Hydra configures logging, and its INFO lines would then bypass the run's log)."""
    import subprocess
    import sys

    code = "import sys, physics_tf.cli; print(sorted({m.split('.')[0] for m in sys.modules} & {'lightning', 'torch'}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]", f"importing physics_tf.cli imports {out}"
