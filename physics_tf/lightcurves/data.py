"""Lightning data module for light-curve classification (PLAsTiCC layout or our HDF5 layout), built by Hydra.

Each split is a file in our HDF5 layout (``*.h5``) or a pair ``{lightcurves: *_set.csv, metadata: *_metadata.csv}``
in the PLAsTiCC layout, which :meth:`LightCurveDataModule.prepare_data` converts once (streaming) to
``<cache_dir>/<csv stem>.h5``. The objects of a split are held in memory as flat arrays + offsets (PLAsTiCC's
training set: 7,848 objects, 1.4 M observations ≈ 60 MB); batches are padded to the longest light curve of
the batch (at most ``max_length``).

Batch fields (batch contract of :mod:`physics_tf.tasks.base`)::

    flux, flux_err (B, L) float32   raw difference fluxes (the models normalise them)
    time          (B, L) float32   days since the first kept observation of the object
    band          (B, L) int64     passband 0–5
    mask          (B, L) bool      True = real observation; real observations come first, in time order
    meta          (B, M) float32   metadata features (``meta_features``)
    y             (B,)   int64     class index
    aux_first_detection (B,) float32   time of the first detection (days, same origin as ``time``)

Augmentations (training split only, a fresh draw every time an object is served, from a generator seeded by
(``seed``, epoch, object index), so they are reproducible, independent of DataLoader workers, and draw nothing from
the global RNG — a run resumed mid-epoch sees the same augmented objects and dropout draws as one that never
stopped; the loader is :class:`physics_tf.data.loaders.EpochMapDataLoader`): random truncation of the observed
window to end ``U(0, span)`` days after the first detection (probability ``truncate_prob``; early
classification), dropping each observation with probability ``drop_prob``, and extra flux noise
N(0, (``flux_noise``·σ)²) with σ inflated to σ·sqrt(1 + flux_noise²). Light curves longer than ``max_length`` keep a random window (train) or the window
centred on the highest-S/N observation (val / test).

Under DDP Lightning inserts a ``DistributedSampler`` (map-style dataset), which pads the val/test sets to a
multiple of the world size.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import Dataset

from physics_tf.data.loaders import EpochMapDataLoader, trainer_epoch
from physics_tf.data.errors import ConfigError, DataError, UnknownLabelError
from physics_tf.data.manifest import check_directory
from physics_tf.lightcurves.hdf5 import convert_plasticc_csv, read_lightcurves_h5
from physics_tf.lightcurves.io import LightCurves, window
from physics_tf.lightcurves import export as wing_export

__all__ = ["PLASTICC_CLASSES", "META_FEATURES", "LightCurveDataset", "LightCurveDataModule", "collate_lightcurves",
           "meta_matrix"]

log = logging.getLogger(__name__)

PLASTICC_CLASSES = {90: "SNIa", 67: "SNIa-91bg", 52: "SNIax", 42: "SNII", 62: "SNIbc", 95: "SLSN-I", 15: "TDE",
                    64: "KN", 88: "AGN", 92: "RRLyrae", 65: "Mdwarf", 16: "EB", 53: "Mira", 6: "mu-Lens-Single",
                    99: "other"}

#: metadata features: name → (column, subtract, multiply); NaN (e.g. Galactic distmod) becomes 0 after scaling.
#: ``extragalactic`` is 1 where hostgal_photoz > 0 (PLAsTiCC sets photo-z = 0 for Galactic objects).
META_FEATURES = {"hostgal_photoz": ("hostgal_photoz", 0.0, 1.0),
                 "hostgal_photoz_err": ("hostgal_photoz_err", 0.0, 5.0),
                 "mwebv": ("mwebv", 0.0, 5.0),
                 "ddf": ("ddf", 0.0, 1.0),
                 "distmod": ("distmod", 40.0, 0.2),
                 "extragalactic": ("hostgal_photoz", 0.0, 1.0)}


def meta_matrix(lc: LightCurves, features: Sequence[str], source: str = "<data>") -> np.ndarray:
    """(N, M) float32 metadata features of ``lc`` (see :data:`META_FEATURES`)."""
    cols = []
    for name in features:
        if name not in META_FEATURES:
            raise ConfigError("<config>", f"unknown metadata feature {name!r}; known: {sorted(META_FEATURES)}",
                              "meta_features")
        col, sub, mul = META_FEATURES[name]
        if col not in lc.meta:
            raise DataError(source, "metadata column needed by meta_features is missing", col)
        v = lc.meta[col].astype(np.float64)
        v = (v > 0).astype(np.float64) if name == "extragalactic" else (v - sub) * mul
        cols.append(np.nan_to_num(v, nan=0.0, posinf=0.0, neginf=0.0))
    return np.stack(cols, axis=1).astype(np.float32) if cols else np.zeros((len(lc), 0), np.float32)


class LightCurveDataset(Dataset):
    """Objects of one split; ``__getitem__`` returns one object's (possibly augmented) variable-length arrays."""

    def __init__(self, lc: LightCurves, labels: np.ndarray, meta: np.ndarray, max_length: int = 256,
                 train: bool = False, truncate_prob: float = 0.0, drop_prob: float = 0.0, flux_noise: float = 0.0,
                 seed: int = 0):
        self.lc, self.labels, self.meta = lc, labels, meta
        self.seed = int(seed)
        # shared with DataLoader workers (also persistent ones): set_epoch() in the main process is seen there
        self._epoch = multiprocessing.get_context().RawValue("q", 0)
        self.max_length = int(max_length)
        self.train = bool(train)
        self.truncate_prob, self.drop_prob, self.flux_noise = float(truncate_prob), float(drop_prob), float(flux_noise)

    def __len__(self) -> int:
        return len(self.lc)

    def set_epoch(self, epoch: int) -> None:
        """The epoch whose augmentation draws ``__getitem__`` makes."""
        self._epoch.value = int(epoch)

    def __getitem__(self, i: int) -> dict[str, Any]:
        o = self.lc.object(i)
        mjd, band, flux, err, det = o["mjd"], o["passband"], o["flux"], o["flux_err"], o["detected"]
        keep = np.ones(len(mjd), bool)
        rng = np.random.default_rng([self.seed, int(self._epoch.value), int(i)]) if self.train else None
        if rng is not None:
            if self.truncate_prob > 0 and rng.random() < self.truncate_prob:
                t_det = mjd[np.argmax(det > 0)] if det.any() else mjd[0]
                keep &= mjd <= t_det + rng.uniform(0.0, mjd[-1] - t_det + 1e-9)
            if self.drop_prob > 0:
                keep &= rng.random(len(mjd)) >= self.drop_prob
            if not keep.any():
                keep[int(rng.integers(len(mjd)))] = True
        mjd, band, flux, err, det = (a[keep] for a in (mjd, band, flux, err, det))
        if rng is not None and self.flux_noise > 0:
            flux = flux + rng.normal(0.0, 1.0, len(flux)) * self.flux_noise * err
            err = err * np.sqrt(1.0 + self.flux_noise**2)
        if len(mjd) > self.max_length:
            if rng is not None:
                a = int(rng.integers(0, len(mjd) - self.max_length + 1))
                b = a + self.max_length
            else:
                a, b = window(flux, err, self.max_length, "peak")
            mjd, band, flux, err, det = (x[a:b] for x in (mjd, band, flux, err, det))
        t = mjd - mjd[0]  # float64 difference first: MJD ~ 6e4 loses precision in float32
        first_det = float(t[np.argmax(det > 0)]) if det.any() else float(t[-1])
        return {"time": t, "flux": flux, "flux_err": err, "band": band, "meta": self.meta[i], "y": self.labels[i],
                "aux_first_detection": first_det, "aux_object_id": self.lc.object_id[i], "aux_index": int(i)}


