"""A bad number in the config ends the run within seconds in one line naming the key and the value (exit status 2),
before Lightning, torch or any data is loaded; every shipped experiment passes the same checks."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from omegaconf import open_dict

import physics_tf.cli  # noqa: F401  (registers the resolvers the configs use)
from physics_tf.config import config_dir
from physics_tf.training.validate import ConfigValueError, validate_config

from test_pipelines import compose_train

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted(p.stem for p in (config_dir() / "experiment").glob("*.yaml"))


def _cli(script: str, args: list[str]) -> tuple[subprocess.CompletedProcess, float]:
    env = {**os.environ, "WANDB_MODE": "offline", "MPLBACKEND": "Agg"}
    env.pop("HYDRA_FULL_ERROR", None)
    start = time.monotonic()
    res = subprocess.run([sys.executable, f"pipelines/{script}.py", *args], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=120)
    return res, time.monotonic() - start


def _compose(config_name: str, overrides: list[str], output_dir: Path):
    return compose_train(overrides, output_dir, config_name=config_name)


BAD = [  # (experiment, override, the message's tail after "physics_tf: error: ")
    ("jets_pfn", "data.batch_size=-4", "data.batch_size must be a positive integer (got -4)"),
    ("jets_pfn", "data.batch_size=0", "data.batch_size must be a positive integer (got 0)"),
    ("lightcurves_gru", "data.batch_size=-4", "data.batch_size must be a positive integer (got -4)"),
    ("lightcurves_gru", "data.batch_size=0", "data.batch_size must be a positive integer (got 0)"),
    ("jets_pfn", "data.batch_size=8.5", "data.batch_size must be a positive integer (got 8.5)"),
    ("jets_pfn", "data.num_workers=-1", "data.num_workers must be an integer >= 0 (got -1)"),
    ("jets_pfn", "data.pad_length=0", "data.pad_length must be a positive integer (got 0)"),
    ("lightcurves_gru", "data.max_length=-3", "data.max_length must be a positive integer (got -3)"),
    ("jets_pfn", "data.chunk_size=0", "data.chunk_size must be a positive integer (got 0)"),
    ("auger_transformer", "data.chunk_events=0", "data.chunk_events must be a positive integer (got 0)"),
    ("jets_pfn", "data.shuffle_buffer=-5", "data.shuffle_buffer must be an integer >= 0 (got -5)"),
    ("lightcurves_gru", "data.val_fraction=1.5", "data.val_fraction must be a number in [0, 1] (got 1.5)"),
    ("lightcurves_gru", "data.truncate_prob=-0.1", "data.truncate_prob must be a number in [0, 1] (got -0.1)"),
    ("lightcurves_gru", "data.drop_prob=2", "data.drop_prob must be a number in [0, 1] (got 2)"),
    ("jets_pfn", "task.warmup_fraction=1.2", "task.warmup_fraction must be a number in [0, 1] (got 1.2)"),
    ("jets_pfn", "task.lr=fast", "task.lr must be a positive number (got 'fast')"),
    ("jets_pfn", "task.lr=-1", "task.lr must be a positive number (got -1)"),
    ("auger_hexconv", "task.lr=0", "task.lr must be a positive number (got 0)"),
    ("jets_pfn", "task.weight_decay=-0.01", "task.weight_decay must be a number >= 0 (got -0.01)"),
    ("jets_pfn", "task.betas=[0.9,1.0]", "task.betas must be two numbers in [0, 1) (got [0.9, 1.0])"),
    ("jets_pfn", "task.betas=[0.9]", "task.betas must be two numbers in [0, 1) (got [0.9])"),
    ("jets_pfn", "trainer.max_epochs=-2", "trainer.max_epochs must be null or an integer >= -1 (-1: no limit) (got -2)"),
    ("jets_pfn", "trainer.max_epochs=ten", "trainer.max_epochs must be null or an integer >= -1 (-1: no limit) "
                                           "(got 'ten')"),
    ("jets_pfn", "+trainer.max_steps=-7", "trainer.max_steps must be null or an integer >= -1 (-1: no limit) (got -7)"),
    ("jets_pfn", "trainer.devices=0", 'trainer.devices must be a positive integer, -1 (all), a list of device indices '
                                      'or "auto" (got 0)'),
    ("jets_pfn", "trainer.devices=many", "(got 'many')"),
    ("jets_pfn", "seed=abc", "seed must be an integer (got 'abc')"),
    ("jets_pfn", "seed=1.5", "seed must be an integer (got 1.5)"),
]


@pytest.mark.parametrize(("experiment", "override", "message"), BAD, ids=[f"{e}:{o}" for e, o, _ in BAD])
def test_bad_value_is_one_line_within_seconds(experiment, override, message, tmp_path):
    res, wall = _cli("train", [f"experiment={experiment}", f"hydra.run.dir={tmp_path}/run", override])
    assert res.returncode == 2, res.stderr[-2000:]
    assert "Traceback" not in res.stderr, res.stderr[-2000:]
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("physics_tf: error: ") and last.endswith(message), last
    assert wall < 10, wall  # about half a second; the traceback it replaces came after ~16 s of setup


def test_evaluate_checks_the_config_before_the_checkpoint(tmp_path):
    res, wall = _cli("evaluate", [f"ckpt_path={tmp_path}/absent.ckpt", "data=jets_demo", "data.batch_size=0",
                                  f"hydra.run.dir={tmp_path}/run"])
    assert res.returncode == 2, res.stderr[-2000:]
    assert res.stderr.strip().splitlines()[-1] == \
        "physics_tf: error: data.batch_size must be a positive integer (got 0)", res.stderr[-2000:]
    assert wall < 10, wall


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_passes(experiment, tmp_path):
    cfg = _compose("train", [f"experiment={experiment}"], tmp_path)
    validate_config(cfg)
    for valid in (["trainer.max_epochs=-1", "+trainer.max_steps=100", "trainer.devices=auto", "task.lr=3e-4"],
                  ["trainer.max_epochs=null", "trainer.devices=[0,1]", "task.betas=[0.0,0.98]", "seed=0"]):
        validate_config(_compose("train", [f"experiment={experiment}", *valid], tmp_path))
    with open_dict(cfg):
        cfg.data.batch_size = -4
    with pytest.raises(ConfigValueError, match=r"^data\.batch_size must be a positive integer \(got -4\)$"):
        validate_config(cfg)


def test_absent_and_unset_keys_are_not_checked(tmp_path):
    """The evaluate config has no data or task group and ckpt_path is ``???``: nothing to complain about."""
    cfg = _compose("evaluate", [], tmp_path)
    assert "data" not in cfg and "task" not in cfg
    validate_config(cfg)
    assert len(EXPERIMENTS) >= 8
