"""Side-by-side comparison of runs: their configs (the keys that differ, plus chosen ones) and their metrics.

Runs come from local run directories (``config.yaml`` + ``metrics.json``, as every training run writes them) or,
online, from the W&B API. ``python pipelines/compare.py --help`` lists the options; :func:`main` is the entry.

Local input: a run directory, a glob (quoted or expanded by the shell), or any directory holding run directories
(a Hydra multirun directory ``multirun_*/`` with its job folders ``0/``, ``1/``, …, or ``logs/train/<experiment>/``).
Besides ``metrics.json`` a local run contributes ``best/<monitor>`` (the W&B summary's key): the best value of the
metric its checkpoint callback monitored, whichever logger the run used: from the CSV log (``csv/metrics.csv``),
else the callback's ``best_model_score`` in ``checkpoints/last.ckpt`` (or the newest ``checkpoints/*.ckpt``); an
offline ``logger=wandb`` run keeps its summary only in W&B's binary log. The terminal table fits the console
(:mod:`physics_tf.training.compare_tables` gives the rule); ``--csv`` and ``--markdown`` hold the full values.
"""

from __future__ import annotations

import argparse
import csv
import fnmatch
import glob
import json
import math
import os
import re
import sys
import textwrap
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from physics_tf.training.compare_tables import LAYOUT_RULE, print_rich, to_csv, to_markdown
from physics_tf.training.reporting import flatten, scalar_metrics
from physics_tf.training.resolvers import peek_checkpoint

__all__ = ["Run", "CompareError", "find_run_dirs", "load_local_run", "load_wandb_runs", "comparison", "main",
           "to_csv", "to_markdown"]

# config keys that differ between any two runs without saying anything about them (paths of the run itself)
DEFAULT_IGNORE = ("paths.*", "*.dirpath", "*.save_dir", "*.default_root_dir", "*.output_dir")
SKIP_DIRS = {".hydra", "wandb", "checkpoints", "csv", ".submitit"}


class CompareError(Exception):
    """Bad input; the message is one line naming the file or option."""


@dataclass
class Run:
    label: str
    source: str  # run directory or W&B URL
    config: dict[str, Any]  # flat dotted keys
    metrics: dict[str, Any]  # flat dotted keys, scalars
    info: dict[str, str] = field(default_factory=dict)  # e.g. Hydra overrides, W&B group


# ----------------------------------------------------------------------------- local run directories
def _natural(path: Path) -> tuple[list[Any], str]:
    """Sort key: job 10 after job 9; the text itself breaks ties ("0.01" vs "0.001")."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(path))], str(path)


def _is_run_dir(path: Path) -> bool:
    return (path / "config.yaml").is_file() or (path / "metrics.json").is_file()


def find_run_dirs(inputs: Sequence[str | os.PathLike]) -> list[Path]:
    """Run directories named by ``inputs`` (directories, globs, or parents of run directories), in order."""
    found: list[Path] = []
    for item in inputs:
        text = str(item)
        if glob.has_magic(text):  # a quoted glob: its directories (a multirun dir also holds multirun.yaml)
            matches = sorted((Path(p) for p in glob.glob(text) if Path(p).is_dir()), key=_natural)
            if not matches:
                raise CompareError(f"{text}: no directory matches")
        else:
            matches = [Path(text)]
        for path in matches:
            if not path.exists():
                raise CompareError(f"{path}: no such directory")
            if not path.is_dir():
                raise CompareError(f"{path}: not a directory (give a run directory holding config.yaml and metrics.json)")
            if _is_run_dir(path):
                found.append(path)
                continue
            inner = sorted({p.parent for p in path.rglob("*") if p.name in ("config.yaml", "metrics.json")
                            and not SKIP_DIRS & set(p.relative_to(path).parts[:-1])}, key=_natural)
            if not inner:
                raise CompareError(f"{path}: not a run directory (no config.yaml or metrics.json) and holds none")
            found.extend(inner)
    unique = list(dict.fromkeys(p.resolve() for p in found))
    return unique


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CompareError(f"{path}: invalid JSON at line {err.lineno} column {err.colno}: {err.msg}") from None
    if not isinstance(data, dict):
        raise CompareError(f"{path}: expected a JSON object of metrics, got {type(data).__name__}")
    return data


def _read_yaml(path: Path) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise CompareError(f"{path}: invalid YAML{where}: {getattr(err, 'problem', err)}") from None
    if not isinstance(data, dict):
        raise CompareError(f"{path}: expected a mapping of config keys, got {type(data).__name__}")
    return data


def _best_from_csv(run_dir: Path, monitors: Mapping[str, str]) -> dict[str, float]:
    """``{"best/<monitor>": value}`` from the CSV log, by each monitor's mode (``monitors``: monitor → mode)."""
    path = run_dir / "csv" / "metrics.csv"
    if not path.is_file():
        return {}
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    out = {}
    for monitor, mode in monitors.items():
        values = [float(r[monitor]) for r in rows if r.get(monitor) not in (None, "")]
        values = [v for v in values if not math.isnan(v)]
        if values:
            out[f"best/{monitor}"] = max(values) if mode == "max" else min(values)
    return out


