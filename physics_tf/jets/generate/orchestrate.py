"""A JetClass-layout dataset from many Pythia instances: plan, chunks, worker processes, files, manifest.

Reproducibility
---------------
The work is cut into *chunks* (class, split, file, chunk index); each chunk runs its own Pythia instance with
``Random:seed`` derived from (seed, class, split, file, chunk) by a hash (:func:`chunk_seed`). Files are
assembled from their chunks in a fixed order and shuffled with a seed-derived RNG, so the same seed gives
byte-identical arrays **whatever the number of workers**. ``manifest.json`` (:mod:`physics_tf.data.manifest`)
records the configuration hash: generating the same configuration again is skipped unless ``force``. It is
written first as in progress and last as complete, with every file's jet count and size, so a killed run leaves a
directory that readers refuse; worker processes die with the generator (:func:`_die_with_parent`).
"""

from __future__ import annotations

import hashlib
import logging
import math
import multiprocessing as mp
import os
import queue as queue_mod
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from physics_tf.data import manifest
from physics_tf.jets.generate.events import COMMON_SETTINGS, PROCESSES, generate_jets
from physics_tf.jets.generate.substructure import JetCuts, fastjet_banner
from physics_tf.jets.schema import AUX_BRANCHES, JET_BRANCHES, JETCLASS_LABELS, LABEL_DTYPES, PARTICLE_BRANCHES

__all__ = ["SPLITS", "chunk_seed", "generate_dataset", "run_generate"]

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


def chunk_seed(seed: int, *key: object) -> int:
    """Pythia seed in 1..900 000 000 derived from ``seed`` and a chunk key by SHA-256 (stable across runs)."""
    text = ":".join(str(k) for k in (seed, *key))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") % 900_000_000 + 1


@dataclass(frozen=True)
class _Chunk:
    """One unit of work: ``n`` jets of ``process`` for chunk ``chunk`` of file ``file`` of ``split``."""

    split: str
    file: int
    process: str
    chunk: int
    n: int
    seed: int
    cuts: JetCuts
    extra_settings: tuple[str, ...] = ()

    @property
    def key(self) -> tuple:
        return (self.split, self.file, self.process, self.chunk)


def _split_counts(total: int, parts: int) -> list[int]:
    """``total`` spread over ``parts`` as evenly as possible (earlier parts get the remainder)."""
    base, rem = divmod(total, parts)
    return [base + (1 if i < rem else 0) for i in range(parts)]


def _plan(processes: Sequence[str], n_per_split: Mapping[str, int], seed: int, jets_per_file: int,
          chunk_size: int, cuts: JetCuts, extra_settings: tuple[str, ...]) -> dict[tuple[str, int], list[_Chunk]]:
    """(split, file) -> its chunks; files hold ``n_per_split / n_files`` jets of every class."""
    plan: dict[tuple[str, int], list[_Chunk]] = {}
    n_cls = len(processes)
    for split in SPLITS:
        n = int(n_per_split.get(split, 0))
        if n <= 0:
            continue
        n_files = max(1, math.ceil(n * n_cls / jets_per_file))
        for f, n_file in enumerate(_split_counts(n, n_files)):
            chunks = []
            for proc in processes:
                for c, n_chunk in enumerate(_split_counts(n_file, max(1, math.ceil(n_file / chunk_size)))):
                    chunks.append(_Chunk(split, f, proc, c, n_chunk, chunk_seed(seed, proc, split, f, c), cuts,
                                         extra_settings))
            plan[(split, f)] = chunks
    return plan


def _run_chunk(chunk: _Chunk, progress=None) -> tuple[tuple, dict[str, object], float]:
    """Generate one chunk; returns (key, arrays, seconds). Top level, so spawned workers can run it; ``progress``
    gets the jet counts (the bar's ``update`` in this process, a manager queue's ``put`` in a worker)."""
    t0 = time.perf_counter()
    arrays = generate_jets(chunk.process, chunk.n, chunk.seed, chunk.cuts, chunk.extra_settings, progress=progress)
    return chunk.key, arrays, time.perf_counter() - t0


