"""Lightning data module for jet tagging (JetClass ROOT / top-tagging HDF5), built by Hydra.

``conf/data/*.yaml`` sets ``_target_: physics_tf.jets.data.JetDataModule``; the YAML keys are the constructor
arguments. ``num_features``, ``num_classes`` and ``class_names`` are known from the config alone (no file is
opened), so the model can be built before :meth:`setup`. Loaders, epochs and mid-epoch resume come from
:class:`physics_tf.data.loaders.StreamingDataModule`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import awkward as ak
import numpy as np
from lightning.pytorch.utilities import rank_zero_info

from physics_tf.data.loaders import StreamingDataModule
from physics_tf.jets.dataset import JetIterableDataset, build_pieces
from physics_tf.jets.features import FORMATS, JetDataConfig
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
    """

    def __init__(self, files: Mapping[str, Any], format: str = "jetclass_root", labels=None, features: Any = "kin",
                 vectors=None, variables=None, selection: str | None = None, treename: str = "tree",
                 pad_length: int = 128, chunk_size: int = 10_000, batch_size: int = 256, num_workers: int = 0,
                 shuffle_buffer: int = 10_000, seed: int = 0, pin_memory: bool = False,
                 skip_unlabelled: bool = False):
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
        self.seed = int(seed)
        self.pin_memory = bool(pin_memory)
        self.files = self.cfg.files

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
        return {"class_names": list(self.class_names)}

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
            seed=self.seed, rank=rank, world_size=world, pieces=build_pieces(files, self.cfg))


    def split_counts(self, split: str) -> dict[str, int]:
        """What the test stage checks its sample count against (:func:`physics_tf.tasks.metrics.sample_counts`):
        ``num_entries``, the jets in the split's files, and with ``skip_unlabelled`` ``num_skipped_unlabelled``,
        the jets among them with no label flag set (the label branches are read once more for it)."""
        dataset = self.datasets.get(split)
        if dataset is None:
            return {}
        counts = {"num_entries": int(dataset.num_entries)}
        if self.cfg.skip_unlabelled:
            labels = FORMATS[self.cfg.format]
            skipped = 0
            for f in dataset.files:
                for chunk in make_reader(f, self.cfg, branches=labels).iterate(0, None, self.cfg.chunk_size):
                    flags = np.stack([ak.to_numpy(chunk[name]) != 0 for name in labels])  # (labels, n)
                    skipped += int((~flags.any(axis=0)).sum())
            rank_zero_info(f"{split} split: {skipped} of {counts['num_entries']} jets have no label flag set and "
                           "were skipped (data.skip_unlabelled)")
            counts["num_skipped_unlabelled"] = skipped
        return counts
