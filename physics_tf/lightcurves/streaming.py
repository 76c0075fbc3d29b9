"""Streamed batches of light curves over many HDF5 files (our layout), for evaluation (the test split) and predict.

The files form one sequence of N objects (file order, then the order inside each file); objects are read a chunk
(``chunk_objects``) at a time from files kept open for the iteration, so memory stays flat however many and how
large the files are, and an object is always whole (its observations are read with it).

* evaluation (``predict=False``): DDP rank r reads the objects [r·S, (r + 1)·S), S = ceil(N / world_size), taking
  indices past the end modulo N (as ``DistributedSampler`` pads): every rank yields ceil(S / batch_size) batches,
  so collectives cannot hang, and up to world_size − 1 objects are read twice; their ``aux_index`` (position in
  the split) lets the test stage count them once (:mod:`physics_tf.tasks.samples`). Batches carry ``y``.
* prediction (``predict=True``): every object of the given files once, no padding (the predict driver deals files to
  ranks); batches carry ``pred_file`` / ``pred_entry`` / ``pred_valid`` and ``obs/<name>``, no ``y``.

DataLoader workers: batch b of a rank goes to worker b mod num_workers, the order in which a DataLoader collects
them, so the batch order is the same for any number of workers. A single worker reads whole chunks at once.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset

from physics_tf.data.errors import DataError
from physics_tf.data.streaming import worker_slot
from physics_tf.lightcurves.dataset import LabelLookup, check_float32, collate_lightcurves, meta_matrix, object_item
from physics_tf.lightcurves.hdf5 import H5_FORMAT, read_lightcurves_h5
from physics_tf.lightcurves.io import LightCurves

__all__ = ["file_info", "LightCurveStream"]


def file_info(path: str) -> dict[str, Any]:
    """What a stream needs to know of one HDF5 file without reading its objects: ``path``, ``num_objects``, ``meta``
    (its metadata column names), ``has_target``, ``metadata_source`` / ``target_column`` (converted files)."""
    import h5py

    try:
        f = h5py.File(path, "r")
    except (OSError, ValueError) as err:
        raise DataError(path, f"cannot open as HDF5 ({err})") from None
    with f:
        if f.attrs.get("format") != H5_FORMAT or "object_id" not in f:
            raise DataError(path, f"not a physics_tf light-curve file (attribute format = {f.attrs.get('format')!r},"
                            f" expected {H5_FORMAT!r})")
        meta = sorted(f["meta"]) if "meta" in f else []
        info = {"path": str(path), "num_objects": int(f["object_id"].shape[0]),
                "meta": [c for c in meta if c != "target"]}
        for key in ("metadata_source", "target_column"):
            if key in f.attrs:
                info[key] = str(f.attrs[key])
        info["has_target"] = "target" in meta and info.get("target_column", "target") != ""
        return info


class LightCurveStream(IterableDataset):
    """Batches (dicts of tensors) over ``files`` in file order (module docstring).

    ``labels``: the :class:`~physics_tf.lightcurves.dataset.LabelLookup` (evaluation); ``observers``: the names
    copied into prediction batches as ``obs/<name>`` (``object_id``, metadata columns, ``target``).
    """

    def __init__(self, files: Sequence[str], batch_size: int, *, max_length: int, meta_features: Sequence[str],
                 labels: LabelLookup | None = None, predict: bool = False, observers: Sequence[str] = (),
                 chunk_objects: int = 4096, rank: int = 0, world_size: int = 1):
        self.infos = [file_info(str(f)) for f in files]
        self.files = [i["path"] for i in self.infos]
        self.batch_size, self.max_length = int(batch_size), int(max_length)
        self.meta_features, self.labels, self.predict = list(meta_features), labels, bool(predict)
        self.observers = list(observers)
        self.chunk_objects = max(1, int(chunk_objects))
        self._offsets = np.cumsum([0] + [i["num_objects"] for i in self.infos])  # first object of each file
        self.num_entries = int(self._offsets[-1])
        if not predict and labels is None:
            raise ValueError("an evaluation stream needs labels")
        for info in self.infos:
            for name in self.observers:
                if name != "object_id" and name not in info["meta"] and not (name == "target" and info["has_target"]):
                    raise DataError(info["path"], f"observer {name!r} is not a column of this file (it has "
                                    f"{['object_id', *info['meta']] + (['target'] if info['has_target'] else [])})",
                                    name)
        self.set_distributed(rank, world_size)

    def set_distributed(self, rank: int, world_size: int) -> None:
        self.rank, self.world_size = (0, 1) if self.predict else (int(rank), int(world_size))

    def set_epoch(self, epoch: int) -> None:
        """Nothing to do: evaluation and prediction are the same every epoch (the epoch loaders call it)."""

    def _span(self) -> tuple[int, int]:
        """(first object, number of objects) of this rank (module docstring)."""
        span = math.ceil(self.num_entries / self.world_size) if self.num_entries else 0
        return self.rank * span, span

    def __len__(self) -> int:
        return math.ceil(self._span()[1] / self.batch_size)

    def check_labels(self) -> None:
        """Every object's class is known (reads only the class column of each file): fail before evaluating."""
        import h5py

        for info in self.infos:
            with h5py.File(info["path"], "r") as f:
                target = f["meta/target"][:] if info["has_target"] else None
                lines = f["meta_line"][:] if "meta_line" in f else None
                self.labels(target, f["object_id"][:], lines, info)

    # ------------------------------------------------------------------ reading
    def _read(self, handles: dict, g0: int, g1: int) -> list[tuple[int, int, LightCurves]]:
        """Objects ``g0 … g1 − 1`` of the sequence (indices modulo N) as (file index, first entry, objects)."""
        parts, g = [], g0
        while g < g1:
            pos = g % self.num_entries
            f = int(np.searchsorted(self._offsets, pos, side="right")) - 1
            start = pos - int(self._offsets[f])
            take = min(g1 - g, self.infos[f]["num_objects"] - start)
            if f not in handles:  # one file open at a time (files are read in order)
                import h5py

                for h in handles.values():
                    h.close()
                handles.clear()
                handles[f] = h5py.File(self.files[f], "r")
            parts.append((f, start, read_lightcurves_h5(handles[f], start, start + take)))
            g += take
        return parts

    def _batch(self, parts: list[tuple[int, int, LightCurves]], g0: int) -> dict[str, Any]:
        items, extra = [], {"pred_file": [], "pred_entry": [], "obs": {n: [] for n in self.observers}}
        for f, start, lc in parts:
            info = self.infos[f]
            check_float32(lc, info["path"])
            meta = meta_matrix(lc, self.meta_features, info["path"])
            y = None if self.predict else self.labels(lc.meta.get("target") if info["has_target"] else None,
                                                      lc.object_id, lc.meta_line, info)
            for k in range(len(lc)):
                item = object_item(lc.object(k), self.max_length)
                item.update(meta=meta[k], aux_object_id=lc.object_id[k], aux_index=0)
                if y is not None:
                    item["y"] = y[k]
                items.append(item)
            extra["pred_file"].append(np.full(len(lc), f, np.int64))
            extra["pred_entry"].append(start + np.arange(len(lc), dtype=np.int64))
            for name in self.observers:
                extra["obs"][name].append(lc.object_id if name == "object_id" else lc.meta[name])
        batch = collate_lightcurves(items)
        n = len(items)
        batch["aux_index"] = torch.from_numpy((g0 + np.arange(n, dtype=np.int64)) % self.num_entries)  # (B,)
        if self.predict:
            batch["pred_file"] = torch.from_numpy(np.concatenate(extra["pred_file"]))  # (B,) int64
            batch["pred_entry"] = torch.from_numpy(np.concatenate(extra["pred_entry"]))  # (B,) int64
            batch["pred_valid"] = torch.ones(n, dtype=torch.bool)  # every object has observations
            for name, values in extra["obs"].items():
                batch[f"obs/{name}"] = np.concatenate(values)
        return batch

    def iter_worker(self, worker_id: int = 0, num_workers: int = 1) -> Iterator[dict[str, Any]]:
        """The batches of worker ``worker_id`` of ``num_workers`` on this rank (module docstring)."""
        first, span = self._span()
        bs, n_batches = self.batch_size, len(self)
        group = max(1, self.chunk_objects // bs) if num_workers == 1 else 1  # batches read at once
        handles: dict[int, Any] = {}
        try:
            for b0 in range(worker_id * group, n_batches, num_workers * group):
                lo, hi = b0 * bs, min((b0 + group) * bs, span)
                chunk = self._read(handles, first + lo, first + hi)
                for s in range(lo, hi, bs):
                    yield self._batch(_slice(chunk, s - lo, min(s + bs, hi) - lo), first + s)
        finally:
            for h in handles.values():
                h.close()

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self.iter_worker(*worker_slot())


def _slice(parts: list[tuple[int, int, LightCurves]], a: int, b: int) -> list[tuple[int, int, LightCurves]]:
    """Objects ``a … b − 1`` of the concatenation of ``parts``."""
    out, pos = [], 0
    for f, start, lc in parts:
        lo, hi = max(a - pos, 0), min(b - pos, len(lc))
        if lo < hi:
            out.append((f, start + lo, lc if (lo, hi) == (0, len(lc)) else lc.select(np.arange(lo, hi))))
        pos += len(lc)
    return out
