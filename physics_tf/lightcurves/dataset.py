"""Objects → batches: the metadata features, one object's (possibly augmented) arrays, padding, and labels.

Shared by the in-memory training dataset (:class:`LightCurveDataset`) and the streamed evaluation / prediction
dataset (:mod:`physics_tf.lightcurves.streaming`); the batch fields are listed in :mod:`physics_tf.lightcurves.data`.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from physics_tf.data.errors import ConfigError, DataError, UnknownLabelError
from physics_tf.lightcurves.io import LightCurves, window

__all__ = ["PLASTICC_CLASSES", "OTHER_CODES", "META_FEATURES", "meta_matrix", "object_item", "LightCurveDataset",
           "collate_lightcurves", "check_float32", "LabelLookup"]

PLASTICC_CLASSES = {90: "SNIa", 67: "SNIa-91bg", 52: "SNIax", 42: "SNII", 62: "SNIbc", 95: "SLSN-I", 15: "TDE",
                    64: "KN", 88: "AGN", 92: "RRLyrae", 65: "Mdwarf", 16: "EB", 53: "Mira", 6: "mu-Lens-Single",
                    99: "other"}
#: the unblinded test set's codes of the classes that exist only there (991 ILOT, 992 CaRT, 993 PISN, 994 μ-lens
#: binary, 995 μ-lens from strings): all "other" (99) unless data.label_map says otherwise
OTHER_CODES = {991: 99, 992: 99, 993: 99, 994: 99, 995: 99}

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


def check_float32(lc: LightCurves, source: str) -> None:
    """One-line error when an object's values do not fit float32, the precision the models run in."""
    for col in ("mjd", "flux", "flux_err"):  # mjd: relative times
        v = lc.obs[col] - (lc.obs[col].min() if col == "mjd" and len(lc.obs[col]) else 0.0)
        bad = ~np.isfinite(v) | (np.abs(v) > np.finfo(np.float32).max)
        if bad.any():
            k = int(np.searchsorted(lc.offsets, int(np.flatnonzero(bad)[0]), side="right") - 1)
            raise DataError(source, f"object_id {int(lc.object_id[k])}: value not finite in float32", col)


def object_item(o: Mapping[str, np.ndarray], max_length: int, rng: np.random.Generator | None = None,
                truncate_prob: float = 0.0, drop_prob: float = 0.0, flux_noise: float = 0.0) -> dict[str, Any]:
    """One object's arrays as the model sees them: augmented when ``rng`` is given, at most ``max_length``
    observations (a random window with ``rng``, else the one centred on the highest S/N), times from its first
    kept observation, and the time of its first detection."""
    mjd, band, flux, err, det = o["mjd"], o["passband"], o["flux"], o["flux_err"], o["detected"]
    if rng is not None:
        keep = np.ones(len(mjd), bool)
        if truncate_prob > 0 and rng.random() < truncate_prob:
            t_det = mjd[np.argmax(det > 0)] if det.any() else mjd[0]
            keep &= mjd <= t_det + rng.uniform(0.0, mjd[-1] - t_det + 1e-9)
        if drop_prob > 0:
            keep &= rng.random(len(mjd)) >= drop_prob
        if not keep.any():
            keep[int(rng.integers(len(mjd)))] = True
        mjd, band, flux, err, det = (a[keep] for a in (mjd, band, flux, err, det))
        if flux_noise > 0:
            flux = flux + rng.normal(0.0, 1.0, len(flux)) * flux_noise * err
            err = err * np.sqrt(1.0 + flux_noise**2)
    if len(mjd) > max_length:
        if rng is not None:
            a = int(rng.integers(0, len(mjd) - max_length + 1))
            b = a + max_length
        else:
            a, b = window(flux, err, max_length, "peak")
        mjd, band, flux, err, det = (x[a:b] for x in (mjd, band, flux, err, det))
    t = mjd - mjd[0]  # float64 difference first: MJD ~ 6e4 loses precision in float32
    first_det = float(t[np.argmax(det > 0)]) if det.any() else float(t[-1])
    return {"time": t, "flux": flux, "flux_err": err, "band": band, "aux_first_detection": first_det}


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
        self.augment = {"truncate_prob": float(truncate_prob), "drop_prob": float(drop_prob),
                        "flux_noise": float(flux_noise)}

    def __len__(self) -> int:
        return len(self.lc)

    def set_epoch(self, epoch: int) -> None:
        """The epoch whose augmentation draws ``__getitem__`` makes."""
        self._epoch.value = int(epoch)

    def __getitem__(self, i: int) -> dict[str, Any]:
        rng = np.random.default_rng([self.seed, int(self._epoch.value), int(i)]) if self.train else None
        item = object_item(self.lc.object(i), self.max_length, rng, **(self.augment if self.train else {}))
        return {**item, "meta": self.meta[i], "y": self.labels[i], "aux_object_id": self.lc.object_id[i],
                "aux_index": int(i)}


