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

from physics_tf.config import config_dir, project_root


def hydra_entry(config_name: str, fn: Callable[[DictConfig], Any]) -> Callable[[], Any]:
    """A no-argument callable that runs ``fn`` under ``@hydra.main`` with ``config_name``.

    Bad input (:class:`physics_tf.data.errors.DataError`, a missing checkpoint) ends the program with one line
    on stderr and exit status 2 instead of a traceback.
    """

    def task(cfg: DictConfig) -> Any:
        from physics_tf.data.errors import DataError

        try:
            return fn(cfg)
        except (DataError, FileNotFoundError) as err:
            # errors from DataLoader workers arrive with the worker's traceback: keep its last line
            lines = str(err).strip().splitlines() or [repr(err)]
            message = lines[-1].split("Error: ", 1)[-1] if len(lines) > 1 else lines[0]
            print(f"physics_tf: error: {message}", file=sys.stderr)
            raise SystemExit(2) from None

    def main() -> Any:
        os.environ.setdefault("PROJECT_ROOT", str(project_root()))
        wrapped = hydra.main(version_base="1.3", config_path=str(config_dir()), config_name=config_name)(task)
        return wrapped()

    main.__name__ = config_name
    return main


def _train(cfg: DictConfig) -> None:
    from physics_tf.training import run_train

    run_train(cfg)


def _evaluate(cfg: DictConfig) -> None:
    from physics_tf.training import run_evaluate

    run_evaluate(cfg)


DEFAULT_GENERATOR = "physics_tf.data.jetgen.run_generate"


def _generate(cfg: DictConfig) -> None:
    """Runs the generator named by ``gen.runner`` (a dotted path to a ``run(cfg)`` function; jets by default)."""
    from hydra.utils import get_method

    get_method(cfg.gen.get("runner", DEFAULT_GENERATOR))(cfg)


def _data_alias_to_gen(argv: list[str]) -> list[str]:
    """``generate.py data=NAME`` means ``gen=NAME``: generate the data set that data config NAME reads."""
    out = []
    for arg in argv:
        if arg.startswith("data=") and (config_dir() / "gen" / f"{arg[5:]}.yaml").is_file():
            arg = "gen=" + arg[5:]
        out.append(arg)
    return out


train = hydra_entry("train", _train)
evaluate = hydra_entry("evaluate", _evaluate)
_generate_main = hydra_entry("generate", _generate)


def generate() -> Any:
    sys.argv[1:] = _data_alias_to_gen(sys.argv[1:])
    return _generate_main()

if __name__ == "__main__":  # pragma: no cover
    sys.exit(train())


def _export(cfg: DictConfig) -> None:
    from physics_tf.export import run_export

    run_export(cfg)


export = hydra_entry("export", _export)
