"""Lightning data module for light-curve classification (PLAsTiCC layouts or our HDF5 layout), built by Hydra.

Each split is our HDF5 layout (``*.h5``: a path, a glob or a list of them) or PLAsTiCC CSVs
``{lightcurves: <csv, glob or list>, metadata: <metadata csv>}`` — one metadata file may cover several light-curve
files, as the unblinded test set's does (11 files). Both PLAsTiCC layouts are read by their headers
(:mod:`physics_tf.lightcurves.metadata`). :meth:`LightCurveDataModule.prepare_data` converts each CSV once
(streaming, atomically, one cache per light-curve file) to ``<cache_dir>/<csv stem>.h5``; a cache records its
sources' size and mtime and is converted again when they change. The metadata file is read once for all the
light-curve files converted together.

Training / validation objects are held in memory as flat arrays + offsets (PLAsTiCC's training set: 7,848
objects, 1.4 M observations ≈ 60 MB). The test split is streamed over all its files
(:class:`~physics_tf.lightcurves.streaming.LightCurveStream`): objects whole, a chunk at a time, constant memory,
sharded over DDP ranks with equal batch counts; so is prediction (:meth:`LightCurveDataModule.predict_dataloader`).
Batches are padded to the longest light curve of the batch (at most ``max_length``).

Batch fields (batch contract of :mod:`physics_tf.tasks.base`)::

    flux, flux_err (B, L) float32   raw difference fluxes (the models normalise them)
    time          (B, L) float32   days since the first kept observation of the object
    band          (B, L) int64     passband 0–5
    mask          (B, L) bool      True = real observation; real observations come first, in time order
    meta          (B, M) float32   metadata features (``meta_features``)
    y             (B,)   int64     class index (not in prediction batches)
    aux_first_detection (B,) float32   time of the first detection (days, same origin as ``time``)
    aux_object_id, aux_index (B,) int64   the object's id and its position in the split

Class codes: ``label_map`` is applied before the lookup in ``classes``; 991–995 (the unblinded test set's classes
absent from training) map to 99 unless ``label_map`` names them.

Augmentations (training split only, a fresh draw every time an object is served, from a generator seeded by
(``seed``, epoch, object index), so they are reproducible, independent of DataLoader workers, and draw nothing from
the global RNG — a run resumed mid-epoch sees the same augmented objects and dropout draws as one that never
stopped; the loader is :class:`physics_tf.data.loaders.EpochMapDataLoader`): random truncation of the observed
window to end ``U(0, span)`` days after the first detection (probability ``truncate_prob``; early
classification), dropping each observation with probability ``drop_prob``, and extra flux noise
N(0, (``flux_noise``·σ)²) with σ inflated to σ·sqrt(1 + flux_noise²). Light curves longer than ``max_length``
keep a random window (train) or the window centred on the highest-S/N observation (val / test / predict).

Under DDP Lightning inserts a ``DistributedSampler`` for train / val (map-style datasets), which pads the
validation set to a multiple of the world size; the test stream pads the same way by itself.
"""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from physics_tf.data.errors import ConfigError, DataError
from physics_tf.data.loaders import EpochDataLoader, EpochMapDataLoader, StreamingDataModule
from physics_tf.data.manifest import check_directory
from physics_tf.data.streaming import expand_files
from physics_tf.lightcurves import export as wing_export
from physics_tf.lightcurves.dataset import (
    META_FEATURES, OTHER_CODES, PLASTICC_CLASSES, LabelLookup, LightCurveDataset, check_float32, collate_lightcurves,
    meta_matrix,
)
from physics_tf.lightcurves.hdf5 import cache_is_fresh, convert_plasticc_csv, read_lightcurves_h5
from physics_tf.lightcurves.io import META_COLUMNS, LightCurves
from physics_tf.lightcurves.streaming import LightCurveStream, file_info

__all__ = ["PLASTICC_CLASSES", "META_FEATURES", "LightCurveDataset", "LightCurveDataModule", "collate_lightcurves",
           "meta_matrix"]

log = logging.getLogger(__name__)

