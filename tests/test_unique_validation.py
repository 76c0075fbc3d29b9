"""Validation numbers and the test loss count every sample once (by ``aux_index``, as the test metrics do), and the
jets dropped for having zero particles are counted over every DataLoader worker within the epoch."""

from __future__ import annotations

import itertools

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from torchmetrics.functional.classification import binary_auroc

from conftest import synth_jetclass
from test_unique_samples import _Net, empty_jets

from physics_tf.auger.task import AugerRegressionTask
from physics_tf.data.loaders import EpochDataLoader
from physics_tf.jets.dataset import JetIterableDataset
from physics_tf.jets.features import JetDataConfig
from physics_tf.jets.task import JetTaggingTask
from physics_tf.jets.writers import write_jetclass_root

# three batches as a padded / re-reading loader deals them: samples 0, 5 and 9 come again, 0 and 5 three times
INDEX = [[0, 1, 2, 3, 4, 5], [6, 7, 8, 9, 10, 11], [0, 0, 0, 5, 5, 5, 9, 9]]
N = 12


def _trainer(tmp_path) -> L.Trainer:
    return L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                     enable_model_summary=False, enable_checkpointing=False, default_root_dir=tmp_path)


def _batches(rows: dict[str, torch.Tensor]) -> DataLoader:
    """The per-sample ``rows`` dealt as :data:`INDEX`, each batch with its ``aux_index``."""
    return DataLoader([{**{k: v[i] for k, v in rows.items()}, "aux_index": torch.tensor(i)} for i in INDEX],
                      batch_size=None)


def _repeated(values: torch.Tensor) -> torch.Tensor:
    """Per-sample ``values`` (N, ...) as the batches hold them, repeats included."""
    return values[torch.tensor(list(itertools.chain(*INDEX)))]


def test_classification_validation_and_test_loss_count_each_sample_once(tmp_path):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    rows = {"x": torch.randn(N, 4, 3, generator=g), "mask": torch.ones(N, 4, dtype=torch.bool),
            "y": torch.arange(N) % 2}
    task = JetTaggingTask(_Net(), ["QCD", "Tbqq"], output_dir=tmp_path)
    trainer = _trainer(tmp_path)
    trainer.validate(task, dataloaders=_batches(rows), verbose=False)
    got = {k: float(v) for k, v in trainer.callback_metrics.items()}
    with torch.no_grad():
        logits = task.net(rows["x"])  # (N, 2), each sample once
    losses = F.cross_entropy(logits, rows["y"], reduction="none")
    probs = logits.softmax(-1)
    expected = {"val/loss": float(losses.mean()),
                "val/acc": float((logits.argmax(-1) == rows["y"]).float().mean()),
                "val/auc": float(binary_auroc(probs[:, 1], rows["y"]))}
    assert got == pytest.approx(expected, rel=1e-5)
    # the repeats would have moved every number
    rep_y = _repeated(rows["y"])
    assert float(_repeated(losses).mean()) != pytest.approx(expected["val/loss"], rel=1e-3)
    assert float((_repeated(logits).argmax(-1) == rep_y).float().mean()) != pytest.approx(expected["val/acc"])
    assert float(binary_auroc(_repeated(probs)[:, 1], rep_y)) != pytest.approx(expected["val/auc"], rel=1e-3)

    results = trainer.test(task, dataloaders=_batches(rows), verbose=False)
    assert results[0]["test/loss"] == pytest.approx(expected["val/loss"], rel=1e-5)
    assert results[0]["test/num_jets"] == N


class _RegNet(nn.Module):
    def __init__(self, out: int) -> None:
        super().__init__()
        self.lin = nn.Linear(3, out)

    def forward(self, x):
        return self.lin(x)  # (B, out)


def test_auger_validation_counts_each_event_once(tmp_path):
    """``val/loss`` (X_max MSE + primary cross-entropy), ``val/accuracy``, ``val/resolution`` and ``val/bias`` of the
    12 distinct events, not of the 20 rows the loader dealt."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(2)
    rows = {"x": torch.randn(N, 3, generator=g), "y": torch.randn(N, 1, generator=g),
            "aux_lg_energy": 18.5 + torch.rand(N, generator=g), "aux_primary": torch.arange(N) % 4}
    task = AugerRegressionTask(_RegNet(1 + 4), ["xmax"], [750.0], [70.0], num_classes=4, output_dir=tmp_path)
    trainer = _trainer(tmp_path)
    trainer.validate(task, dataloaders=_batches(rows), verbose=False)
    got = {k: float(v) for k, v in trainer.callback_metrics.items()}
    with torch.no_grad():
        out = task.net(rows["x"])  # (N, 5)
    mu, logits = out[:, :1], out[:, 1:]
    losses = ((mu - rows["y"]) ** 2)[:, 0] + F.cross_entropy(logits, rows["aux_primary"], reduction="none")
    residual = (70.0 * (mu - rows["y"]))[:, 0].double()  # g/cm²
    correct = (logits.argmax(-1) == rows["aux_primary"]).float()
    expected = {"val/loss": float(losses.mean()), "val/accuracy": float(correct.mean()),
                "val/resolution": float(residual.std()), "val/bias": float(residual.mean())}
    assert got == pytest.approx(expected, rel=1e-5)
    assert float(_repeated(residual).std()) != pytest.approx(expected["val/resolution"], rel=1e-3)
    assert float(_repeated(losses).mean()) != pytest.approx(expected["val/loss"], rel=1e-3)


EMPTY = [2, 5, 6, 40, 51, 63]  # 3 in each half of the 64 jets: the regions of worker 0 and worker 1


@pytest.mark.parametrize("train", [True, False])
def test_dropped_empty_jets_are_summed_over_workers_within_the_epoch(train, tmp_path):
    """Lightning stops at len(dataset) batches and never runs a worker's iterator to its end: the count of jets
    dropped for having zero particles is complete by then, summed over the 2 workers, and starts afresh with the
    next epoch."""
    p, j, lab = synth_jetclass(64, seed=1, max_particles=4)
    f = write_jetclass_root(tmp_path / "j.root", empty_jets(p, j, EMPTY), j, lab)
    cfg = JetDataConfig(files={}, labels=["label_QCD", "label_Tbqq"], features="kin", pad_length=8)
    ds = JetIterableDataset(cfg, [str(f)], 8, train=train, shuffle_buffer=16)
    for epoch in (0, 1):
        loader = EpochDataLoader(ds, lambda: epoch, num_workers=2)
        batches = list(itertools.islice(iter(loader), len(ds)))
        assert len(batches) == len(ds) and sum(len(b["y"]) for b in batches) == 64
        assert not set(torch.cat([b["aux_index"] for b in batches]).tolist()) & set(EMPTY)
        assert ds.dropped_empty == len(EMPTY), epoch
        del loader
