"""Lightning data module for jet tagging (JetClass ROOT / top-tagging HDF5), built by Hydra.

``conf/data/*.yaml`` sets ``_target_: physics_tf.jets.data.JetDataModule``; the YAML keys are the constructor
arguments. ``num_features``, ``num_classes`` and ``class_names`` are known from the config alone (no file is
opened), so the model can be built before :meth:`setup`. Loaders, epochs and mid-epoch resume come from
:class:`physics_tf.data.loaders.StreamingDataModule`.

Prediction over a user's files (the predict driver's contract): :meth:`JetDataModule.predict_files`,
:meth:`~JetDataModule.predict_dataloader` and :meth:`~JetDataModule.default_observers`. Every entry of every file
gives one row, in file then entry order; labels are not read. A jet the model cannot score, one with zero
particles or failing ``data.selection``, keeps its row with ``pred_valid`` False (its inputs all padding).
"""

from __future__ import annotations

import glob
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import awkward as ak
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader, IterableDataset

from physics_tf.data.errors import ConfigError, DataError
from physics_tf.data.loaders import StreamingDataModule
from physics_tf.data.streaming import expand_files, worker_slot
from physics_tf.jets.dataset import JetIterableDataset, build_pieces
from physics_tf.jets.features import JetDataConfig, chunk_to_arrays
from physics_tf.jets.metrics import find_class
from physics_tf.jets.readers import make_reader
from physics_tf.jets import export as wing_export

__all__ = ["JetDataModule"]


