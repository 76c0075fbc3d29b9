"""The shell commands of README.md, as tests/test_readme.py runs them.

Every line of a fenced ``bash`` block of README.md is a command (lines ending in ``\\`` continue on the next line;
``#`` lines are comments). A command the tests cannot run carries a marker in its comment,
``(not run by the tests: <why>)``, or follows a comment line that carries it; a comment line heading a block marks
the whole block.

A command that runs gets tiny overrides appended (:func:`tiny_overrides`, in the x-transformers spirit: the same
command, smaller; every training's network made tiny by :func:`tiny_model`) and its placeholders filled in
(:func:`fill_placeholders`): ``<time>`` / ``<date>`` / ``<run>`` name the newest matching run directory written by an
earlier command, ``/data/...`` a user's files, which the test writes in the public releases' layouts.
"""

from __future__ import annotations

import glob
import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MARKER = re.compile(r"\(not run by the tests: ([^)]+)\)")
PIPELINES = {"train", "evaluate", "generate", "export", "compare", "predict", "explain"}

# sizes: a few batches of each split, every wing's data made small
TRAIN_TINY = ["trainer.max_epochs=1", "++trainer.limit_train_batches=2", "++trainer.limit_val_batches=1",
              "++trainer.num_sanity_val_steps=0", "data.batch_size=8"]
DATA_TINY = {"jets": ["data.shuffle_buffer=32"], "lightcurves": ["data.max_length=32"],
             "auger": ["data.chunk_events=16"]}
GEN_TINY = {"jets_demo": ["gen.n_train=24", "gen.n_val=12", "gen.n_test=12", "gen.n_workers=1", "gen.chunk_size=12",
                          "gen.progress=false"],
            "lightcurves_sim": ["gen.n_train=36", "gen.n_val=24", "gen.n_test=24", "gen.progress=false"],
            "auger_sim": ["gen.n_train=48", "gen.n_val=16", "gen.n_test=16", "gen.chunk=16", "gen.progress=false"]}
# network widths, by the network's class: every training (a sweep's points too, whichever models it sweeps over)
# builds its network this small; evaluate and export rebuild it from the checkpoint, so they read it small too
TINY_MODELS = {
    "physics_tf.jets.part.ParticleTransformer": {"embed_dims": [16, 16], "pair_embed_dims": [8], "num_heads": 2,
                                                 "num_layers": 1, "num_cls_layers": 1},
    "physics_tf.jets.pfn.ParticleFlowNetwork": {"phi_dims": [16, 16], "f_dims": [16]},
    "physics_tf.jets.pcnn.ParticleCNN": {"conv_params": [[8], [8], [16, 16]], "fc_dims": [16]},
    "physics_tf.jets.particlenet.ParticleNet": {"conv_params": [[4, [8, 8]], [4, [16]]], "fc_dims": [16]},
    "physics_tf.jets.lorentznet.LorentzNet": {"hidden": 8, "num_layers": 2},
    "physics_tf.lightcurves.transformer.LightCurveTransformer": {"dim": 16, "num_heads": 2, "num_layers": 1},
    "physics_tf.lightcurves.gru.LightCurveGRU": {"hidden": 16},
    "physics_tf.auger.hexconv.AugerHexConvNet": {"rnn_hidden": 8, "station_dim": 8, "conv_channels": [8, 8],
                                                 "head_dims": [16]},
    "physics_tf.auger.transformer.AugerTransformer": {"temporal_dim": 16, "temporal_heads": 2, "temporal_depth": 1,
                                                      "latents": 4, "dim": 16, "num_heads": 2, "depth": 1,
                                                      "pair_hidden": 8, "head_hidden": 16},
}


@dataclass
class Command:
    line: int           # README line where the command starts
    text: str           # the command as a user copies it (continuations joined, comment removed)
    why_not: str | None  # the marker's reason, when the tests do not run it

    def __str__(self) -> str:
        return f"README.md:{self.line}: {self.text}"