def _assemble_file(path: Path, chunks: list[_Chunk], results: Mapping[tuple, dict[str, object]],
                   seed: int) -> int:
    """Concatenate a file's chunks in plan order, shuffle with a seed-derived RNG, write it; returns n_jets."""
    import awkward as ak

    from physics_tf.jets.writers import write_jetclass_root

    per_jet: list[np.ndarray] = []  # jet -> its particles' branch values, used only for the counts below
    flat: dict[str, list[np.ndarray]] = {b: [] for b in (*JET_BRANCHES, *AUX_BRANCHES, *JETCLASS_LABELS)}
    for ch in chunks:
        arr = results[ch.key]
        per_jet.extend(arr["part_px"])
        for b in flat:
            flat[b].append(arr[b])
    n = len(per_jet)
    split, f = chunks[0].split, chunks[0].file
    perm = np.random.default_rng(chunk_seed(seed, "shuffle", split, f)).permutation(n)  # (n,)
    counts = np.array([len(per_jet[i]) for i in perm], dtype=np.int64)  # (n,) particles per shuffled jet
    particles = {}
    for b in PARTICLE_BRANCHES:
        rows = [r for ch in chunks for r in results[ch.key][b]]  # jets in plan order
        values = np.concatenate([rows[i] for i in perm]) if n else np.zeros(0, np.float32)  # (sum counts,)
        particles[b] = ak.unflatten(values, counts)  # (n, var) jagged
    cat = {b: np.concatenate(v)[perm] for b, v in flat.items()}
    jets = {b: cat[b] for b in (*JET_BRANCHES, *AUX_BRANCHES)}
    labels = {b: cat[b].astype(LABEL_DTYPES[b]) for b in JETCLASS_LABELS}
    write_jetclass_root(path, particles, jets, labels, treename="tree")
    return n



def _check(processes: list[str], n_per_split: Mapping[str, int], jets_per_file: int, chunk_size: int) -> None:
    """One-line errors for a configuration that cannot be generated."""
    if not processes:
        raise ValueError("<gen config>: field 'processes': empty list")
    unknown = [p for p in processes if p not in PROCESSES]
    if unknown:
        raise ValueError(f"<gen config>: field 'processes': unknown {unknown} (known: {sorted(PROCESSES)})")
    if len(set(processes)) != len(processes):
        raise ValueError(f"<gen config>: field 'processes': duplicates in {processes}")
    for split, v in n_per_split.items():
        if int(v) < 0:
            raise ValueError(f"<gen config>: field 'n_{split}': must be >= 0, got {v}")
    if int(jets_per_file) < 1 or int(chunk_size) < 1:
        raise ValueError("<gen config>: field 'jets_per_file'/'chunk_size': must be >= 1")


