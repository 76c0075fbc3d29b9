"""Sharded, shuffled, streaming ``IterableDataset`` of ready-made jet batches.

Work division
-------------
The files of a split are cut into *pieces* ``(file, entry_start, entry_stop)`` of ``cfg.chunk_size``
entries using only the file metadata (``num_entries``). Each epoch the pieces are laid end to end into one
virtual sequence of N entries (train: piece order shuffled with ``(seed, epoch)``, identical on every rank;
val/test: file order). The sequence is split into one contiguous *span per DDP rank*, and each rank's span
into one contiguous *region per DataLoader worker*, sized in whole batches. So every jet is read by exactly
one (rank, worker) per epoch. A worker reads piece by piece (a read never splits a piece, so no basket is inflated
twice; a file stays open across its consecutive pieces), in a background thread ``prefetch`` chunks ahead; only
those chunks plus the shuffle buffer are resident in a worker, all of them unpadded
(:class:`~physics_tf.jets.features.FlatJets`: each jet's particles, up to ``pad_length``, laid end to end). Each
batch is gathered from the buffer and padded once, into two buffers (shared memory in a DataLoader worker).

Equal batch counts under DDP (documented choice)
------------------------------------------------
Every rank must yield the same number of batches or collective ops hang. The count is fixed from the
metadata before reading:

* train (``drop_last=True``): ``B = N // (world_size * batch_size)`` full batches per rank; the
  ``N - B * world_size * batch_size`` left-over entries of the epoch's (shuffled) sequence are not used in
  that epoch (a different few each epoch).
* val/test (``drop_last=False``): ``B = ceil(ceil(N / world_size) / batch_size)`` batches per rank; the last
  batch of a worker may be partial; a rank whose span is one jet too short for B batches reads its first jet
  again (the way ``torch.utils.data.DistributedSampler`` pads), so with world_size > 1 up to world_size jets
  may be read twice (the test stage counts them once by their ``aux_index``). With world_size = 1 nothing is
  repeated.

Jets dropped by :func:`~physics_tf.jets.features.chunk_to_arrays` (no selected label, zero particles, failed
selection) are unknown to the metadata; a worker then keeps reading past its region, cyclically within its
rank's span, until its quota of jets is filled (these jets are seen twice in that epoch; a warning is
logged). Glob only the files of the selected classes to avoid this. If a whole span yields no jet at all a
:class:`~physics_tf.data.errors.DataError` is raised instead of looping.

Jets dropped for having zero particles are counted as they are read, in each worker's own region only (so every
entry of the split counts once over ranks and workers): :attr:`JetIterableDataset.dropped_empty` is this rank's
count of the current epoch, summed over its workers through shared memory (one slot per worker, reset at every
:meth:`~JetIterableDataset.set_epoch`); the task sums it over ranks at the end of the epoch and logs it once
(:meth:`physics_tf.jets.data.JetDataModule.epoch_counts`).

Every batch carries ``aux_index (B,)`` int64, the jet's entry over the split (file offset + entry, files in
split order), so the test stage counts a jet that was read twice once (:meth:`physics_tf.tasks.base.Task`).

Determinism: for a given ``(seed, epoch, world_size, num_workers)`` the batches are identical across runs.
"""

from __future__ import annotations

import bisect
import logging
import math
import multiprocessing
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from physics_tf.data.errors import DataError, EmptyFileError
from physics_tf.data.streaming import Piece, _split_evenly, batches_per_rank, prefetched, worker_slot
from physics_tf.jets.features import FlatBuffer, FlatJets, JetDataConfig, chunk_to_flat
from physics_tf.jets.readers import make_reader

__all__ = ["build_pieces", "JetIterableDataset"]

log = logging.getLogger(__name__)

MAX_WORKERS = 1024  # DataLoader workers per rank whose dropped-jet counts are kept (one shared slot each)


def build_pieces(files: Sequence[str], cfg: JetDataConfig) -> list[Piece]:
    """Cut ``files`` into pieces of ``cfg.chunk_size`` entries from metadata only; empty files are skipped."""
    pieces: list[Piece] = []
    for f in files:
        n = make_reader(f, cfg).num_entries()
        if n == 0:
            log.warning("%s: file has 0 entries; skipped", f)
            continue
        pieces.extend(Piece(f, s, min(s + cfg.chunk_size, n)) for s in range(0, n, cfg.chunk_size))
    return pieces


