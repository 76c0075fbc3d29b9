"""Console entry points (``physics-tf-train``, ``physics-tf-evaluate``, ``physics-tf-generate``).

Each wraps a Hydra main over the configs found by :func:`physics_tf.config.config_dir`, so the same command
line works from a checkout (``python pipelines/train.py ...``) and from an installed package.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

import hydra
from omegaconf import DictConfig

from physics_tf.training.resolvers import register_resolvers
from physics_tf.training.validate import validate_config
from physics_tf.config import config_dir, user_config_dir

register_resolvers()  # before Hydra composes; also when a submitit job unpickles the task function


# Errors that are the user's input, not a bug: one line on stderr, exit status 2. Matched by name, so that a
# config error found before training imports nothing heavy (Lightning alone takes seconds to import).
INPUT_ERRORS = frozenset({
    "builtins.FileNotFoundError",
    "physics_tf.data.errors.DataError",
    "physics_tf.training.checkpoints.CheckpointError",
    "physics_tf.training.run.OutputDirError",
    "physics_tf.training.cluster.DeviceError",
    "physics_tf.training.cluster.LaunchError",
    "physics_tf.training.validate.ConfigValueError",
    "lightning.fabric.utilities.exceptions.MisconfigurationException",
    "hydra.errors.HydraException",
    "omegaconf.errors.OmegaConfBaseException",
})


def is_input_error(err: BaseException) -> bool:
    return any(f"{cls.__module__}.{cls.__qualname__}" in INPUT_ERRORS for cls in type(err).__mro__)


def one_line(err: BaseException) -> str:
    """An error (and the config error that caused it) as one line.

    Errors from DataLoader workers arrive with the worker's traceback: only its last line is kept. Hydra's
    composition errors span several lines (the failing override, a hint, the available options): joined.
    """
    cause = err.__cause__
    if type(err).__name__ == "InstantiationException" and cause is not None and any(
            f"{c.__module__}.{c.__qualname__}" == "physics_tf.data.errors.DataError" for c in type(cause).__mro__):
        return one_line(cause)  # a bad file or value found while building an object: its own line, not Hydra's wrapper
    text = str(err).strip()
    if "Traceback (most recent call last)" in text:
        text = text.splitlines()[-1].split("Error: ", 1)[-1]
    parts = [text] if text else [type(err).__name__]
    cause = err.__cause__
    if cause is not None and str(cause).strip() and str(cause).strip() not in text:
        parts.append(str(cause).strip())
    out: list[str] = []
    for part in parts:
        for raw in part.split("\nConfig search path")[0].splitlines():
            line = raw.strip()
            if not line or line.startswith(("object_type=", "Set the environment variable HYDRA_FULL")):
                continue
            if raw.startswith("\t") and out:  # Hydra's indented list of available options
                out[-1] += (" " if out[-1].endswith(":") else ", ") + line
            else:
                out.append(line.rstrip("."))
    return "; ".join(out)


_PEER_SIGNS = ("Connection reset by peer", "Connection closed by peer", "Broken pipe", "timed out", "Timed out",
               "Socket Timeout", "Application timeout", "NCCL", "gloo", "ProcessGroup", "store", "TCPStore")


def peer_failure(err: BaseException) -> str | None:
    """One line for a distributed run that failed because another rank died or hung; None for other errors."""
    import torch.distributed as dist

    is_dist_error = isinstance(err, getattr(dist, "DistError", ()))
    text = str(err).strip()
    if not (is_dist_error or any(sign in text for sign in _PEER_SIGNS)):
        return None
    if not (dist.is_available() and dist.is_initialized()) and not is_dist_error:
        return None
    rank = dist.get_rank() if dist.is_initialized() else os.environ.get("RANK", "?")
    first = (text.splitlines() or [type(err).__name__])[0]
    first = first.split("] ", 1)[-1] if first.startswith("[") else first
    if "timeout" in first.lower() and "timed out" not in first.lower():  # gloo: "Application timeout caused pair closure"
        first = f"Timed out: {first}"
    return (f"rank {rank}: another DDP process failed or stopped responding, so this one stops too ({first[:300]}); "
            "the failing rank's own error is in its log above")


def hydra_entry(config_name: str, fn: Callable[[DictConfig], Any]) -> Callable[[], Any]:
    """A no-argument callable that runs ``fn`` under ``@hydra.main`` with ``config_name``.

    Bad input — unreadable data (:class:`physics_tf.data.errors.DataError`), a missing or foreign checkpoint, an
    unwritable run directory, devices this machine lacks, an unknown config group option or key — ends the program
    with one line on stderr (``physics_tf: error: ...``) and exit status 2 instead of a traceback.
    """

    def task(cfg: DictConfig) -> Any:
        try:
            return fn(cfg)
        except Exception as err:
            if is_input_error(err):
                print(f"physics_tf: error: {one_line(err)}", file=sys.stderr, flush=True)
                raise SystemExit(2) from None
            peer = peer_failure(err) if isinstance(err, RuntimeError) else None
            if peer is None:
                raise
            print(f"physics_tf: error: {peer}", file=sys.stderr, flush=True)
            raise SystemExit(1) from None

    def main() -> Any:
        # Hydra prints composition errors over several lines unless HYDRA_FULL_ERROR is set, in which case it raises
        # them: catch them here and print one line (a user who set HYDRA_FULL_ERROR gets Hydra's full trace).
        full_error_wanted = os.environ.get("HYDRA_FULL_ERROR") == "1"
        os.environ["HYDRA_FULL_ERROR"] = "1"
        try:
            user_dir = user_config_dir()
            if user_dir is not None and not any(a.startswith("hydra.searchpath") for a in sys.argv[1:]):
                sys.argv.append(f"hydra.searchpath=[file://{user_dir}]")  # the user's configs beside the package's
            wrapped = hydra.main(version_base="1.3", config_path=str(config_dir()), config_name=config_name)(task)
            return wrapped()
        except Exception as err:
            input_error = is_input_error(err)  # (Hydra's MissingConfigException is an OSError too)
            unwritable = isinstance(err, OSError) and getattr(err, "filename", None)
            if full_error_wanted or not (input_error or unwritable):
                raise
            message = one_line(err)
            if not input_error:
                # Hydra creating or writing the run directory
                message = (f"cannot create or write {err.filename}: {err.strerror}; set hydra.run.dir (or "
                           "paths.log_dir) to a writable directory")
            print(f"physics_tf: error: {message}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None

    main.__name__ = config_name
    return main


def _train(cfg: DictConfig) -> None:
    validate_config(cfg)  # a bad number fails in a second, before Lightning and the data are loaded
    from physics_tf.training.run import run_train

    run_train(cfg)


def _evaluate(cfg: DictConfig) -> None:
    validate_config(cfg)
    from physics_tf.training.run import run_evaluate

    run_evaluate(cfg)


def _generate(cfg: DictConfig) -> None:
    """Runs the generator named by ``gen._target_`` (a dotted path to a ``run_generate(cfg)`` function, set by the
    chosen ``conf/gen/*.yaml``; the generators live in the analysis packages, which the core does not import)."""
    import importlib

    from hydra.errors import InstantiationException

    target = str(cfg.gen._target_)
    module, _, name = target.rpartition(".")
    try:
        run = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as err:  # a typo in the config: one line, not a traceback
        raise InstantiationException(f"gen._target_: cannot import {target!r}: {err}") from None
    run(cfg)


def _export(cfg: DictConfig) -> None:
    from physics_tf.training.export import run_export

    run_export(cfg)


train = hydra_entry("train", _train)
evaluate = hydra_entry("evaluate", _evaluate)
generate = hydra_entry("generate", _generate)
export = hydra_entry("export", _export)


def _predict(cfg: DictConfig) -> None:
    from physics_tf.training.predict import run_predict

    run_predict(cfg)


def _explain(cfg: DictConfig) -> None:
    from physics_tf.training.explain import run_explain

    run_explain(cfg)


predict = hydra_entry("predict", _predict)
explain = hydra_entry("explain", _explain)

if __name__ == "__main__":  # pragma: no cover
    sys.exit(train())