def _best_from_checkpoint(run_dir: Path) -> dict[str, float]:
    """``{"best/<monitor>": best_model_score}`` of the checkpoint callbacks, from ``checkpoints/last.ckpt`` (else the
    newest ``*.ckpt``): only their state is read (memory-mapped, no network built as by ``load_checkpoint``)."""
    found = [p for p in run_dir.glob("checkpoints/*.ckpt") if p.is_file() and not p.name.startswith(".")]
    if not found:
        return {}
    path = max(found, key=lambda p: (p.name == "last.ckpt", p.stat().st_mtime))
    try:
        states = dict(peek_checkpoint(path)["callbacks"])
    except Exception as err:  # noqa: BLE001 - truncated, not a zip checkpoint, no callbacks: no best score
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        print(f"physics_tf: warning: {path}: cannot read the best scores ({first})", file=sys.stderr)
        return {}
    scores = {s["monitor"]: s["best_model_score"] for s in states.values() if isinstance(s, dict)
              and s.get("monitor") and s.get("best_model_score") is not None}
    return {f"best/{k}": float(v) for k, v in scores.items() if not math.isnan(float(v))}


def _best_scores(run_dir: Path, config: Mapping[str, Any]) -> dict[str, float]:
    """``best/<monitor>`` of every checkpoint callback with a monitor: from the CSV log, else the checkpoint."""
    monitors = {value: config.get(name[: -len("monitor")] + "mode", "min") for name, value in config.items()
                if name.startswith("callbacks.") and name.endswith(".monitor") and value}
    out = _best_from_csv(run_dir, monitors)
    if monitors and not all(f"best/{m}" in out for m in monitors):
        out = {**_best_from_checkpoint(run_dir), **out}
    return out


def _yaml_field(path: Path, *keys: str) -> Any:
    """``keys`` looked up in an optional YAML file of Hydra's (``.hydra/*.yaml``); None when absent or unreadable."""
    import yaml

    try:
        value = yaml.safe_load(path.read_text()) if path.is_file() else None
    except yaml.YAMLError:
        return None
    for key in keys:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def load_local_run(run_dir: str | os.PathLike) -> Run:
    """A run from its directory: flat ``config.yaml``, scalars of ``metrics.json`` (+ ``best/<monitor>``)."""
    path = Path(run_dir)
    missing = [name for name in ("config.yaml", "metrics.json") if not (path / name).is_file()]
    if missing:
        hint = " (did the test stage run? train with test=true, or evaluate the checkpoint)" if missing == [
            "metrics.json"] else ""
        raise CompareError(f"{path}: not a complete run directory, missing {' and '.join(missing)}{hint}")
    config = flatten(_read_yaml(path / "config.yaml"))
    metrics = {**scalar_metrics(_read_json(path / "metrics.json")), **_best_scores(path, config)}
    info = {}
    overrides = _yaml_field(path / ".hydra" / "overrides.yaml")
    if isinstance(overrides, list):
        info["overrides"] = " ".join(str(o) for o in overrides)
    model = _yaml_field(path / ".hydra" / "hydra.yaml", "hydra", "runtime", "choices", "model")
    if model is None and isinstance(config.get("model._target_"), str):
        model = config["model._target_"].rsplit(".", 1)[-1]
    parts = [str(config[k]) for k in ("experiment_name",) if k in config] + ([model] if model else []) + (
        [str(config["seed"])] if "seed" in config else [])
    return Run(label="-".join(parts) or path.name, source=str(path), config=config, metrics=metrics, info=info)