class JetIterableDataset(IterableDataset):
    """Yields batch dicts ``{"x", "v", "mask", "y", "aux_index"}`` (batch contract); use ``batch_size=None``.

    Parameters
    ----------
    cfg
        Data configuration.
    files
        Files of this split (already glob-expanded).
    batch_size
        Jets per batch.
    train
        True: shuffle pieces and the buffer, drop the remainder (``drop_last``); False: file order, keep all
        jets, last batch of a worker may be partial.
    shuffle_buffer
        Jets kept in the shuffle buffer (train only).
    seed
        Base seed; the epoch's randomness is derived from ``(seed, epoch, global worker id)``.
    rank, world_size
        DDP position of this process (can be changed with :meth:`set_distributed` before iterating).
    pieces
        Precomputed pieces (else computed from metadata).
    prefetch
        Chunks read ahead by a background thread of each worker (0: read in the consuming thread); the batches
        are the same either way.
    """

    def __init__(self, cfg: JetDataConfig, files: Sequence[str], batch_size: int, *, train: bool,
                 shuffle_buffer: int = 10_000, seed: int = 0, rank: int = 0, world_size: int = 1,
                 pieces: Sequence[Piece] | None = None, prefetch: int = 1):
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.cfg = cfg
        self.files = list(files)
        self.batch_size = int(batch_size)
        self.train = bool(train)
        self.shuffle_buffer = max(0, int(shuffle_buffer))
        self.seed = int(seed)
        self.prefetch = max(0, int(prefetch))
        self.pieces = list(pieces) if pieces is not None else build_pieces(self.files, cfg)
        self.num_entries = sum(p.size for p in self.pieces)
        # entry of each file's first jet over the split (files in split order): aux_index = offset + entry
        self.file_offsets: dict[str, int] = {}
        seen = 0
        for p in self.pieces:  # a file's pieces are contiguous and start at entry 0 (build_pieces)
            self.file_offsets.setdefault(p.file, seen - p.start)
            seen += p.size
        if self.num_entries == 0:
            raise EmptyFileError(", ".join(self.files) or "<no files>", "the split holds no entries")
        # shared with DataLoader workers (also persistent ones): set_epoch() in the main process is seen there
        self._epoch = multiprocessing.get_context().RawValue("q", 0)
        # the same way: jets with zero particles dropped this epoch, one slot per worker (each written by its worker)
        self._dropped = multiprocessing.get_context().RawArray("q", MAX_WORKERS)
        self.set_distributed(rank, world_size)

    # ------------------------------------------------------------------ control
    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's shuffle (takes effect at the next ``iter()``) and start its counts afresh."""
        self._epoch.value = int(epoch)
        self._dropped[:] = [0] * MAX_WORKERS

    @property
    def epoch(self) -> int:
        return int(self._epoch.value)

    @property
    def dropped_empty(self) -> int:
        """Jets with zero particles this rank's workers dropped in the current epoch, so far (module docstring)."""
        return int(sum(self._dropped))

    def set_distributed(self, rank: int, world_size: int) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} not in [0, {world_size})")
        self.rank, self.world_size = int(rank), int(world_size)

    def __len__(self) -> int:
        """Batches this rank yields per epoch (same on every rank)."""
        return batches_per_rank(self.num_entries, self.world_size, self.batch_size, drop_last=self.train)

    # ------------------------------------------------------------------ work division
    def _epoch_pieces(self, epoch: int) -> list[Piece]:
        if not self.train:
            return list(self.pieces)
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.pieces))
        return [self.pieces[i] for i in order]

    def worker_plan(self, epoch: int, worker_id: int, num_workers: int) -> tuple[int, int, int, int]:
        """``(span_start, span_size, offset, quota)`` of a worker in the virtual entry sequence.

        The worker reads from ``span_start + (offset + k) % span_size`` for k = 0, 1, ... until it has
        ``quota`` jets.
        """
        N, W, bs = self.num_entries, self.world_size, self.batch_size
        B = len(self)
        if self.train:
            span_size = B * bs
            span_start = self.rank * span_size
            target = span_size
        else:
            span_size = _split_evenly(N, W, self.rank)
            span_start = self.rank * (N // W) + min(self.rank, N % W)
            target = max(span_size, (B - 1) * bs + 1) if B > 0 else 0
        nb = [_split_evenly(B, num_workers, w) for w in range(num_workers)]
        quotas = [b * bs for b in nb]
        nonzero = [w for w in range(num_workers) if nb[w] > 0]
        if nonzero:  # last worker with batches takes the (possibly partial) rest
            last = nonzero[-1]
            quotas[last] = target - sum(quotas[w] for w in range(num_workers) if w != last)
        offset = sum(quotas[:worker_id])
        return span_start, span_size, offset, quotas[worker_id]

    # ------------------------------------------------------------------ iteration
    def _read(self, seq: list[Piece], cum: np.ndarray, pos: int, length: int, stats: dict | None,
              slot: int | None, held: dict):
        """Read virtual entries ``[pos, pos + length)`` (inside one rank span, no wrap) as :class:`FlatJets` whose
        ``entries`` are the entries over the split; with ``stats``, the worker's running count of jets dropped for
        zero particles goes to its shared ``slot``. ``held``: the reader of the file read last, kept open."""
        while length > 0:
            i = bisect.bisect_right(cum, pos) - 1
            piece = seq[i]
            s = piece.start + (pos - int(cum[i]))
            e = min(piece.stop, s + length)
            reader = held.get(piece.file)
            if reader is None:
                _close(held)
                reader = held[piece.file] = make_reader(piece.file, self.cfg).__enter__()
            cur = s
            for chunk in reader.iterate(s, e, step_size=self.cfg.chunk_size):
                jets = chunk_to_flat(chunk, self.cfg, source=piece.file, entry_start=cur, stats=stats)
                if stats is not None and slot is not None:
                    self._dropped[slot] = stats.get("dropped_no_particles", 0)
                yield jets._replace(entries=jets.entries + self.file_offsets[piece.file])
                cur += len(chunk)
            length -= e - s
            pos += e - s

    def _worker_chunks(self, epoch: int, worker_id: int, num_workers: int, stats: dict) -> Iterator[FlatJets]:
        """Survivor chunks of this worker, exactly ``quota`` jets in total.

        ``stats`` counts the worker's own region only (entries ``offset`` to ``offset + quota`` of the span, up to
        its end), so the regions of all workers and ranks count every entry of the split once; a re-read does not.
        """
        span_start, span_size, offset, quota = self.worker_plan(epoch, worker_id, num_workers)
        if num_workers > MAX_WORKERS:
            raise ValueError(f"num_workers {num_workers}: at most {MAX_WORKERS} DataLoader workers per rank")
        self._dropped[worker_id] = 0
        if quota <= 0:
            return
        seq = self._epoch_pieces(epoch)
        cum = np.concatenate([[0], np.cumsum([p.size for p in seq])])
        own = max(0, min(quota, span_size - offset))  # entries of this worker's own region
        pos = offset % span_size
        held: dict = {}  # the open reader of the current file
        try:
            yield from self._region(seq, cum, span_start, span_size, pos, quota, own, stats, worker_id, held)
        finally:
            _close(held)

    def _region(self, seq, cum, span_start, span_size, pos, quota, own, stats, worker_id, held) -> Iterator[FlatJets]:
        """:meth:`_worker_chunks` from the worker's first entry ``pos`` of its span on (``own``: its region's size)."""
        need, read, kept_total, warned = quota, 0, 0, False
        while need > 0:
            # up to the end of the current piece: every read is (part of) one piece, one file range, so no basket
            # is decompressed twice by reads that split it
            piece_left = int(cum[bisect.bisect_right(cum, span_start + pos)]) - (span_start + pos)
            length = min(self.cfg.chunk_size, need, span_size - pos, piece_left)
            if read < own:
                length = min(length, own - read)
            for ca in self._read(seq, cum, span_start + pos, length, stats if read < own else None, worker_id,
                                 held):
                n = min(len(ca.y), need)
                if n and n == need:  # the worker's last chunk: log the counts now, Lightning never resumes it
                    self._log_dropped(stats, worker_id)
                if n:
                    yield ca if n == len(ca.y) else ca.head(n)
                need -= n
                kept_total += n
            read += length
            pos = (pos + length) % span_size
            if need > 0 and read >= quota and not warned:
                warned = True
                log.warning("rank %d worker %d: jets were dropped (labels/selection/empty); re-reading entries "
                            "of this rank to fill %d batches (some jets repeat this epoch)", self.rank,
                            worker_id, -(-quota // self.batch_size))
            if read >= span_size and kept_total == 0:
                raise DataError(seq[0].file, f"no jet of entries {span_start}-{span_start + span_size} survives "
                                "the labels/selection", "labels")

    def _batch(self, jets: FlatBuffer, sel: np.ndarray, shared: bool) -> dict[str, torch.Tensor]:
        """The padded batch of the jets ``sel``, written once into two buffers: x, v and mask are views of one, y and
        aux_index of another (small: a consumer that keeps them keeps only that one). In a DataLoader worker the
        buffers are allocated in shared memory, so handing the batch over copies nothing and passes 2 file
        descriptors instead of one per tensor."""
        B, P, C = len(sel), self.cfg.pad_length, self.cfg.num_features
        nx, nv = B * P * C * 4, B * P * 4 * 4
        big, small = _zeroed(nx + nv + B * P, shared), _zeroed(16 * B, shared)
        batch = {"x": big[:nx].view(torch.float32).view(B, P, C),  # (B, P, C) float32
                 "v": big[nx:nx + nv].view(torch.float32).view(B, P, 4),  # (B, P, 4) float32 (px, py, pz, E)
                 "mask": big[nx + nv:].view(torch.bool).view(B, P),  # (B, P) bool
                 "y": small[:8 * B].view(torch.int64),  # (B,) int64
                 "aux_index": small[8 * B:].view(torch.int64)}  # (B,) int64, entry over the split
        jets.batch(sel, P, out=[t.numpy() for t in batch.values()])
        return batch

    def iter_worker(self, worker_id: int = 0, num_workers: int = 1, epoch: int | None = None
                    ) -> Iterator[dict[str, torch.Tensor]]:
        """Batches of one (worker_id, num_workers) on this rank; ``__iter__`` calls it with the real worker.

        The shuffle buffer holds unpadded jets (:class:`~physics_tf.jets.features.FlatJets`); each batch is gathered
        from it through the epoch's permutation and padded once. With ``prefetch`` the chunks are read, decompressed
        and turned into features by a background thread, that many chunks ahead of this one.
        """
        epoch = self.epoch if epoch is None else int(epoch)
        gid = self.rank * num_workers + worker_id
        rng = np.random.default_rng([self.seed, epoch, gid, 1])
        bs = self.batch_size
        shared = get_worker_info() is not None  # batches go to the main process
        keep = self.shuffle_buffer if self.train else 0
        buf: list[FlatJets] = []
        buffered = 0
        stats: dict = {}

        def drain(final: bool):
            nonlocal buf, buffered
            jets = FlatBuffer(buf)  # the chunks under one index, not concatenated
            buf = []
            # train: gather each batch (and the kept rest) through the permutation, padding only the batch
            order = rng.permutation(buffered) if self.train else np.arange(buffered)
            n_out = math.ceil(buffered / bs) if final else max(0, (buffered - keep) // bs)
            for k in range(n_out):
                yield self._batch(jets, order[k * bs:(k + 1) * bs], shared)
            used = min(n_out * bs, buffered)
            if buffered - used:
                # the rest, compacted in buffer order (the next drain permutes it again): the chunks it came from
                # are let go
                buf = [jets.take(np.sort(order[used:]))]
            del jets
            buffered -= used

        chunks = prefetched(self._worker_chunks(epoch, worker_id, num_workers, stats), self.prefetch)
        try:
            for ca in chunks:
                buf.append(ca)
                buffered += len(ca.y)
                if buffered >= keep + bs:
                    yield from drain(final=False)
            if buffered:
                yield from drain(final=True)
        finally:
            chunks.close()  # a consumer that stops early also stops the reading thread

    def _log_dropped(self, stats: dict, worker_id: int) -> None:
        """The epoch's dropped-jet counts of this worker (its own region: complete once its quota is filled); the
        zero-particle count only at debug level: the task warns once with the sum over workers and ranks."""
        if stats.get("skipped_no_label"):
            log.warning("rank %d worker %d: skipped %d jets with no label flag set (data.skip_unlabelled)",
                        self.rank, worker_id, stats["skipped_no_label"])
        if stats.get("dropped_no_particles"):
            log.debug("rank %d worker %d: dropped %d jets with zero particles this epoch", self.rank, worker_id,
                      stats["dropped_no_particles"])

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        return self.iter_worker(*worker_slot())


def _zeroed(nbytes: int, shared: bool) -> torch.Tensor:
    """(nbytes,) uint8 zeros; with ``shared`` in new shared memory (zero-filled by the system: no memset, and the
    DataLoader's hand-over to the main process then copies nothing)."""
    new_shared = getattr(torch.UntypedStorage, "_new_shared", None)
    if shared and new_shared is not None:
        return torch.empty(0, dtype=torch.uint8).set_(new_shared(nbytes))
    return torch.from_numpy(np.zeros(nbytes, np.uint8))  # calloc: pages zeroed as first touched, not memset


def _close(held: dict) -> None:
    """Close the readers held open and forget them."""
    for reader in held.values():
        reader.__exit__(None, None, None)
    held.clear()