def readme_commands(readme: Path = ROOT / "README.md") -> list[Command]:
    """Every command of the README's ``bash`` blocks, in order."""
    commands: list[Command] = []
    in_block, block_marker, block_has_command, next_marker = False, None, False, None
    pending, start, comment = "", 0, ""
    for number, raw in enumerate(readme.read_text().splitlines(), start=1):
        line = raw.rstrip()
        if line.startswith("```"):
            in_block = not in_block and line.strip() == "```bash"
            block_marker, block_has_command = None, False
            continue
        stripped = line.strip()
        if not in_block or (not pending and not stripped):
            continue
        if not pending and stripped.startswith("#") and not stripped.startswith("#SBATCH"):
            found = MARKER.search(stripped)
            if found and not block_has_command:  # a comment heading the block marks all of it
                block_marker = found.group(1)
            elif found:  # a comment line inside the block marks the command below it
                next_marker = found.group(1)
            continue
        code, _, note = (line, "", "") if stripped.startswith("#SBATCH") else _split_comment(line)
        if not pending:
            start, comment = number, ""
        comment += " " + note
        if code.endswith("\\"):
            pending += code[:-1].strip() + " "
            continue
        text, pending, block_has_command = (pending + code.strip()).strip(), "", True
        found = MARKER.search(comment)
        commands.append(Command(start, text, found.group(1) if found else (next_marker or block_marker)))
        next_marker = None
    return commands


def _split_comment(line: str) -> tuple[str, str, str]:
    """``code # note`` → (code, '#', note), leaving ``#`` inside quotes alone."""
    quote = None
    for i, ch in enumerate(line):
        if ch in "'\"" and quote in (None, ch):
            quote = None if quote else ch
        elif ch == "#" and quote is None and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip(), "#", line[i + 1:].strip()
    return line.rstrip(), "", ""


def pipeline_of(cmd: Command) -> tuple[str, list[str]]:
    """(pipeline name, its arguments) of ``python pipelines/<name>.py ARGS``; raises ValueError for anything else."""
    argv = shlex.split(cmd.text)
    if len(argv) >= 2 and argv[0] == "python" and (m := re.fullmatch(r"pipelines/(\w+)\.py", argv[1])):
        if m.group(1) in PIPELINES:
            return m.group(1), argv[2:]
    raise ValueError(f"{cmd}: not a `python pipelines/<name>.py` command and carries no '(not run by the tests: "
                     "...)' marker")


def _wing(args: list[str]) -> str | None:
    for a in args:
        if m := re.match(r"(?:experiment|data)=(\w+?)_", a):
            return {"jets": "jets", "lightcurves": "lightcurves", "auger": "auger"}.get(m.group(1))
    return None


def tiny_overrides(name: str, args: list[str]) -> list[str]:
    """The overrides appended to ``python pipelines/<name>.py ARGS`` to make it small."""
    if name == "train":
        wing = _wing(args) or "jets"
        return [*TRAIN_TINY, *DATA_TINY[wing]]
    if name == "generate":
        data = next((a.split("=", 1)[1] for a in args if a.startswith(("data=", "gen="))), "jets_demo")
        return GEN_TINY[data]
    if name == "evaluate":
        return ["++trainer.limit_test_batches=2"]
    if name == "explain":
        return ["num_events=16"]
    return []


def tiny_model(cfg):
    """``cfg`` with ``cfg.model`` shrunk in place to the widths of :data:`TINY_MODELS` for its ``_target_`` (what
    ``model.*=`` overrides would set; applied to the composed config so that a sweep over several networks shrinks
    each of them). A network without tiny widths is a KeyError: give it some."""
    from omegaconf import open_dict

    with open_dict(cfg):
        cfg.model.merge_with(TINY_MODELS[cfg.model._target_])
    return cfg


def fill_placeholders(arg: str, cwd: Path) -> str:
    """``<time>``, ``<date>``, ``<run>`` → the newest existing directory that matches (a sweep's ``multirun_*``
    directory only where the README names one); ``/data/`` → ``cwd/data/`` (the user's files, written by the test)."""
    arg = re.sub(r"(^|[=\[',])/data/", lambda m: f"{m.group(1)}{cwd}/data/", arg)
    if not re.search(r"<(time|date|run)>", arg):
        return arg
    key, eq, value = arg.partition("=") if re.match(r"^[\w.+~]+=", arg) else ("", "", arg)
    parts = Path(value).parts
    pattern = str(Path(*(re.sub(r"<(time|date|run)>", "*", p) for p in parts)))
    wild = [i for i, p in enumerate(parts) if re.search(r"<(time|date|run)>", p)]

    def wanted(match: str) -> bool:
        got = Path(match).relative_to(cwd).parts
        return all(parts[i].startswith("multirun") or not got[i].startswith("multirun") for i in wild)

    matches = sorted((m for m in glob.glob(str(cwd / pattern)) if wanted(m)), key=os.path.getmtime)
    if not matches:
        raise FileNotFoundError(f"nothing matches {pattern} under {cwd}")
    return f"{key}{eq}{os.path.relpath(matches[-1], cwd)}"