# ----------------------------------------------------------------------------- W&B
def load_wandb_runs(project: str, group: str | None = None, names: Sequence[str] = (), tags: Sequence[str] = (),
                    api: Any = None) -> list[Run]:
    """Runs of ``entity/project`` (optionally one group, some run names, tags) from the W&B API.

    Metrics are the summary's ``test/*`` values (without the prefix, as in ``metrics.json``) and ``best/*``.
    """
    if not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", project):
        raise CompareError(f"--wandb {project!r}: expected entity/project (or project)")
    if api is None:
        mode = os.environ.get("WANDB_MODE", "")
        if mode in ("offline", "disabled", "dryrun"):
            raise CompareError(f"--wandb needs the W&B server but WANDB_MODE={mode}; unset it, or compare the local "
                               "run directories (offline runs can be uploaded first with `wandb sync`)")
        try:
            import wandb

            api = wandb.Api(timeout=30)
        except Exception as err:  # no API key: wandb.errors.UsageError
            raise CompareError(f"W&B API: {str(err).strip().splitlines()[0]} (or set WANDB_API_KEY)") from None
    filters: list[dict[str, Any]] = []
    if group:
        filters.append({"group": group})
    if names:
        filters.append({"display_name": {"$in": list(names)}})
    if tags:
        filters.append({"tags": {"$in": list(tags)}})
    query = {"$and": filters} if len(filters) > 1 else (filters[0] if filters else {})
    try:
        found = list(api.runs(project, filters=query))
    except Exception as err:  # network, unknown project, permissions
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CompareError(f"W&B API: cannot list the runs of {project}: {first}") from None
    if not found:
        what = ", ".join(f"{k}={v}" for k, v in (("group", group), ("names", list(names)), ("tags", list(tags))) if v)
        raise CompareError(f"W&B: no runs in {project}" + (f" with {what}" if what else ""))
    runs = []
    for run in found:
        config = flatten({k: v for k, v in dict(run.config).items() if not k.startswith("_")})
        summary = scalar_metrics({k: v for k, v in dict(run.summary_metrics).items() if not k.startswith("_")})
        metrics = {k[len("test/"):]: v for k, v in summary.items() if k.startswith("test/")}
        metrics.update({k: v for k, v in summary.items() if k.startswith("best/")})
        runs.append(Run(label=run.name, source=run.url, config=config, metrics=metrics,
                        info={"group": str(run.group or ""), "state": str(run.state)}))
    return runs


# ----------------------------------------------------------------------------- the comparison
def _same(values: list[Any]) -> bool:
    first = json.dumps(values[0], sort_keys=True, default=str)
    return all(json.dumps(v, sort_keys=True, default=str) == first for v in values[1:])


def _matches(key: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(key, p) for p in patterns)


def _unique_labels(runs: list[Run]) -> list[str]:
    labels = [r.label for r in runs]
    counts = {label: labels.count(label) for label in labels}
    seen: dict[str, int] = {}
    out = []
    for label in labels:
        if counts[label] > 1:
            seen[label] = seen.get(label, 0) + 1
            label = f"{label} #{seen[label]}"
        out.append(label)
    return out


def comparison(runs: list[Run], keys: Sequence[str] = (), metrics: Sequence[str] = ("*",),
               ignore: Sequence[str] = DEFAULT_IGNORE, all_config: bool = False, sort: str | None = None,
               ascending: bool = False) -> tuple[list[str], list[tuple[str, str, list[Any]]]]:
    """``(run labels, rows)``: each row is ``(section, key, [value per run])``, section ``run``, ``config`` or
    ``metric``; a run without the key has ``None`` there (printed as ``—``).

    Config rows: the keys whose values differ between the runs (minus ``ignore`` patterns) plus the keys matching
    ``keys`` (fnmatch patterns), or every key with ``all_config``. Metric rows: keys matching ``metrics``.
    ``sort``: order the runs by that metric (descending unless ``ascending``; runs without it last).
    :mod:`physics_tf.training.compare_tables` writes the result as CSV, Markdown or a terminal table.
    """
    if not runs:
        raise CompareError("no runs to compare")
    labels = _unique_labels(runs)  # before sorting, so a run keeps its label
    if sort is not None:
        if not any(sort in r.metrics for r in runs):
            have = sorted({k for r in runs for k in r.metrics})
            raise CompareError(f"--sort {sort!r}: no run has this metric (have: {', '.join(have)})")

        def order(pair: tuple[str, Run]) -> tuple[int, float]:
            value = pair[1].metrics.get(sort)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or math.isnan(value):
                return (1, 0.0)
            return (0, value if ascending else -value)

        labels, runs = map(list, zip(*sorted(zip(labels, runs), key=order)))
    rows: list[tuple[str, str, list[Any]]] = [("run", "source", [r.source for r in runs])]
    for name in sorted({k for r in runs for k in r.info}):
        rows.append(("run", name, [r.info.get(name) for r in runs]))
    config_keys = list(dict.fromkeys(k for r in runs for k in r.config))
    for key in config_keys:
        values = [r.config.get(key) for r in runs]
        present = [key in r.config for r in runs]
        differs = not all(present) or not _same(values)
        chosen = _matches(key, keys)
        if all_config or chosen or (differs and not _matches(key, ignore)):
            rows.append(("config", key, [v if p else None for v, p in zip(values, present)]))
    for pattern in keys:
        if not any(_matches(k, [pattern]) for k in config_keys):
            raise CompareError(f"--keys {pattern!r}: no config key matches (e.g. {', '.join(config_keys[:5])})")
    metric_keys = sorted({k for r in runs for k in r.metrics if _matches(k, metrics)},
                         key=lambda k: (k.startswith("best/"), k))
    if list(metrics) != ["*"] and not metric_keys:
        have = sorted({k for r in runs for k in r.metrics})
        raise CompareError(f"--metrics {' '.join(metrics)}: no metric matches (have: {', '.join(have)})")
    for key in metric_keys:
        rows.append(("metric", key, [r.metrics.get(key) for r in runs]))
    return labels, rows