class JetDataModule(StreamingDataModule):
    """Train/val/test loaders of padded jet batches (see ``physics_tf.jets.dataset`` for sharding).

    Parameters
    ----------
    files
        ``{train: [globs], val: [globs], test: [globs]}``; a missing / null split has no loader.
    format, labels, features, vectors, variables, selection, treename, pad_length, chunk_size, skip_unlabelled
        See :class:`physics_tf.jets.features.JetDataConfig`.
    batch_size
        Jets per batch (per rank).
    num_workers
        DataLoader workers per rank (persistent when > 0).
    shuffle_buffer
        Jets in each worker's shuffle buffer (training).
    seed
        Base seed of the piece and buffer shuffles.
    pin_memory
        Passed to the DataLoaders.
    background
        Background class of the rejection metrics (a class name, e.g. ``qcd``; matched also without a ``label_``
        prefix and case-insensitively), passed to the task; None: the task's own ``background`` (``task/jets.yaml``:
        QCD, else the first class).
    """

    def __init__(self, files: Mapping[str, Any], format: str = "jetclass_root", labels=None, features: Any = "kin",
                 vectors=None, variables=None, selection: str | None = None, treename: str = "tree",
                 pad_length: int = 128, chunk_size: int = 10_000, batch_size: int = 256, num_workers: int = 0,
                 shuffle_buffer: int = 10_000, seed: int = 0, pin_memory: bool = False,
                 skip_unlabelled: bool = False, background: str | None = None, prefetch: int = 1):
        super().__init__()
        kw: dict[str, Any] = dict(files=files or {}, format=format, features=features,
                                  variables=variables or {}, selection=selection, treename=treename,
                                  pad_length=pad_length, chunk_size=chunk_size, skip_unlabelled=bool(skip_unlabelled))
        if labels is not None:
            kw["labels"] = labels
        if vectors is not None:
            kw["vectors"] = vectors
        self.cfg = JetDataConfig(**kw)
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers)
        self.shuffle_buffer = int(shuffle_buffer)
        self.prefetch = int(prefetch)
        self.seed = int(seed)
        self.pin_memory = bool(pin_memory)
        self.files = self.cfg.files
        self.background = None
        if background is not None:
            index = find_class(self.class_names, background)
            if index is None:
                raise ConfigError("<config>", f"background class {background!r} is not one of the classes "
                                  f"{self.class_names}", "background")
            self.background = self.class_names[index]
        self._predict_files: list[str] = []

    # ------------------------------------------------------------------ from config, no I/O
    @property
    def num_features(self) -> int:
        return self.cfg.num_features

    @property
    def num_classes(self) -> int:
        return self.cfg.num_classes

    @property
    def class_names(self) -> list[str]:
        return self.cfg.class_names

    @property
    def feature_names(self) -> list[str]:
        return self.cfg.feature_names

    @property
    def model_dims(self) -> dict[str, int]:
        """Sizes the network is built with (``instantiate(cfg.model, **dm.model_dims)``)."""
        return {"input_dim": self.num_features, "num_classes": self.num_classes}

    # export hook (no file is read): a padded batch of plausible network inputs and their ONNX dynamic axes, for
    # physics_tf.training.export and the model tests (:mod:`physics_tf.jets.export`)
    example_batch = wing_export.example_batch
    onnx_dynamic_axes = wing_export.DYNAMIC_AXES

    @property
    def task_kwargs(self) -> dict[str, object]:
        """What the task needs to know about the data (``instantiate(cfg.task, net=..., **dm.task_kwargs)``)."""
        out: dict[str, object] = {"class_names": list(self.class_names)}
        if self.background is not None:
            out["background"] = self.background
        return out

    # what epoch_counts names, for the task's once-per-epoch warning
    COUNT_NOTES = {"num_dropped_empty": "jets with zero particles, dropped"}

    def epoch_counts(self, split: str) -> dict[str, int]:
        """``num_dropped_empty``: the jets with zero particles this rank's loader of ``split`` dropped in the current
        epoch (so far), over its workers; the task sums it over ranks at the end of every epoch, warns once, and
        writes the test split's to ``metrics.json`` (:mod:`physics_tf.tasks.samples`)."""
        dataset = self.datasets.get(split)
        return {} if dataset is None else {"num_dropped_empty": dataset.dropped_empty}

    # ------------------------------------------------------------------ Lightning hooks
    def _build_dataset(self, split: str, files: list[str], rank: int, world: int) -> JetIterableDataset:
        """Cut the files into pieces (metadata only) and build the split's streaming dataset."""
        return JetIterableDataset(
            self.cfg, files, self.batch_size, train=(split == "train"), shuffle_buffer=self.shuffle_buffer,
            seed=self.seed, rank=rank, world_size=world, pieces=build_pieces(files, self.cfg),
            prefetch=self.prefetch)


    def split_counts(self, split: str) -> dict[str, int]:
        """What the test stage checks its sample count against (:func:`physics_tf.tasks.metrics.sample_counts`):
        ``num_entries``, the jets in the split's files, and with ``skip_unlabelled`` ``num_skipped_unlabelled``,
        the jets among them with no label flag set (the label branches are read once more for it)."""
        dataset = self.datasets.get(split)
        if dataset is None:
            return {}
        counts = {"num_entries": int(dataset.num_entries)}
        if self.cfg.skip_unlabelled:
            spec = self.cfg.label_spec
            skipped = 0
            for f in dataset.files:
                start = 0
                for chunk in make_reader(f, self.cfg, branches=spec.read_branches).iterate(0, None,
                                                                                            self.cfg.chunk_size):
                    entries = np.arange(start, start + len(chunk))
                    skipped += int(spec.classify(chunk, f, entries, skip_unlabelled=True)[1].sum())
                    start += len(chunk)
            rank_zero_info(f"{split} split: {skipped} of {counts['num_entries']} jets have no label flag set and "
                           "were skipped (data.skip_unlabelled)")
            counts["num_skipped_unlabelled"] = skipped
        return counts

    def setup(self, stage: str | None = None) -> None:
        """The splits' datasets (:class:`StreamingDataModule`); nothing for ``predict``, which reads the files given
        to :meth:`predict_dataloader`."""
        if stage != "predict":
            super().setup(stage)

    # ------------------------------------------------------------------ prediction (module docstring)
    def predict_files(self, files: Sequence[str], **options) -> list[str]:
        """The user's paths / globs expanded: sorted matches of each pattern, patterns in the order given (a file
        matched twice once). A pattern matching nothing is a one-line error naming it."""
        _no_options(options)
        patterns = [files] if isinstance(files, (str, os.PathLike)) else [str(f) for f in files]
        if not patterns:
            raise ConfigError("<predict>", "no input file given", "files")
        for pat in patterns:
            if not glob.glob(os.path.expanduser(str(pat)), recursive=True):
                raise DataError(str(pat), "no file matches this pattern", "files")
        self._predict_files = expand_files(patterns, "predict")
        return list(self._predict_files)

    def default_observers(self, files: Sequence[str] | None = None) -> list[str]:
        """The per-jet ``jet_*`` branches that every input file (those of :meth:`predict_files`, else ``files``) holds,
        in the first file's order, then the label branches of ``data.labels`` they all hold (top-tagging HDF5: the
        derived ``jet_*`` and ``is_signal_new``, ``label_QCD``, ``label_Top`` where the file has labels)."""
        files = list(self._predict_files or files or [])
        if not files:
            raise ConfigError("<predict>", "the default observers are read from the first input file; none given",
                              "observers")
        per_jet = make_reader(files[0], self.cfg, branches=()).per_jet_branches()
        for other in files[1:]:  # only what every file has: labelled and unlabelled files can be mixed
            common = set(make_reader(other, self.cfg, branches=()).per_jet_branches())
            per_jet = [b for b in per_jet if b in common]
        jets = [b for b in per_jet if b.startswith("jet_")]
        extra = [b for b in (["is_signal_new", *self.cfg.label_spec.branches, "label_QCD", "label_Top"]
                             if self.cfg.format == "toptagging_h5" else self.cfg.label_spec.branches)]
        return list(dict.fromkeys([*jets, *(b for b in extra if b in per_jet)]))

    def predict_dataloader(self, files: Sequence[str], observers: Sequence[str] | None = None, *,
                           batch_size: int | None = None, num_workers: int | None = None,
                           **options) -> "PredictBatches":
        """Batches over ``files`` in file then entry order, every entry once, the last batch short: the model inputs
        (``x``, ``v``, ``mask``; no ``y``), ``pred_file``, ``pred_entry``, ``pred_valid`` and ``obs/<name>``
        (numpy, one value per jet; default :meth:`default_observers`). A missing observer or a per-particle one is
        a one-line error naming the file and the branch."""
        _no_options(options)
        files = [str(f) for f in files]
        observers = self.default_observers(files) if observers is None else list(dict.fromkeys(map(str, observers)))
        dataset = JetPredictDataset(self.cfg, files, observers, int(batch_size or self.batch_size))
        return PredictBatches(dataset, self.num_workers if num_workers is None else int(num_workers))