def generate_dataset(
    out_dir: str | os.PathLike,
    processes: Sequence[str] = ("QCD", "Tbqq"),
    n_train: int = 8000,
    n_val: int = 2000,
    n_test: int = 2000,
    seed: int = 42,
    n_workers: int | None = 1,
    jets_per_file: int = 20_000,
    chunk_size: int = 1000,
    cuts: JetCuts | Mapping[str, object] | None = None,
    extra_settings: Sequence[str] = (),
    force: bool = False,
    progress: bool = True,
) -> dict[str, object]:
    """Generate a JetClass-layout dataset ``{out_dir}/{split}_{i:03d}.root`` for train / val / test.

    Parameters
    ----------
    out_dir
        Output directory (created). A ``manifest.json`` with the configuration hash is written next to the
        files; if it matches and all files exist, nothing is regenerated (unless ``force``).
    processes
        Jet classes, keys of :data:`~physics_tf.jets.generate.events.PROCESSES`; every file holds the same
        number of jets of each class.
    n_train, n_val, n_test
        Jets **per class** in each split (0 skips the split).
    seed
        Master seed; chunk seeds derive from it (:func:`chunk_seed`).
    n_workers
        Worker processes (``spawn``); ``None`` = ``os.cpu_count()``; 1 = in this process. The output does
        not depend on it.
    jets_per_file
        Upper bound on jets (all classes) per output file.
    chunk_size
        Jets of one class generated by one Pythia instance (unit of parallel work).
    cuts
        :class:`~physics_tf.jets.generate.substructure.JetCuts` or a mapping of its fields.
    extra_settings
        Extra Pythia settings for every process (e.g. ``["PartonLevel:MPI = on"]``).
    force
        Regenerate even if the manifest matches.
    progress
        Show a tqdm progress bar counting jets.

    Returns
    -------
    dict
        Summary: ``files``, ``n_jets`` (per split), ``n_events`` (per process), ``wall_s``, ``cpu_s`` (sum of
        chunk times), ``jets_per_s``, ``jets_per_s_per_core`` (jets / cpu_s), ``skipped``, ``config_hash``.
    """
    t0 = time.perf_counter()
    processes = list(processes)
    n_per_split = {"train": int(n_train), "val": int(n_val), "test": int(n_test)}
    _check(processes, n_per_split, jets_per_file, chunk_size)
    if cuts is None:
        cuts = JetCuts()
    elif not isinstance(cuts, JetCuts):
        cuts = JetCuts(**dict(cuts))
    extra = tuple(str(s) for s in extra_settings)
    n_workers = (os.cpu_count() or 1) if n_workers is None else int(n_workers)

    config = {
        "generator": "physics_tf.jetgen/1",  # kept from the single-module generator: same hash, same data
        "pythia8mc": _package_version("pythia8mc"),
        "fastjet": _package_version("fastjet"),
        "processes": processes,
        "process_settings": {p: list(PROCESSES[p].settings) for p in processes},
        "common_settings": list(COMMON_SETTINGS),
        "n": n_per_split,
        "seed": int(seed), "jets_per_file": int(jets_per_file), "chunk_size": int(chunk_size),
        "cuts": asdict(cuts), "extra_settings": list(extra),
    }
    chash = manifest.config_hash(config)
    plan = _plan(processes, n_per_split, int(seed), int(jets_per_file), int(chunk_size), cuts, extra)
    out = Path(out_dir)
    paths = {key: out / f"{key[0]}_{key[1]:03d}.root" for key in plan}

    old = manifest.up_to_date(out, "config_hash", chash, paths.values(), force)
    if old is not None:
        summary = dict(old.get("summary", {}))
        summary.update(skipped=True, wall_s=time.perf_counter() - t0)
        return summary

    manifest.begin(out, {"config_hash": chash, "config": config})
    chunks = [ch for key in plan for ch in plan[key]]
    total = sum(ch.n for ch in chunks)
    results: dict[tuple, dict[str, object]] = {}
    pending = dict(plan)
    n_jets = {s: 0 for s in SPLITS}
    entries: dict[str, int] = {}  # file name -> jets
    n_events = {p: 0 for p in processes}
    cpu_s = 0.0

    def collect(key, arrays, secs):
        nonlocal cpu_s
        cpu_s += secs
        n_events[key[2]] += int(arrays.pop("n_events"))
        results[key] = arrays
        for fkey in [k for k, chs in pending.items() if all(c.key in results for c in chs)]:
            chs = pending.pop(fkey)
            entries[paths[fkey].name] = n = _assemble_file(paths[fkey], chs, results, int(seed))
            n_jets[fkey[0]] += n
            for c in chs:
                del results[c.key]

    from tqdm.auto import tqdm

    fastjet_banner(show=True)  # once, above the progress bar; the workers print none
    with tqdm(total=total, unit="jet", desc="generating jets", dynamic_ncols=True, disable=not progress) as bar:
        if n_workers <= 1:
            for ch in chunks:
                collect(*_run_chunk(ch, bar.update))
        else:
            from multiprocessing.managers import SyncManager

            ctx = mp.get_context("spawn")
            mgr = SyncManager(ctx=ctx)
            mgr.start(_die_with_parent, (os.getpid(),))
            with mgr, ctx.Pool(min(n_workers, len(chunks)), _init_worker, (os.getpid(),)) as pool:
                q = mgr.Queue()
                asyncs = [pool.apply_async(_run_chunk, (ch, q.put)) for ch in chunks]
                done = 0
                while done < len(asyncs):
                    _drain(q, bar, timeout=0.2)
                    ready = [i for i, a in enumerate(asyncs) if a is not None and a.ready()]
                    for i in ready:
                        collect(*asyncs[i].get())  # re-raises a worker's exception
                        asyncs[i] = None
                        done += 1
                _drain(q, bar, timeout=0.0)

    wall = time.perf_counter() - t0
    summary = {
        "out_dir": str(out),
        "files": [str(paths[k]) for k in plan],
        "processes": processes,
        "n_jets": n_jets,
        "n_events": n_events,
        "wall_s": wall,
        "cpu_s": cpu_s,
        "n_workers": n_workers,
        "jets_per_s": total / wall if wall > 0 else float("nan"),
        "jets_per_s_per_core": total / cpu_s if cpu_s > 0 else float("nan"),
        "jets_per_event": {p: (total / len(processes)) / max(n_events[p], 1) for p in processes},
        "config_hash": chash,
        "skipped": False,
    }
    manifest.finish(out, {"config_hash": chash, "config": config, "summary": summary}, entries)
    log.info("generated %d jets in %.1f s (%.1f jets/s, %.1f jets/s per core) -> %s",
             total, wall, summary["jets_per_s"], summary["jets_per_s_per_core"], out)
    return summary


