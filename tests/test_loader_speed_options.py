"""The fast jet loader (issue 18): features evaluated on the flat particle content, the unpadded shuffle buffer padded
per batch, the reading thread (``prefetch``), one open per file, and batches handed over in two shared buffers."""

from __future__ import annotations

import threading

import awkward as ak
import numpy as np
import pytest
import torch

from physics_tf.data.streaming import prefetched
from physics_tf.jets.dataset import JetIterableDataset
from physics_tf.jets.features import FlatBuffer, FlatJets, JetDataConfig, chunk_to_arrays, chunk_to_flat
from physics_tf.jets.readers import make_reader

FEATURES = {
    "e_log": {"expr": "log(part_energy)", "subtract": 2.0, "multiply": 0.7},
    "px_rel": {"expr": "part_px / jet_pt", "clip": None},  # a jet-level value broadcast over the particles
    "e_sum": "log(sum(part_energy))",  # needs the jagged structure: the awkward path
    "eta_jet": "jet_eta",  # jet-level only
    "two": "2.0",  # a constant
    "pe_half": "pe / 2",  # a variable
    "flag": "part_isPhoton",  # int32 branch
}


def _cfg(files, **kw):
    kw.setdefault("labels", ["label_QCD", "label_Tbqq"])
    return JetDataConfig(files={"train": files}, features=FEATURES, variables={"pe": "part_energy * 2"}, **kw)