def _write(path: str, text: str) -> None:
    if path == "-":
        sys.stdout.write(text)
        return
    from physics_tf.data.atomic import atomic_path

    try:
        with atomic_path(path) as tmp:
            tmp.write_text(text)
    except OSError as err:
        raise CompareError(f"{path}: cannot write ({err.strerror or err})") from None


# ----------------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="compare.py",
        description="Compare runs side by side: the config keys that differ (plus chosen ones) and the metrics.",
        epilog="examples:\n"
               "  compare.py logs/train/jets_part/multirun_2026-01-01_12-00-00\n"
               "  compare.py 'logs/train/jets_*/2026-*' --keys model._target_ 'task.lr' --metrics 'auc*' 'rej*'\n"
               "  compare.py logs/train/jets_pfn --sort auc_macro --markdown runs.md --csv runs.csv\n"
               "  compare.py --wandb my-team/physics_tf --group jets_part --metrics accuracy auc_macro best/val/auc\n\n"
               + textwrap.fill("layout: " + LAYOUT_RULE, 100),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="*", help="run directories, globs, or directories holding runs (multirun dirs)")
    parser.add_argument("--wandb", metavar="ENTITY/PROJECT", help="read the runs from the W&B API instead")
    parser.add_argument("--group", help="with --wandb: only this group (the experiment name)")
    parser.add_argument("--name", nargs="+", default=[], metavar="NAME", help="with --wandb: only these run names")
    parser.add_argument("--tag", nargs="+", default=[], metavar="TAG", help="with --wandb: runs with any of these tags")
    parser.add_argument("--keys", nargs="+", default=[], metavar="PATTERN",
                        help="config keys to show even where all runs agree (fnmatch patterns, e.g. 'model.*')")
    parser.add_argument("--metrics", nargs="+", default=["*"], metavar="PATTERN",
                        help="metrics to show (fnmatch patterns; default: all; best/<monitor>: from any logger)")
    parser.add_argument("--ignore", nargs="+", default=[], metavar="PATTERN",
                        help=f"config keys never shown as differences, added to {' '.join(DEFAULT_IGNORE)}")
    parser.add_argument("--all-config", action="store_true", help="show every config key")
    parser.add_argument("--sort", metavar="METRIC", help="order the runs by this metric (best, i.e. largest, first)")
    parser.add_argument("--ascending", action="store_true", help="with --sort: smallest first (losses, resolutions)")
    parser.add_argument("--runs-as-rows", action="store_true", help="one row per run (automatic where it fits better)")
    parser.add_argument("--csv", metavar="PATH", help="also write the table as CSV (- for stdout)")
    parser.add_argument("--markdown", metavar="PATH", help="also write the table as Markdown (- for stdout)")
    parser.add_argument("--quiet", action="store_true", help="do not print the table")
    parser.add_argument("--skip-incomplete", action="store_true",
                        help="skip run directories without metrics.json (e.g. a failed job of a sweep) with a warning")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.wandb and args.runs:
            raise CompareError("give run directories or --wandb ENTITY/PROJECT, not both")
        if not args.wandb and not args.runs:
            raise CompareError("no runs given: name run directories (or a multirun directory), or --wandb")
        if args.wandb:
            runs = load_wandb_runs(args.wandb, args.group, args.name, args.tag)
        else:
            if args.group or args.name or args.tag:
                raise CompareError("--group/--name/--tag select W&B runs; use them with --wandb")
            runs = []
            for run_dir in find_run_dirs(args.runs):
                try:
                    runs.append(load_local_run(run_dir))
                except CompareError as err:
                    if not (args.skip_incomplete and "missing" in str(err)):
                        raise
                    print(f"physics_tf: warning: skipped {err}", file=sys.stderr)
        labels, rows = comparison(runs, keys=args.keys, metrics=args.metrics,
                                  ignore=[*DEFAULT_IGNORE, *args.ignore], all_config=args.all_config,
                                  sort=args.sort, ascending=args.ascending)
        if not args.quiet:
            print_rich(labels, rows, args.runs_as_rows)
        if args.csv:
            _write(args.csv, to_csv(labels, rows, args.runs_as_rows))
        if args.markdown:
            _write(args.markdown, to_markdown(labels, rows, args.runs_as_rows))
    except CompareError as err:
        print(f"physics_tf: error: {err}", file=sys.stderr)
        return 2
    return 0
