"""Auger surface-detector events for training: augmentation, batches, a streaming dataset and the data module.

Files are read by :class:`physics_tf.auger.io.AugerEventFile` (layout: :mod:`physics_tf.auger.schema`).

Batch (batch contract of :mod:`physics_tf.tasks.base`), with n = ``grid_size`` and T = ``n_bins``:

=============  =================  ==========================================================
key            shape              content
=============  =================  ==========================================================
traces         (B, n, n, T)       ln(1 + VEM per bin), 0 at masked stations
times          (B, n, n)          arrival time relative to the hottest station, µs
signals        (B, n, n)          log10(1 + S/VEM)
positions      (B, n, n, 3)       x, y in units of the 1500 m spacing, (z − 1400 m) / 100 m
mask           (B, n, n) bool     True = station is real (triggered and working)
y              (B, K)             standardised targets, (value − mean) / std per ``targets``
aux_xmax       (B,)               X_max, g/cm²
aux_lna        (B,)               ln A
aux_lg_energy  (B,)               lg(E/eV)
aux_zenith     (B,)               rad
aux_primary    (B,) int64         primary index
aux_index      (B,) int64         event's position in the split (file order; validation / test only)
=============  =================  ==========================================================

Streaming: each split is cut into blocks of
``chunk_events`` consecutive events (a compressed HDF5 chunk each); per epoch the training blocks are shuffled
with a seed of (seed, epoch), dealt to DDP ranks round-robin and, inside a rank, to DataLoader workers; a
worker reads ``shuffle_blocks`` blocks at a time and shuffles the events among them. Every rank yields the same
number of training batches (:func:`physics_tf.data.streaming.batches_per_rank` with ``drop_last``; a rank short
of events wraps around its own blocks; a rank dealt none, when the split has fewer blocks than ranks, reads
the block ``rank mod blocks``). Validation / test read every event once, in file order, in equal
contiguous spans per rank (padded by wrapping around, as ``DistributedSampler`` does, so every rank yields the
same number of batches and collective ops cannot hang).

Augmentation (``augment=true``, training only): the n×n axial rhombus is mapped onto itself by the 180°
rotation (q, r) → (−q, −r) and by the mirror (q, r) → (r, q) (the reflection about the 30° line); the
group they generate (4 elements) is the part of the grid's D6 symmetry that keeps a rhombus patch whole
(60° rotations would move corner stations out of the patch). Positions are transformed with the same maps.

Prediction (:mod:`physics_tf.training.predict`): :meth:`AugerDataModule.predict_files`, ``default_observers``
and ``predict_dataloader`` (:class:`AugerPredictDataset`): files without truth work; observers are the event
fields (:data:`physics_tf.auger.io.OBSERVERS`).
"""

from __future__ import annotations

import logging
import math
import multiprocessing
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset

from physics_tf.auger.io import OBSERVERS, AugerEventFile, observer_values
from physics_tf.auger.schema import ALTITUDE, HEIGHT_UNIT, LN_A, PRIMARIES, SPACING, STATION_FIELDS
from physics_tf.data.errors import ConfigError, DataError, MissingFieldError
from physics_tf.data.loaders import StreamingDataModule
from physics_tf.data.streaming import batches_per_rank, expand_files, worker_slot
from physics_tf.auger import export as wing_export

__all__ = ["AugerDataset", "AugerDataModule", "AugerPredictDataset", "augment_events", "model_batch", "to_batch",
           "TARGETS"]

log = logging.getLogger(__name__)

# default standardisation of the targets: (value - mean) / std
TARGETS: dict[str, tuple[float, float]] = {"xmax": (750.0, 70.0), "lna": (2.0, 1.6)}


# ---------------------------------------------------------------------------------------------- transforms
_MIRROR = np.array([[0.5, math.sqrt(3) / 2], [math.sqrt(3) / 2, -0.5]])  # (q, r) → (r, q) acting on (x, y)