def _no_options(options: Mapping[str, Any]) -> None:
    if options:
        key = sorted(options)[0]
        raise ConfigError("<predict>", f"unknown option for jet files (they take none): {key}={options[key]!r}", key)


def _observer(values, n: int, source: str, name: str) -> np.ndarray:
    """An observer branch of a chunk as an (n,) numpy array; a per-particle branch is a one-line error."""
    if isinstance(values, ak.Array):
        if values.ndim != 1:
            raise ConfigError(source, "an observer is one value per jet (a jet-level branch); this one is "
                              f"{values.type}", name)
        try:
            values = ak.to_numpy(values)
        except Exception:  # noqa: BLE001 - strings and records: as Python objects
            values = np.asarray(ak.to_list(values))
    return np.broadcast_to(np.asarray(values), (n,))


class JetPredictDataset(IterableDataset):
    """Units of whole batches (about ``chunk_size`` jets) over ``files`` laid end to end; DataLoader worker w reads
    units w, w + W, …, which the loader's round-robin hands back in unit order (:class:`PredictBatches`)."""

    def __init__(self, cfg: JetDataConfig, files: Sequence[str], observers: Sequence[str], batch_size: int):
        super().__init__()
        self.cfg, self.files, self.observers, self.batch_size = cfg, list(files), list(observers), int(batch_size)
        if self.batch_size < 1:
            raise ConfigError("<predict>", f"batch_size must be >= 1, got {batch_size}", "batch_size")
        sizes = [make_reader(f, cfg, branches=()).num_entries() for f in self.files]
        self.starts = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])  # (files + 1,) first entry of each
        self.num_entries = int(self.starts[-1])
        self.unit = max(1, cfg.chunk_size // self.batch_size) * self.batch_size
        self.branches = cfg.needed_branches(labels=False) | set(self.observers)

    def __iter__(self) -> Iterator[list[dict[str, Any]]]:
        worker, workers = worker_slot()
        for u in range(worker, math.ceil(self.num_entries / self.unit), workers):
            yield self.read_unit(u)

    def read_unit(self, u: int) -> list[dict[str, Any]]:
        """The batches of entries ``[u · unit, (u + 1) · unit)`` of the files laid end to end."""
        lo, hi = u * self.unit, min((u + 1) * self.unit, self.num_entries)
        parts = []
        for i, f in enumerate(self.files):
            first = int(self.starts[i])
            s, e = max(lo, first) - first, min(hi, int(self.starts[i + 1])) - first
            if s >= e:
                continue
            cur = s
            for chunk in make_reader(f, self.cfg, self.branches).iterate(s, e, step_size=self.cfg.chunk_size):
                parts.append(self._chunk(chunk, f, i, cur))
                cur += len(chunk)
        cat = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        bs = self.batch_size
        return [{k: (torch.from_numpy(np.ascontiguousarray(v[b:b + bs])) if not k.startswith("obs/") else v[b:b + bs])
                 for k, v in cat.items()} for b in range(0, hi - lo, bs)]

    def _chunk(self, chunk, source: str, file_index: int, entry_start: int) -> dict[str, np.ndarray]:
        """One row per entry: the scoreable jets' padded inputs in place, zeros and ``pred_valid`` False else."""
        n, P, C = len(chunk), self.cfg.pad_length, self.cfg.num_features
        ca, kept = chunk_to_arrays(chunk, self.cfg, source=source, entry_start=entry_start, return_entries=True,
                                   labels=False)
        rows = kept - entry_start
        out = {"x": np.zeros((n, P, C), np.float32), "v": np.zeros((n, P, 4), np.float32),
               "mask": np.zeros((n, P), bool)}
        out["x"][rows], out["v"][rows], out["mask"][rows] = ca.x, ca.v, ca.mask
        out["pred_file"] = np.full(n, file_index, np.int64)
        out["pred_entry"] = np.arange(entry_start, entry_start + n, dtype=np.int64)
        out["pred_valid"] = np.zeros(n, bool)
        out["pred_valid"][rows] = True
        for name in self.observers:
            out[f"obs/{name}"] = _observer(chunk[name], n, source, name)
        return out


def _identity(item):
    return item


class PredictBatches:
    """The prediction batches of a :class:`JetPredictDataset` in order (``len``: the number of batches); with
    workers, each reads whole units and the DataLoader returns them in unit order."""

    def __init__(self, dataset: JetPredictDataset, num_workers: int = 0):
        self.dataset, self.num_workers = dataset, int(num_workers)

    def __len__(self) -> int:
        return math.ceil(self.dataset.num_entries / self.dataset.batch_size)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        units = iter(self.dataset) if self.num_workers == 0 else DataLoader(
            self.dataset, batch_size=None, num_workers=self.num_workers, collate_fn=_identity)
        for unit in units:
            yield from unit