def collate_lightcurves(items: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
    """Pad a list of objects to the longest one: see :mod:`physics_tf.lightcurves.data` for the fields (``y``
    only when the items have one)."""
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
    if "y" in items[0]:
        out["y"] = torch.tensor([int(it["y"]) for it in items], dtype=torch.long)
    out["aux_first_detection"] = torch.tensor([it["aux_first_detection"] for it in items], dtype=torch.float32)
    out["aux_object_id"] = torch.tensor([int(it["aux_object_id"]) for it in items], dtype=torch.long)
    out["aux_index"] = torch.tensor([int(it["aux_index"]) for it in items], dtype=torch.long)  # (B,) within the split
    return out


class LabelLookup:
    """Class codes → label indices (``label_map`` applied first); an unknown code is a one-line error naming the
    metadata CSV, its line, the object and the column the code was read from (the cache only in parentheses)."""

    def __init__(self, classes: Sequence[int], label_map: Mapping[int, int]):
        self.classes = [int(c) for c in classes]
        self.label_map = {int(k): int(v) for k, v in label_map.items()}
        self._codes = np.array(sorted(self.label_map), np.int64)
        self._values = np.array([self.label_map[int(c)] for c in self._codes], np.int64)
        self._lut = {c: i for i, c in enumerate(self.classes)}

    def __call__(self, target: np.ndarray | None, object_id: np.ndarray, meta_line: np.ndarray | None,
                 info: Mapping[str, str]) -> np.ndarray:
        """``info``: the file's ``path`` (HDF5), and when converted from CSV ``metadata_source`` and
        ``target_column`` (:func:`physics_tf.lightcurves.streaming.file_info`)."""
        csv, column = info.get("metadata_source") or "", info.get("target_column")
        column = "target" if column is None else column
        if target is None or (csv and not column):
            raise DataError(csv or info["path"], "no class column (true_target / target): unlabelled data cannot "
                            "be used for training / testing (predict needs none)", "target")
        code = np.asarray(target, np.int64)
        if len(self._codes):
            pos = np.clip(np.searchsorted(self._codes, code), 0, len(self._codes) - 1)
            code = np.where(self._codes[pos] == code, self._values[pos], code)
        bad = ~np.isin(code, self.classes)
        if bad.any():
            k = int(np.flatnonzero(bad)[0])
            mapped = f" (code {int(target[k])} mapped to {int(code[k])} by data.label_map)" \
                if int(target[k]) != int(code[k]) else ""
            what = f"object_id {int(object_id[k])}: {column} {int(code[k])}{mapped} is not in data.classes {self.classes}"
            if csv:
                line = f"line {int(meta_line[k])}: " if meta_line is not None else ""
                raise UnknownLabelError(csv, f"{line}{what} (cached in {info['path']})", column)
            raise UnknownLabelError(info["path"], what, column)
        return np.array([self._lut[int(c)] for c in code], np.int64)