def augment_events(raw: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Apply a random element of {id, 180° rotation, mirror q↔r, both} per event (see module docstring)."""
    out = {k: v.copy() for k, v in raw.items()}
    n = len(out["xmax"])
    rot = rng.random(n) < 0.5
    mir = rng.random(n) < 0.5
    for name in STATION_FIELDS:
        a = out[name]
        a[rot] = a[rot][:, ::-1, ::-1]
        a[mir] = np.swapaxes(a[mir], 1, 2)
    pos = out["positions"]
    pos[rot, ..., :2] *= -1.0
    pos[mir, ..., :2] = pos[mir, ..., :2] @ _MIRROR.T
    return out


def model_batch(raw: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """The network inputs of raw station fields (file units): traces, times, signals, positions, mask."""
    mask = raw["mask"].astype(bool)
    m = mask.astype(np.float32)
    traces = np.log1p(np.maximum(raw["traces"].astype(np.float32), 0.0)) * m[..., None]
    pos = raw["positions"].astype(np.float32)
    pos = np.concatenate([pos[..., :2] / SPACING, (pos[..., 2:] - ALTITUDE) / HEIGHT_UNIT], axis=-1)
    return {
        "traces": torch.from_numpy(np.ascontiguousarray(traces)),
        "times": torch.from_numpy((raw["times"].astype(np.float32) * 1e-3) * m),
        "signals": torch.from_numpy(np.log10(1.0 + np.maximum(raw["signals"].astype(np.float32), 0.0)) * m),
        "positions": torch.from_numpy(np.ascontiguousarray(pos)),
        "mask": torch.from_numpy(mask),
    }


def to_batch(raw: Mapping[str, np.ndarray], targets: Sequence[str], norm: Mapping[str, Sequence[float]]
             ) -> dict[str, torch.Tensor]:
    """Raw fields (file units) → a batch dict of tensors (module docstring table)."""
    lna = np.log(np.asarray(raw["mass_number"], dtype=np.float64))
    truth = {"xmax": np.asarray(raw["xmax"], dtype=np.float64), "lna": lna}
    y = np.stack([(truth[t] - norm[t][0]) / norm[t][1] for t in targets], axis=-1).astype(np.float32)
    return {
        **model_batch(raw),
        "y": torch.from_numpy(y),
        "aux_xmax": torch.from_numpy(truth["xmax"].astype(np.float32)),
        "aux_lna": torch.from_numpy(lna.astype(np.float32)),
        "aux_lg_energy": torch.from_numpy(np.log10(np.asarray(raw["energy"], dtype=np.float64)).astype(np.float32)),
        "aux_zenith": torch.from_numpy(np.asarray(raw["zenith"], dtype=np.float32)),
        "aux_primary": torch.from_numpy(np.asarray(raw["primary"]).astype(np.int64)),
    }


# ---------------------------------------------------------------------------------------------- dataset
class AugerDataset(IterableDataset):
    """Batches of Auger events from a list of files (see the module docstring for sharding and shuffling)."""

    def __init__(self, files: Sequence[str], batch_size: int, *, train: bool, grid_size: int, n_bins: int,
                 targets: Sequence[str], target_norm: Mapping[str, Sequence[float]], treename: str = "events",
                 chunk_events: int = 256, shuffle_blocks: int = 8, augment: bool = False, seed: int = 0,
                 rank: int = 0, world_size: int = 1) -> None:
        self.readers = [AugerEventFile(f, grid_size, n_bins, treename) for f in files]
        for r in self.readers:
            r.close()
        self.batch_size, self.train = int(batch_size), bool(train)
        self.targets, self.target_norm = list(targets), {k: tuple(v) for k, v in target_norm.items()}
        self.shuffle_blocks, self.augment, self.seed = max(1, int(shuffle_blocks)), bool(augment), int(seed)
        self.blocks = [(i, s, min(s + chunk_events, r.n_events)) for i, r in enumerate(self.readers)
                       for s in range(0, r.n_events, chunk_events)]
        self.num_entries = sum(r.n_events for r in self.readers)
        self._offsets = np.cumsum([0] + [r.n_events for r in self.readers])  # first event of each file
        self.chunk_events = max(1, int(chunk_events))
        if self.num_entries == 0:
            raise DataError(files[0] if files else None, "no events in this split", None)
        self.rank, self.world_size = rank, world_size
        # shared with DataLoader workers (also persistent ones): set_epoch() in the main process is seen there
        self._epoch = multiprocessing.get_context().RawValue("q", 0)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's shuffle (takes effect at the next ``iter()``)."""
        self._epoch.value = int(epoch)

    def set_distributed(self, rank: int, world_size: int) -> None:
        self.rank, self.world_size = int(rank), int(world_size)

    def _rank_blocks(self, epoch: int) -> list[tuple[int, int, int]]:
        blocks = list(self.blocks)
        if self.train:
            order = np.random.default_rng([self.seed, epoch]).permutation(len(blocks))
            blocks = [blocks[i] for i in order]
        # a rank must yield its batches even when the split has fewer blocks than ranks (else DDP hangs)
        return blocks[self.rank :: self.world_size] or blocks[self.rank % len(blocks) :][:1]

    def __len__(self) -> int:
        if self.train:
            return max(1, batches_per_rank(self.num_entries, self.world_size, self.batch_size, drop_last=True))
        return math.ceil(self._eval_span() / self.batch_size)

    # ------------------------------------------------------------------ validation / test
    def _eval_span(self) -> int:
        """Events per rank in validation/test: ceil(N / world_size), the same on every rank."""
        return math.ceil(self.num_entries / self.world_size)

    def _read_global(self, g0: int, g1: int) -> dict[str, np.ndarray]:
        """Events ``g0 … g1 − 1`` of the split in file order, indices taken modulo N (wrap-around padding)."""
        n = self.num_entries
        offsets = self._offsets
        parts = []
        g = g0
        while g < g1:
            pos = g % n
            f = int(np.searchsorted(offsets, pos, side="right")) - 1
            take = min(g1 - g, int(offsets[f + 1]) - pos)
            parts.append(self.readers[f].read(pos - int(offsets[f]), pos - int(offsets[f]) + take))
            g += take
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def _iter_eval(self, worker_id: int, num_workers: int) -> Iterator[dict[str, torch.Tensor]]:
        """Rank r reads events [r·S, (r + 1)·S) with S = ceil(N / world_size), in file order; indices past the
        end wrap to the start of the split (as ``torch.utils.data.DistributedSampler`` pads), so every rank
        yields ceil(S / batch_size) batches and with world_size > 1 up to world_size − 1 events are read twice
        (their ``aux_index`` lets the test stage count them once).
        A rank's batches are dealt to its workers in contiguous runs."""
        span, bs = self._eval_span(), self.batch_size
        n_batches = math.ceil(span / bs)
        b0, b1 = n_batches * worker_id // num_workers, n_batches * (worker_id + 1) // num_workers
        start = self.rank * span
        step = bs * max(1, self.chunk_events // bs)  # events read at once (whole batches)
        lo, hi = b0 * bs, min(b1 * bs, span)
        for a in range(lo, hi, step):
            raw = self._read_global(start + a, start + min(a + step, hi))
            index = (start + a + np.arange(len(raw["xmax"]))) % self.num_entries  # a padded event keeps its index
            for s in range(0, len(raw["xmax"]), bs):
                batch = to_batch({k: v[s : s + bs] for k, v in raw.items()}, self.targets, self.target_norm)
                yield {**batch, "aux_index": torch.from_numpy(index[s : s + bs])}  # (B,) int64

    def iter_worker(self, worker_id: int = 0, num_workers: int = 1, epoch: int | None = None
                    ) -> Iterator[dict[str, torch.Tensor]]:
        if not self.train:
            yield from self._iter_eval(worker_id, num_workers)
            return
        epoch = int(self._epoch.value) if epoch is None else epoch
        blocks = self._rank_blocks(epoch)[worker_id::num_workers] or self._rank_blocks(epoch)
        rng = np.random.default_rng([self.seed, epoch, self.rank, worker_id, 1])
        total = len(self)
        quota = total // num_workers + (1 if worker_id < total % num_workers else 0)
        if not blocks:
            return
        done, pending, i = 0, None, 0
        while done < quota:
            group = [blocks[(i + k) % len(blocks)] for k in range(self.shuffle_blocks)]
            i += len(group)
            parts = [self.readers[f].read(s, e) for f, s, e in group]
            raw = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
            if pending is not None:
                raw = {k: np.concatenate([pending[k], raw[k]]) for k in raw}
            perm = rng.permutation(len(raw["xmax"]))
            raw = {k: v[perm] for k, v in raw.items()}
            n = len(raw["xmax"])
            stop = n - n % self.batch_size
            for s in range(0, stop, self.batch_size):
                if done >= quota:
                    break
                sub = {k: v[s : s + self.batch_size] for k, v in raw.items()}
                if self.augment:
                    sub = augment_events(sub, rng)
                yield to_batch(sub, self.targets, self.target_norm)
                done += 1
            pending = {k: v[stop:] for k, v in raw.items()} if stop < n else None

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        return self.iter_worker(*worker_slot())


# ---------------------------------------------------------------------------------------------- prediction
class AugerPredictDataset(IterableDataset):
    """Prediction batches: every event of ``files`` once, in order, a file's last batch short, no truth needed.
    Worker w yields batches w, w + W, …, which the DataLoader's round robin puts back in order. An event with every
    station masked is not scored (``pred_valid=False``; the network sees one fake station so that it still runs)."""

    def __init__(self, files: Sequence[str], batch_size: int, *, grid_size: int, n_bins: int,
                 observers: Sequence[str], treename: str = "events") -> None:
        self.files, self.observers = list(files), list(observers)
        self.readers = [AugerEventFile(f, grid_size, n_bins, treename, require_truth=False, cache_bytes=64 << 20)
                        for f in files]
        for r in self.readers:
            r.close()
            missing = [o for o in self.observers if OBSERVERS[o] not in r.fields]
            if missing:
                raise MissingFieldError(r.path, f"observer not in this file (its event fields: "
                                        f"{[f for f in r.fields if f not in STATION_FIELDS]})", missing[0])
        bs = max(1, int(batch_size))
        self.batches = [(i, a, min(a + bs, r.n_events)) for i, r in enumerate(self.readers)
                        for a in range(0, r.n_events, bs)]
        self.num_entries = sum(r.n_events for r in self.readers)

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        wid, nw = worker_slot()
        fields = tuple(STATION_FIELDS) + tuple(dict.fromkeys(OBSERVERS[o] for o in self.observers))
        current = None
        for i, a, b in self.batches[wid::nw]:
            if current is not None and current != i:
                self.readers[current].close()  # one open file per worker
            current = i
            raw = self.readers[i].read(a, b, fields, allow_empty=True)
            valid = raw["mask"].reshape(b - a, -1).any(axis=1)
            if not valid.all():
                raw["mask"] = raw["mask"].copy()
                raw["mask"][~valid, self.readers[i].grid_size // 2, self.readers[i].grid_size // 2] = True
            yield {**model_batch(raw), "pred_file": torch.full((b - a,), i, dtype=torch.int64),
                   "pred_entry": torch.arange(a, b, dtype=torch.int64), "pred_valid": torch.from_numpy(valid),
                   **{f"obs/{o}": observer_values(o, raw) for o in self.observers}}


# ---------------------------------------------------------------------------------------------- data module
class AugerDataModule(StreamingDataModule):
    """Train/val/test loaders of Auger SD events (HDF5 or ROOT), built by Hydra from ``conf/data/auger_sim.yaml``.

    Parameters
    ----------
    files: ``{train: [globs], val: [...], test: [...]}``.
    grid_size, n_bins: the n of the n×n patch and the trace length the model is built for; files must match
        the grid and have at least ``n_bins`` bins (longer traces are cut).
    targets: any of ``xmax``, ``lna``; ``target_norm`` overrides the (mean, std) of :data:`TARGETS`.
    classify_primary: also train a 4-class classifier of the primary (p, He, N, Fe) on ``aux_primary``.
    batch_size, num_workers, chunk_events, shuffle_blocks, augment, seed, pin_memory, treename: see module doc.
    """

    def __init__(self, files: Mapping[str, Any], grid_size: int = 9, n_bins: int = 120,
                 targets: Sequence[str] = ("xmax",), target_norm: Mapping[str, Sequence[float]] | None = None,
                 batch_size: int = 64, num_workers: int = 0, chunk_events: int = 256, shuffle_blocks: int = 8,
                 augment: bool = False, seed: int = 0, pin_memory: bool = False, treename: str = "events",
                 classify_primary: bool = False) -> None:
        super().__init__()
        self.files = files or {}
        self.grid_size, self.n_bins = int(grid_size), int(n_bins)
        self.targets = [str(t) for t in targets]
        unknown = [t for t in self.targets if t not in TARGETS]
        if unknown or not self.targets:
            raise DataError("<config>", f"targets {self.targets}: expected a non-empty subset of {list(TARGETS)}",
                            "targets")
        self.target_norm = {**TARGETS, **{k: tuple(v) for k, v in (target_norm or {}).items()}}
        self.batch_size, self.num_workers = int(batch_size), int(num_workers)
        self.chunk_events, self.shuffle_blocks = int(chunk_events), int(shuffle_blocks)
        self.augment, self.seed, self.pin_memory, self.treename = bool(augment), int(seed), bool(pin_memory), treename
        self.num_classes = len(PRIMARIES) if classify_primary else 0

    @property
    def model_dims(self) -> dict[str, int]:
        """Sizes the network is built with: ``grid_size``, ``n_bins``, ``num_targets``, ``num_classes``."""
        return {"grid_size": self.grid_size, "n_bins": self.n_bins, "num_targets": len(self.targets),
                "num_classes": self.num_classes}

    # export hook (no file is read): a padded batch of plausible network inputs and their ONNX dynamic axes, for
    # physics_tf.training.export and the model tests (:mod:`physics_tf.auger.export`)
    example_batch = wing_export.example_batch
    onnx_dynamic_axes = wing_export.DYNAMIC_AXES

    @property
    def task_kwargs(self) -> dict[str, Any]:
        return {"target_names": list(self.targets),
                "target_mean": [float(self.target_norm[t][0]) for t in self.targets],
                "target_std": [float(self.target_norm[t][1]) for t in self.targets],
                "primaries": list(PRIMARIES), "num_classes": self.num_classes,
                "primary_lna": [float(v) for v in LN_A]}

    def _build_dataset(self, split: str, files: list[str], rank: int, world: int) -> AugerDataset:
        return AugerDataset(
            files, self.batch_size, train=split == "train", grid_size=self.grid_size, n_bins=self.n_bins,
            targets=self.targets, target_norm=self.target_norm, treename=self.treename,
            chunk_events=self.chunk_events, shuffle_blocks=self.shuffle_blocks, augment=self.augment,
            seed=self.seed, rank=rank, world_size=world)

    def split_counts(self, split: str) -> dict[str, int]:
        """``num_entries``: the events of the split, each of which the test stage must see exactly once
        (:func:`physics_tf.tasks.metrics.sample_counts`)."""
        dataset = self.datasets.get(split)
        return {} if dataset is None else {"num_entries": int(dataset.num_entries)}

    # ------------------------------------------------------------------ prediction (physics_tf.training.predict)
    def predict_files(self, files: Sequence[str], **options: Any) -> list[str]:
        """The files of the globs ``files``, sorted per pattern, in the patterns' order; none matched → one line."""
        self._check_options(options)
        try:
            self._predict_files = expand_files(files)
        except DataError as err:
            if "no file matches" not in str(err.what):
                raise
            raise DataError(err.file, "no file matches this pattern", "files") from None
        return self._predict_files

    def default_observers(self) -> list[str]:
        """The event fields all files of :meth:`predict_files` have (energy, angles, core, truth; not lg_energy)."""
        have = set.intersection(*[set(AugerEventFile(f, self.grid_size, self.n_bins, self.treename,
                                                     require_truth=False).fields)
                                  for f in getattr(self, "_predict_files", [])] or [set()])
        return [o for o, field in OBSERVERS.items() if field in have and o != "lg_energy"]

    def predict_dataloader(self, files: Sequence[str], observers: Sequence[str] | None = None, *,
                           batch_size: int | None = None, num_workers: int | None = None, **options: Any):
        """Batches of every event of ``files`` in order (:class:`AugerPredictDataset`), with ``pred_file``,
        ``pred_entry``, ``pred_valid`` and ``obs/<name>`` for each observer."""
        from torch.utils.data import DataLoader

        self._check_options(options)
        if observers is None:
            self._predict_files = list(files)
            observers = self.default_observers()
        unknown = [o for o in observers if o not in OBSERVERS]
        if unknown:
            raise ConfigError("<config>", f"unknown Auger observer {unknown[0]!r} (any of {list(OBSERVERS)})",
                              "observers")
        dataset = AugerPredictDataset(files, self.batch_size if batch_size is None else batch_size,
                                      grid_size=self.grid_size, n_bins=self.n_bins, observers=observers,
                                      treename=self.treename)
        workers = self.num_workers if num_workers is None else int(num_workers)
        return DataLoader(dataset, batch_size=None, num_workers=workers, pin_memory=self.pin_memory)

    @staticmethod
    def _check_options(options: Mapping[str, Any]) -> None:
        if options:
            key = sorted(options)[0]
            raise ConfigError("<config>", f"the Auger data take no prediction option {key!r}", key)