def _die_with_parent(parent_pid: int) -> None:
    """Worker initializer: have the kernel SIGKILL this process when its parent dies (Linux ``prctl``
    ``PR_SET_PDEATHSIG``), so a killed generator leaves no worker behind; exits at once if the parent is gone."""
    if sys.platform.startswith("linux"):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def _init_worker(parent_pid: int) -> None:
    """Pool initializer: :func:`_die_with_parent`, and no FastJet banner (the generator printed it once)."""
    _die_with_parent(parent_pid)
    fastjet_banner(show=False)


def _drain(q, bar, timeout: float) -> None:
    """Move the workers' progress increments from the queue to the bar."""
    try:
        n = q.get(timeout=timeout) if timeout > 0 else q.get_nowait()
        bar.update(n)
        while True:
            bar.update(q.get_nowait())
    except queue_mod.Empty:
        pass


def _package_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "missing"


def run_generate(cfg) -> dict[str, object]:
    """Hydra entry (``gen._target_`` of ``conf/gen/jets_*.yaml``): run the generation described by ``cfg.gen`` and
    end as every run does, with a table (jets per split, events per process, speed) and the files written where."""
    from omegaconf import OmegaConf

    g = OmegaConf.to_container(cfg.gen, resolve=True)
    summary = generate_dataset(
        out_dir=g["out_dir"],
        processes=g["processes"],
        n_train=g["n_train"],
        n_val=g["n_val"],
        n_test=g["n_test"],
        seed=g["seed"],
        n_workers=g["n_workers"],
        jets_per_file=g["jets_per_file"],
        chunk_size=g["chunk_size"],
        cuts=g.get("cuts"),
        extra_settings=g.get("extra_settings") or (),
        force=g["force"],
        progress=g.get("progress", True),
    )
    print_generation_summary(summary, Path(g["out_dir"]))
    return summary


def print_generation_summary(summary: Mapping[str, object], out_dir: Path) -> None:
    """The generation summary as a table (:func:`physics_tf.tasks.summary.print_summary_table`)."""
    from physics_tf.tasks.summary import print_summary_table

    rows: dict[str, object] = {f"{split} jets": n for split, n in dict(summary.get("n_jets") or {}).items()}
    rows.update({f"{proc} events": n for proc, n in dict(summary.get("n_events") or {}).items()})
    skipped = bool(summary.get("skipped"))  # the manifest matched: the numbers are those of the earlier run
    if not skipped:
        rows.update({"workers": summary.get("n_workers"), "wall time (s)": summary.get("wall_s"),
                     "jets/s per core": summary.get("jets_per_s_per_core")})
    files = [Path(str(f)).name for f in summary.get("files") or []]
    print_summary_table("Jets already generated" if skipped else "Generated jets", ("data set", "value"), rows,
                        out_dir, [*files, "manifest.json"], where="in" if skipped else "written to")