_NOT_FOUND = ("file not found (generated data: run `python pipelines/generate.py gen=lightcurves_sim`; your own: "
              "set data.files)")
_PREDICT_OPTIONS = ("metadata", "cache_dir")


def _paths(spec: Any, key: str) -> list[str]:
    """A path, a glob or a list of them → the files, globs expanded (sorted) in the order given."""
    out: list[str] = []
    for pattern in [spec] if isinstance(spec, (str, os.PathLike)) else list(spec):
        pattern = os.path.expanduser(str(pattern))
        hits = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        if not hits:
            raise DataError(pattern, "no file matches this pattern", key)
        for p in hits:
            if not Path(p).is_file():
                raise DataError(p, _NOT_FOUND, key)
        out.extend(h for h in hits if h not in out)
    return out


class LightCurveDataModule(StreamingDataModule):
    """Train/val/test loaders of padded light-curve batches, and prediction batches over any files.

    Parameters
    ----------
    files
        ``{train: X, val: X, test: X}``, X = a ``.h5`` file in our layout (a path, glob or list), or
        ``{lightcurves: <csv, glob or list>, metadata: <metadata csv>}`` in either PLAsTiCC layout (add
        ``partial_metadata: true`` when the metadata file also lists objects of light-curve files not given, as
        PLAsTiCC's test metadata does for one of its 11 files); a missing / null split has no loader.
    classes
        PLAsTiCC class codes in label-index order (e.g. ``[90, 42, ...]``); an object of another class is an
        error. Known from the config alone, so the model can be built before :meth:`setup`.
    class_names
        Names in the same order (default ``"<name>_<code>"`` from :data:`PLASTICC_CLASSES`).
    label_map
        Codes replaced before the lookup, on top of 991–995 → 99 (the unblinded test set's "other" classes).
    meta_features
        Names from :data:`META_FEATURES` forming the ``meta`` vector.
    max_length
        Most observations per object (see the module docstring for which are kept).
    val_fraction
        With no ``files.val``: this fraction of the training objects (a fixed random subset, by ``seed``) is
        the validation split.
    truncate_prob, drop_prob, flux_noise
        Training augmentations (module docstring).
    batch_size, num_workers, pin_memory, seed
        Loader settings.
    cache_dir
        Where CSV inputs are converted to HDF5 (default: next to the CSV file).
    chunk_rows
        Rows per chunk when streaming a CSV.
    chunk_objects
        Objects read at once when streaming the test split or predicting.
    """

    def __init__(self, files: Mapping[str, Any], classes: Sequence[int], class_names: Sequence[str] | None = None,
                 label_map: Mapping[int, int] | None = None,
                 meta_features: Sequence[str] = ("hostgal_photoz", "hostgal_photoz_err", "mwebv", "ddf", "distmod",
                                                 "extragalactic"),
                 max_length: int = 256, val_fraction: float = 0.0, truncate_prob: float = 0.5,
                 drop_prob: float = 0.1, flux_noise: float = 0.3, batch_size: int = 64, num_workers: int = 0,
                 pin_memory: bool = False, seed: int = 0, cache_dir: str | None = None, chunk_rows: int = 1_000_000,
                 chunk_objects: int = 4096):
        super().__init__()
        self.files = files or {}
        self.classes = [int(c) for c in classes]
        if len(set(self.classes)) != len(self.classes) or len(self.classes) < 2:
            raise ConfigError("<config>", f"need at least 2 distinct class codes, got {self.classes}", "classes")
        names = class_names
        self.class_names = [str(n) for n in names] if names else [
            f"{PLASTICC_CLASSES.get(c, 'class')}_{c}" for c in self.classes]
        if len(self.class_names) != len(self.classes):
            raise ConfigError("<config>", f"{len(self.class_names)} class_names for {len(self.classes)} classes",
                              "class_names")
        self.label_map = {**OTHER_CODES, **{int(k): int(v) for k, v in (label_map or {}).items()}}
        self.labels = LabelLookup(self.classes, self.label_map)
        self.meta_features = list(meta_features)
        for name in self.meta_features:
            if name not in META_FEATURES:
                raise ConfigError("<config>", f"unknown metadata feature {name!r}; known: {sorted(META_FEATURES)}",
                                  "meta_features")
        self.max_length = int(max_length)
        self.val_fraction = float(val_fraction)
        self.augment = {"truncate_prob": float(truncate_prob), "drop_prob": float(drop_prob),
                        "flux_noise": float(flux_noise)}
        self.batch_size, self.num_workers = int(batch_size), int(num_workers)
        self.pin_memory, self.seed = bool(pin_memory), int(seed)
        self.cache_dir, self.chunk_rows, self.chunk_objects = cache_dir, int(chunk_rows), int(chunk_objects)

    @property
    def model_dims(self) -> dict[str, int]:
        return {"num_classes": len(self.classes), "meta_dim": len(self.meta_features), "num_bands": 6}

    # export hook (no file is read): a padded batch of plausible network inputs and their ONNX dynamic axes, for
    # physics_tf.training.export and the model tests (:mod:`physics_tf.lightcurves.export`)
    example_batch = wing_export.example_batch
    onnx_dynamic_axes = wing_export.DYNAMIC_AXES

    @property
    def task_kwargs(self) -> dict[str, object]:
        return {"class_names": list(self.class_names), "class_codes": list(self.classes)}

    def split_counts(self, split: str) -> dict[str, int]:
        """``num_entries``: the objects of the split, each of which the test stage must see exactly once (the
        loaders pad the ranks with repeats; :func:`physics_tf.tasks.metrics.sample_counts`)."""
        dataset = self.datasets.get(split)
        if dataset is None:
            return {}
        return {"num_entries": int(dataset.num_entries if isinstance(dataset, LightCurveStream) else len(dataset))}

    # ------------------------------------------------------------------ files
    def _sources(self, split: str) -> list[tuple[str, str | None, str | None]]:
        """``(h5 path, light-curve csv, metadata csv)`` of each file of the split (CSV: its cache path)."""
        spec = self.files.get(split)
        if not spec:
            return []
        if isinstance(spec, Mapping):
            if not {"lightcurves", "metadata"} <= set(spec):
                raise ConfigError("<config>", "expected .h5 path(s) or {lightcurves: csv(s), metadata: csv}",
                                  f"files.{split}")
            meta = _paths(spec["metadata"], f"files.{split}.metadata")
            if len(meta) != 1:
                raise ConfigError("<config>", f"one metadata file per split, got {meta}", f"files.{split}.metadata")
            return [(self._cache_path(csv), csv, meta[0])
                    for csv in _paths(spec["lightcurves"], f"files.{split}.lightcurves")]
        return [(h5, None, None) for h5 in _paths(spec, f"files.{split}")]

    def _cache_path(self, csv: str, cache_dir: str | None = None) -> str:
        out_dir = Path(os.path.expanduser(cache_dir or self.cache_dir or "")) if (cache_dir or self.cache_dir) \
            else Path(csv).parent
        name = Path(csv).name.removesuffix(".gz")
        return str(out_dir / f"{Path(name).stem}.h5")  # x.csv, x.csv.gz → x.h5

    def _convert(self, sources: Sequence[tuple[str, str | None, str | None]], partial: bool) -> None:
        """Convert the CSVs of ``sources`` whose cache is missing or stale; the metadata file is read once."""
        from physics_tf.lightcurves.metadata import read_metadata_csv

        for _, csv, meta in sources:
            if csv is not None:
                check_directory(Path(csv).parent)  # a generated directory must be complete (its manifest)
        stale = [(h5, csv, meta) for h5, csv, meta in sources if csv is not None and not cache_is_fresh(h5, csv, meta)]
        tables: dict[str, dict[str, np.ndarray]] = {}
        for h5, csv, meta in stale:
            if meta not in tables:
                log.info("reading metadata %s", meta)
                tables[meta] = read_metadata_csv(meta, chunk_rows=self.chunk_rows)
            log.info("converting %s + %s -> %s", csv, meta, h5)
            Path(h5).parent.mkdir(parents=True, exist_ok=True)
            convert_plasticc_csv(csv, meta, h5, self.chunk_rows, partial or len(sources) > 1, tables[meta])
        if stale and not partial and len(sources) > 1:  # the metadata must have observations in some file
            import h5py

            ids = []
            for h5, _, _ in sources:
                with h5py.File(h5, "r") as f:
                    ids.append(f["object_id"][:])
            meta = stale[0][2]
            missing = np.setdiff1d(tables[meta]["object_id"], np.concatenate(ids))
            if len(missing):
                raise DataError(meta, f"object_id {int(missing[0])} has no observations in any of the "
                                f"{len(sources)} light-curve files (partial_metadata: true accepts that)", "object_id")

    def prepare_data(self) -> None:
        """Convert the CSV splits to HDF5 (each light-curve file once; again when a source changed)."""
        for split, spec in self.files.items():
            if isinstance(spec, Mapping):
                self._convert(self._sources(split), bool(spec.get("partial_metadata", False)))

    def _split_files(self, split: str) -> list[str]:
        sources = self._sources(split)
        if any(csv is not None for _, csv, _ in sources):
            self._convert(sources, bool(self.files[split].get("partial_metadata", False)))
        for h5, _, _ in sources:
            check_directory(Path(h5).parent)  # a generated directory must be complete (its manifest)
        return [h5 for h5, _, _ in sources]

    def _load(self, split: str) -> tuple[LightCurves, np.ndarray, np.ndarray, str]:
        """A training / validation split in memory: objects, label indices, metadata features, a name for logs."""
        parts, labels, files = [], [], self._split_files(split)
        for path in files:
            lc = read_lightcurves_h5(path)
            check_float32(lc, path)
            info = file_info(path)
            labels.append(self.labels(lc.meta.get("target") if info["has_target"] else None, lc.object_id,
                                      lc.meta_line, info))
            parts.append(lc)
        lc = parts[0] if len(parts) == 1 else LightCurves.concatenate(parts)
        name = ", ".join(files) if len(files) <= 2 else f"{len(files)} files"
        return lc, np.concatenate(labels), meta_matrix(lc, self.meta_features, name), name

    def _stream(self, files: Sequence[str], predict: bool, observers: Sequence[str] = (), batch_size: int | None = None
                ) -> LightCurveStream:
        rank, world = self._rank_world()
        return LightCurveStream(files, batch_size or self.batch_size, max_length=self.max_length,
                                meta_features=self.meta_features, labels=None if predict else self.labels,
                                predict=predict, observers=observers, chunk_objects=self.chunk_objects,
                                rank=rank, world_size=world)

    def setup(self, stage: str | None = None) -> None:
        splits = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}.get(
            stage, ("train", "val", "test"))
        for split in splits:
            if split in self.datasets:
                if split == "test":
                    self.datasets[split].set_distributed(*self._rank_world())
                continue
            source = "train" if split == "val" and not self.files.get("val") and self.val_fraction > 0 else split
            if not self.files.get(source):
                continue
            if split == "test":  # streamed over all its files
                stream = self._stream(self._split_files("test"), predict=False)
                stream.check_labels()
                self.datasets["test"] = stream
                log.info("test: %d files, %d objects, %d batches per rank (rank %d of %d)", len(stream.files),
                         stream.num_entries, len(stream), stream.rank, stream.world_size)
                continue
            lc, labels, meta, name = self._load(source)
            if self.val_fraction > 0 and not self.files.get("val") and source == "train":
                perm = np.random.default_rng(self.seed).permutation(len(lc))
                n_val = max(1, int(round(self.val_fraction * len(lc))))
                idx = np.sort(perm[:n_val] if split == "val" else perm[n_val:])
                lc, labels, meta = lc.select(idx), labels[idx], meta[idx]
            train = split == "train"
            self.datasets[split] = LightCurveDataset(lc, labels, meta, self.max_length, train=train, seed=self.seed,
                                                     **(self.augment if train else {}))
            log.info("%s: %s, %d objects, %d observations", split, name, len(lc), int(lc.offsets[-1]))

    def _loader(self, split: str) -> EpochMapDataLoader | EpochDataLoader:
        if split not in self.datasets:
            self.setup({"train": "fit", "val": "validate", "test": "test"}[split])
        if split not in self.datasets:
            raise DataError("<config>", f"data.files.{split} is not set; cannot build the {split} loader", f"files.{split}")
        if split == "test":
            return EpochDataLoader(self.datasets[split], self._current_epoch, num_workers=self.num_workers,
                                   pin_memory=self.pin_memory)
        train = split == "train"
        return EpochMapDataLoader(self.datasets[split], self._current_epoch, seed=self.seed,
                                  batch_size=self.batch_size, shuffle=train, drop_last=False,
                                  collate_fn=collate_lightcurves, num_workers=self.num_workers,
                                  persistent_workers=self.num_workers > 0, pin_memory=self.pin_memory)

    # ------------------------------------------------------------------ predict (contract: training/predict.py)
    def _options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(options) - set(_PREDICT_OPTIONS))
        if unknown:
            raise ConfigError("<config>", f"unknown option for light-curve predict (known: {list(_PREDICT_OPTIONS)})",
                              unknown[0])
        return dict(options)

    def predict_files(self, files: Sequence[str], **options) -> list[str]:
        """The user's paths / globs → the ordered input files (each pattern sorted, the patterns' order kept):
        ``.h5`` files in our layout or PLAsTiCC light-curve CSVs (then ``metadata=<metadata csv>``)."""
        options = self._options(options)
        files = expand_files(list(files))
        self._present = set.intersection(*(self._columns(f, options) for f in files))  # for default_observers
        return files

    def _columns(self, path: str, options: Mapping[str, Any]) -> set[str]:
        """The observer names a predict input has (headers only)."""
        if str(path).endswith((".h5", ".hdf5")):
            info = file_info(path)
            return {"object_id", *info["meta"], *(["target"] if info["has_target"] else [])}
        if not options.get("metadata"):
            raise ConfigError("<config>", f"light-curve CSV {path} needs its metadata file: set the predict option "
                              "metadata=<metadata csv>", "metadata")
        from physics_tf.lightcurves.metadata import metadata_columns

        return {"object_id", "gal_l", "gal_b", *metadata_columns(_paths(options["metadata"], "metadata")[0])}

    def predict_dataloader(self, files: Sequence[str], observers: Sequence[str] | None = None, *,
                           batch_size: int | None = None, num_workers: int | None = None,
                           **options) -> Iterable[dict]:
        """Batches over ``files`` in file then object order, each object once (``pred_entry``: its position in its
        file), streamed; CSVs are converted to HDF5 caches first (once; ``cache_dir`` option, else data.cache_dir,
        else next to the CSV). ``observers=None``: :meth:`default_observers` that every file has."""
        options = self._options(options)
        csvs = [f for f in files if not str(f).endswith((".h5", ".hdf5"))]
        if csvs and not options.get("metadata"):
            raise ConfigError("<config>", f"light-curve CSV {csvs[0]} needs its metadata file: set the predict "
                              "option metadata=<metadata csv>", "metadata")
        meta = _paths(options["metadata"], "metadata")[0] if csvs else None
        sources = [(self._cache_path(str(f), options.get("cache_dir")), str(f), meta) if f in csvs
                   else (str(f), None, None) for f in files]
        self._convert([s for s in sources if s[1] is not None], partial=True)
        h5s = [h5 for h5, _, _ in sources]
        if observers is None:
            self._present = set.intersection(*(self._columns(h5, {}) for h5 in h5s)) if h5s else set()
            observers = self.default_observers()
        stream = self._stream(h5s, predict=True, observers=observers, batch_size=batch_size)
        return EpochDataLoader(stream, lambda: 0, num_workers=self.num_workers if num_workers is None else num_workers,
                               pin_memory=self.pin_memory)

    def default_observers(self) -> list[str]:
        """``object_id``, the PLAsTiCC metadata columns and ``target`` (the class code as written: true_target in
        the unblinded layout), those that every file of the last :meth:`predict_files` has (a blinded metadata
        file: no ``target``)."""
        names = ["object_id", *META_COLUMNS[1:-1], "target"]
        present = getattr(self, "_present", None)
        return names if present is None else [n for n in names if n in present]