def collate_lightcurves(items: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
    """Pad a list of objects to the longest one: see the module docstring for the fields."""
    n = len(items)
    L = max(len(it["time"]) for it in items)
    out = {k: torch.zeros(n, L, dtype=torch.float32) for k in ("time", "flux", "flux_err")}
    out["band"] = torch.zeros(n, L, dtype=torch.long)
    out["mask"] = torch.zeros(n, L, dtype=torch.bool)
    for j, it in enumerate(items):
        m = len(it["time"])
        for k in ("time", "flux", "flux_err"):
            out[k][j, :m] = torch.from_numpy(np.asarray(it[k], dtype=np.float32))
        out["band"][j, :m] = torch.from_numpy(np.asarray(it["band"], dtype=np.int64))
        out["mask"][j, :m] = True
    out["meta"] = torch.from_numpy(np.stack([np.asarray(it["meta"], np.float32) for it in items]))  # (B, M)
    out["y"] = torch.tensor([int(it["y"]) for it in items], dtype=torch.long)
    out["aux_first_detection"] = torch.tensor([it["aux_first_detection"] for it in items], dtype=torch.float32)
    out["aux_object_id"] = torch.tensor([int(it["aux_object_id"]) for it in items], dtype=torch.long)
    out["aux_index"] = torch.tensor([int(it["aux_index"]) for it in items], dtype=torch.long)  # (B,) within the split
    return out


class LightCurveDataModule(pl.LightningDataModule):
    """Train/val/test loaders of padded light-curve batches.

    Parameters
    ----------
    files
        ``{train: X, val: X, test: X}``, X = path of an ``.h5`` file in our layout, or
        ``{lightcurves: <*_set.csv>, metadata: <*_metadata.csv>}`` (add ``partial_metadata: true`` when the
        metadata file also lists objects of other light-curve files, as PLAsTiCC's test set does); a missing /
        null split has no loader.
    classes
        PLAsTiCC class codes in label-index order (e.g. ``[90, 42, ...]``); an object of another class is an
        error. Known from the config alone, so the model can be built before :meth:`setup`.
    class_names
        Names in the same order (default ``"<name>_<code>"`` from :data:`PLASTICC_CLASSES`).
    label_map
        Codes replaced before the lookup, e.g. ``{991: 99, 992: 99, 993: 99, 994: 99}`` for the unblinded
        PLAsTiCC test set, whose "other" objects carry the codes 991–994.
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
    """

    def __init__(self, files: Mapping[str, Any], classes: Sequence[int], class_names: Sequence[str] | None = None,
                 label_map: Mapping[int, int] | None = None,
                 meta_features: Sequence[str] = ("hostgal_photoz", "hostgal_photoz_err", "mwebv", "ddf", "distmod",
                                                 "extragalactic"),
                 max_length: int = 256, val_fraction: float = 0.0, truncate_prob: float = 0.5,
                 drop_prob: float = 0.1, flux_noise: float = 0.3, batch_size: int = 64, num_workers: int = 0,
                 pin_memory: bool = False, seed: int = 0, cache_dir: str | None = None, chunk_rows: int = 1_000_000):
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
        self.label_map = {int(k): int(v) for k, v in (label_map or {}).items()}
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
        self.cache_dir, self.chunk_rows = cache_dir, int(chunk_rows)
        self.datasets: dict[str, LightCurveDataset] = {}

    # ------------------------------------------------------------------ from config, no I/O
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
        """``num_entries``: the objects of the split, each of which the test stage must see exactly once (a
        DistributedSampler pads the ranks with repeats; :func:`physics_tf.tasks.metrics.sample_counts`)."""
        dataset = self.datasets.get(split)
        return {} if dataset is None else {"num_entries": len(dataset)}

    # ------------------------------------------------------------------ files
    def _h5_path(self, split: str) -> str | None:
        spec = self.files.get(split)
        if not spec:
            return None
        if isinstance(spec, (str, os.PathLike)):
            return os.path.expanduser(spec)
        if not isinstance(spec, Mapping) or not {"lightcurves", "metadata"} <= set(spec):
            raise ConfigError("<config>", "expected a .h5 path or {lightcurves: csv, metadata: csv}", f"files.{split}")
        csv = Path(os.path.expanduser(spec["lightcurves"]))
        out_dir = Path(self.cache_dir) if self.cache_dir else csv.parent
        return str(out_dir / f"{csv.stem}.h5")

    def prepare_data(self) -> None:
        """Convert CSV splits to HDF5 (once; redone when the CSV is newer than the HDF5 file)."""
        for split, spec in self.files.items():
            if not spec or isinstance(spec, (str, os.PathLike)):
                continue
            out = Path(self._h5_path(split))
            csv, meta = (Path(os.path.expanduser(spec[k])) for k in ("lightcurves", "metadata"))
            for p, field in ((csv, "lightcurves"), (meta, "metadata")):
                if not p.is_file():
                    raise DataError(p, "file not found (generated data: run `python pipelines/generate.py "
                                    "gen=lightcurves_sim`; your own: set data.files)", f"files.{split}.{field}")
            check_directory(csv.parent)  # a generated directory must be complete (its manifest)
            if out.is_file() and out.stat().st_mtime >= max(csv.stat().st_mtime, meta.stat().st_mtime):
                continue
            log.info("converting %s + %s -> %s", csv, meta, out)
            convert_plasticc_csv(csv, meta, out, self.chunk_rows, bool(spec.get("partial_metadata", False)))

    def _load(self, split: str) -> tuple[LightCurves, np.ndarray, np.ndarray, str]:
        path = self._h5_path(split)
        if not Path(path).is_file():
            if isinstance(self.files.get(split), Mapping):
                self.prepare_data()
            else:
                raise DataError(path, "file not found (generated data: run `python pipelines/generate.py "
                                "gen=lightcurves_sim`; your own: set data.files)", f"files.{split}")
        check_directory(Path(path).parent)  # a generated directory must be complete (its manifest)
        lc = read_lightcurves_h5(path)
        for col in ("mjd", "flux", "flux_err"):  # the models run in float32 (mjd: relative times)
            v = lc.obs[col] - (lc.obs[col].min() if col == "mjd" and len(lc.obs[col]) else 0.0)
            bad = ~np.isfinite(v) | (np.abs(v) > np.finfo(np.float32).max)
            if bad.any():
                k = int(np.searchsorted(lc.offsets, int(np.flatnonzero(bad)[0]), side="right") - 1)
                raise DataError(path, f"object_id {int(lc.object_id[k])}: value not finite in float32", col)
        target = lc.target
        if target is None:
            raise DataError(path, "no target column (unlabelled data cannot be used for training / testing)",
                            "target")
        if self.label_map:
            target = np.array([self.label_map.get(int(t), int(t)) for t in target], dtype=np.int64)
        lut = {c: i for i, c in enumerate(self.classes)}
        bad = ~np.isin(target, self.classes)
        if bad.any():
            k = int(np.flatnonzero(bad)[0])
            spec = self.files.get(split)  # a CSV split: blame its metadata CSV, where the target is written
            source, cached = (os.path.expanduser(spec["metadata"]), f" (cached in {path})") \
                if isinstance(spec, Mapping) else (path, "")
            raise UnknownLabelError(source, f"object_id {int(lc.object_id[k])}: target {int(target[k])} is not in "
                                    f"data.classes {self.classes}{cached}", "target")
        labels = np.array([lut[int(t)] for t in target], dtype=np.int64)
        return lc, labels, meta_matrix(lc, self.meta_features, path), path

    def setup(self, stage: str | None = None) -> None:
        splits = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}.get(
            stage, ("train", "val", "test"))
        for split in splits:
            if split in self.datasets:
                continue
            source = "train" if split == "val" and not self.files.get("val") and self.val_fraction > 0 else split
            if not self.files.get(source):
                continue
            lc, labels, meta, path = self._load(source)
            if self.val_fraction > 0 and not self.files.get("val") and source == "train":
                perm = np.random.default_rng(self.seed).permutation(len(lc))
                n_val = max(1, int(round(self.val_fraction * len(lc))))
                idx = np.sort(perm[:n_val] if split == "val" else perm[n_val:])
                lc, labels, meta = lc.select(idx), labels[idx], meta[idx]
            train = split == "train"
            self.datasets[split] = LightCurveDataset(lc, labels, meta, self.max_length, train=train, seed=self.seed,
                                                     **(self.augment if train else {}))
            log.info("%s: %s, %d objects, %d observations", split, path, len(lc), int(lc.offsets[-1]))

    def _loader(self, split: str) -> EpochMapDataLoader:
        if split not in self.datasets:
            self.setup({"train": "fit", "val": "validate", "test": "test"}[split])
        if split not in self.datasets:
            raise DataError("<config>", f"data.files.{split} is not set; cannot build the {split} loader", f"files.{split}")
        train = split == "train"
        return EpochMapDataLoader(self.datasets[split], self._current_epoch, seed=self.seed,
                                  batch_size=self.batch_size, shuffle=train, drop_last=False,
                                  collate_fn=collate_lightcurves, num_workers=self.num_workers,
                                  persistent_workers=self.num_workers > 0, pin_memory=self.pin_memory)

    def _current_epoch(self) -> int:
        return trainer_epoch(getattr(self, "trainer", None))

    def train_dataloader(self) -> EpochMapDataLoader:
        return self._loader("train")

    def val_dataloader(self) -> EpochMapDataLoader:
        return self._loader("val")

    def test_dataloader(self) -> EpochMapDataLoader:
        return self._loader("test")