def _reference(chunk, cfg) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x, v, mask of the jets that pass, computed the slow way: awkward arrays, then one jet at a time."""
    keep = np.asarray(ak.num(chunk["part_px"], axis=1)) > 0
    if cfg.selection_expr is not None:
        keep &= np.asarray(cfg.selection_expr.evaluate({f: chunk[f] for f in chunk.fields}), bool)
    arr = chunk[keep]
    values = {f: arr[f] for f in arr.fields}
    values["pe"] = cfg.variable_exprs["pe"].evaluate(values)
    cols = []
    for expr in cfg.feature_exprs:
        res = ak.broadcast_arrays(expr.evaluate(values), arr["part_px"])[0]
        cols.append([np.asarray(jet, np.float64) for jet in ak.to_list(res)])
    P, C = cfg.pad_length, cfg.num_features
    x, v, mask = np.zeros((len(arr), P, C), np.float32), np.zeros((len(arr), P, 4), np.float32), np.zeros((len(arr), P),
                                                                                                           bool)
    for i in range(len(arr)):
        for c, spec in enumerate(cfg.feature_specs):
            val = (cols[c][i] - spec.subtract) * spec.multiply
            if spec.clip is not None:
                val = np.clip(val, *spec.clip)
            n = min(len(val), P)
            x[i, :n, c] = val[:n]
            mask[i, :n] = True
        for c, name in enumerate(cfg.vectors):
            vals = np.asarray(arr[name][i], np.float64)[:P]
            v[i, :len(vals), c] = vals
    return x, v, mask


@pytest.mark.parametrize("selection", [None, "jet_eta > 0"])
def test_flat_features_equal_the_awkward_jet_by_jet_reference(jetclass_file, selection):
    path = str(jetclass_file("a.root", n_jets=40, seed=3, max_particles=12))
    cfg = _cfg([path], pad_length=8, selection=selection)  # up to 12 particles: some jets are truncated
    chunk = next(make_reader(path, cfg).iterate(0, 40))
    x, v, mask, _ = chunk_to_arrays(chunk, cfg)
    rx, rv, rmask = _reference(chunk, cfg)
    assert x.shape == rx.shape and (selection is None or len(x) < 40)
    np.testing.assert_array_equal(mask, rmask)
    np.testing.assert_allclose(x, rx, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(v, rv)


def test_flat_jets_keep_only_the_first_pad_length_particles(jetclass_file):
    path = str(jetclass_file("a.root", n_jets=30, seed=1, max_particles=12))
    cfg = _cfg([path], pad_length=5)
    chunk = next(make_reader(path, cfg).iterate(0, 30))
    flat = chunk_to_flat(chunk, cfg)
    counts = np.minimum(np.asarray(ak.num(chunk["part_px"], axis=1)), 5)
    np.testing.assert_array_equal(flat.counts, counts)
    assert flat.x.shape == (counts.sum(), cfg.num_features) and flat.v.shape == (counts.sum(), 4)
    np.testing.assert_array_equal(flat.entries, np.arange(30))


def _flat(rng, n, C=3) -> FlatJets:
    counts = rng.integers(1, 6, n)
    m = int(counts.sum())
    return FlatJets(rng.normal(size=(m, C)).astype(np.float32), rng.normal(size=(m, 4)).astype(np.float32), counts,
                    rng.integers(0, 2, n), rng.integers(0, 1000, n))


def test_buffer_gathers_and_pads_jets_across_parts_like_one_concatenation():
    rng = np.random.default_rng(0)
    parts = [_flat(rng, 7), _flat(rng, 5), _flat(rng, 9)]
    whole = FlatJets(*(np.concatenate(a) for a in zip(*parts)))
    starts = np.cumsum(whole.counts) - whole.counts
    buf = FlatBuffer(parts)
    for sel in (np.array([0, 3, 8, 12, 20]), np.arange(21), np.array([13, 14, 15])):  # increasing (take's contract)
        rows = np.concatenate([np.arange(starts[j], starts[j] + whole.counts[j]) for j in sel])
        got = buf.take(sel)
        np.testing.assert_array_equal(got.x, whole.x[rows])
        np.testing.assert_array_equal(got.v, whole.v[rows])
        np.testing.assert_array_equal(got.counts, whole.counts[sel])
        np.testing.assert_array_equal(got.entries, whole.entries[sel])
    sel = rng.permutation(21)[:8]  # a batch: any order
    x, v, mask, y, entries = buf.batch(sel, 6)  # jets of 1 to 5 particles
    for b, j in enumerate(sel):
        n = int(whole.counts[j])
        np.testing.assert_array_equal(x[b, :n], whole.x[starts[j]:starts[j] + n])
        np.testing.assert_array_equal(v[b, :n], whole.v[starts[j]:starts[j] + n])
        assert not x[b, n:].any() and not v[b, n:].any() and mask[b].sum() == n and mask[b, :n].all()
    np.testing.assert_array_equal(y, whole.y[sel])
    np.testing.assert_array_equal(entries, whole.entries[sel])


@pytest.fixture(scope="module")
def two_files(tmp_path_factory):
    from conftest import synth_jetclass

    from physics_tf.jets.writers import write_jetclass_root

    root = tmp_path_factory.mktemp("two_files")
    return [str(write_jetclass_root(root / f"f{k}.root", *synth_jetclass(70, seed=k, id_offset=100 * k)))
            for k in range(2)]


def _batches(ds, workers=2, epoch=1):
    return [b for w in range(workers) for b in ds.iter_worker(w, workers, epoch)]


def test_prefetch_gives_the_same_batches_and_every_jet_once(two_files):
    cfg = _cfg(two_files, pad_length=8, chunk_size=30)
    runs = {}
    for prefetch in (0, 1, 3):
        ds = JetIterableDataset(cfg, two_files, 16, train=True, shuffle_buffer=20, seed=5, prefetch=prefetch)
        runs[prefetch] = _batches(ds)
    for prefetch in (1, 3):
        assert len(runs[prefetch]) == len(runs[0])
        for a, b in zip(runs[0], runs[prefetch]):
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    seen = torch.cat([b["aux_index"] for b in runs[1]]).tolist()
    assert len(seen) == len(set(seen)) == (140 // 16) * 16  # drop_last: each jet at most once, all but the rest
    assert threading.active_count() == 1 or not any(t.name == "physics_tf-prefetch" for t in threading.enumerate())


def test_prefetch_raises_the_readers_error_in_the_consumer_and_stops_on_close():
    def items():
        yield 1
        yield 2
        raise ValueError("broken chunk")

    it = prefetched(items(), 1)
    assert [next(it), next(it)] == [1, 2]
    with pytest.raises(ValueError, match="broken chunk"):
        next(it)
    endless = prefetched(iter(range(10**9)), 2)
    assert next(endless) == 0
    endless.close()  # joins the thread
    assert not any(t.name == "physics_tf-prefetch" for t in threading.enumerate())


def test_each_file_is_opened_once_per_epoch(two_files, monkeypatch):
    import uproot

    opened = []
    real_open = uproot.open
    monkeypatch.setattr(uproot, "open", lambda path, *a, **kw: opened.append(str(path)) or real_open(path, *a, **kw))
    cfg = _cfg(two_files, pad_length=8, chunk_size=30)  # 3 pieces per file
    ds = JetIterableDataset(cfg, two_files, 16, train=False, prefetch=0)
    opened.clear()
    _batches(ds, workers=1)
    assert sorted(opened) == sorted(two_files)


def test_a_workers_batch_is_two_shared_buffers(two_files):
    cfg = _cfg(two_files, pad_length=8, chunk_size=30)
    ds = JetIterableDataset(cfg, two_files, 16, train=True, shuffle_buffer=20, prefetch=0)
    jets = FlatBuffer([chunk_to_flat(next(make_reader(two_files[0], cfg).iterate(0, 70)), cfg)])
    batch = ds._batch(jets, np.arange(16), shared=True)
    ptr = {k: t.untyped_storage().data_ptr() for k, t in batch.items()}
    assert ptr["x"] == ptr["v"] == ptr["mask"] and ptr["y"] == ptr["aux_index"] and ptr["x"] != ptr["y"]
    assert all(t.is_shared() for t in batch.values())
    ref = jets.batch(np.arange(16), 8)
    for k, r in zip(batch, ref):
        np.testing.assert_array_equal(batch[k].numpy(), r)


def test_isal_inflates_zlib_baskets_when_installed(jetclass_file):
    pytest.importorskip("isal")
    from uproot import compression

    path = str(jetclass_file("a.root", n_jets=20))
    make_reader(path, _cfg([path]))
    assert compression._DecompressZLIB.library == "isal"
