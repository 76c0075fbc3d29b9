"""Sharding, equal batch counts under (simulated) DDP, shuffling determinism and the data module."""

from __future__ import annotations

import collections

import pytest
import torch

from physics_tf.jets.features import JetDataConfig
from physics_tf.jets.data import JetDataModule
from physics_tf.data.streaming import batches_per_rank
from physics_tf.jets.dataset import JetIterableDataset


def _ids(batch) -> list[int]:
    """Jet ids: the first particle's px is 1000 + id (see conftest.synth_jetclass)."""
    return [int(round(float(p))) - 1000 for p in batch["v"][:, 0, 0]]


@pytest.fixture
def three_files(jetclass_file):
    sizes = (60, 60, 40)
    files, off = [], 0
    for k, n in enumerate(sizes):
        files.append(str(jetclass_file(f"f{k}.root", n_jets=n, seed=k, id_offset=off)))
        off += n
    return files, sum(sizes)


def _cfg(**kw):
    kw.setdefault("files", {})
    kw.setdefault("labels", ["label_QCD", "label_Tbqq"])
    kw.setdefault("chunk_size", 25)
    kw.setdefault("pad_length", 8)
    return JetDataConfig(**kw)


def _run(files, cfg, *, world, workers, bs, train, epoch=0, seed=0, shuffle_buffer=30):
    """Batches per rank, simulating DDP ranks and DataLoader workers in-process."""
    out = {}
    for rank in range(world):
        ds = JetIterableDataset(cfg, files, bs, train=train, shuffle_buffer=shuffle_buffer, seed=seed, rank=rank,
                                world_size=world)
        out[rank] = [b for w in range(workers) for b in ds.iter_worker(w, workers, epoch)]
        assert len(out[rank]) == len(ds)
    return out


def test_train_sharding_covers_each_jet_once(three_files):
    files, n = three_files
    out = _run(files, _cfg(), world=2, workers=2, bs=8, train=True)
    ids = [i for rank in out.values() for b in rank for i in _ids(b)]
    assert sorted(ids) == list(range(n))  # 160 = 2 ranks * 10 batches * 8: nothing dropped, nothing repeated
    assert len(out[0]) == len(out[1]) == 10
    b = out[0][0]
    assert b["x"].shape == (8, 8, 7) and b["x"].dtype == torch.float32
    assert b["v"].shape == (8, 8, 4) and b["mask"].dtype == torch.bool and b["y"].dtype == torch.int64


@pytest.mark.parametrize("world,workers,bs", [(2, 2, 7), (3, 2, 16), (2, 3, 5), (1, 4, 9)])
def test_equal_batch_counts_train_and_eval(three_files, world, workers, bs):
    files, n = three_files
    for train in (True, False):
        out = _run(files, _cfg(), world=world, workers=workers, bs=bs, train=train)
        counts = {r: len(b) for r, b in out.items()}
        assert len(set(counts.values())) == 1, counts
        assert counts[0] == batches_per_rank(n, world, bs, drop_last=train)
        ids = collections.Counter(i for rank in out.values() for b in rank for i in _ids(b))
        assert max(ids.values()) == 1 or (not train and sum(ids.values()) - n < world)
        if train:
            assert all(len(b["y"]) == bs for rank in out.values() for b in rank)
            assert sum(ids.values()) == counts[0] * world * bs
        else:
            assert set(ids) == set(range(n))  # evaluation sees every jet


def test_eval_single_rank_is_in_order_without_repeats(three_files):
    files, n = three_files
    out = _run(files, _cfg(), world=1, workers=1, bs=16, train=False)
    assert [i for b in out[0] for i in _ids(b)] == list(range(n))


def test_shuffle_deterministic_per_seed_and_epoch(three_files):
    files, _ = three_files

    def order(epoch, seed):
        out = _run(files, _cfg(), world=2, workers=2, bs=8, train=True, epoch=epoch, seed=seed)
        return [i for rank in (0, 1) for b in out[rank] for i in _ids(b)]

    a = order(0, 1)
    assert a == order(0, 1)
    assert a != order(1, 1) and a != order(0, 2)
    assert sorted(a) == sorted(order(1, 1))


def test_label_subset_refills_to_equal_counts(jetclass_file):
    files = [str(jetclass_file("mix.root", n_jets=120, seed=3, classes=(0, 1, 8)))]
    cfg = _cfg(labels=["label_QCD", "label_Tbqq"])
    out = _run(files, cfg, world=2, workers=2, bs=8, train=True)
    assert len(out[0]) == len(out[1]) == batches_per_rank(120, 2, 8, True)
    assert all(((b["y"] == 0) | (b["y"] == 1)).all() for rank in out.values() for b in rank)


def test_datamodule_from_config_and_workers(three_files, tmp_path):
    files, n = three_files
    dm = JetDataModule(files={"train": [str(tmp_path / "f*.root")], "val": files[2:]}, features="kinpid",
                       labels=["label_QCD", "label_Tbqq"], pad_length=8, chunk_size=25, batch_size=16,
                       num_workers=2, shuffle_buffer=20, seed=3)
    assert (dm.num_features, dm.num_classes, dm.class_names) == (13, 2, ["QCD", "Tbqq"])
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert loader.persistent_workers and len(loader) == n // 16
    epochs = []
    for epoch in (0, 1):
        dm.set_epoch(epoch)
        batches = list(loader)
        assert len(batches) == n // 16
        epochs.append([i for b in batches for i in _ids(b)])
    assert sorted(epochs[0]) == sorted(epochs[1]) == list(range(n))
    assert epochs[0] != epochs[1]  # the epoch reached the persistent workers
    val = list(dm.val_dataloader())
    assert sorted(i for b in val for i in _ids(b)) == list(range(120, 160))


def test_datamodule_needs_no_io():
    dm = JetDataModule(files={"train": ["/nonexistent/*.root"]}, features="full")
    assert dm.num_features == 17 and dm.num_classes == 10 and dm.class_names[-1] == "Tbl"
