"""Accuracy of the Auger transformer's temporal attention kinds on long traces (L = 960 bins of 25 ns): one small
simulated set, the same network with each kind of the core's attention over the trace patches (window, LSH,
sparse strided, sparse fixed, full) and with the Perceiver latent encoder, trained side by side for the same
budget; validation and test resolution of X_max and ln A, training events/s and the peak memory of a step.

    python benchmarks/auger_kinds.py --threads 1 [--train 1200 --val 300 --test 300 --epochs 3] \\
        [--json docs/figures/auger_kinds.json]

Method: events from :class:`physics_tf.auger.simulate.AugerSimulator` with ``n_bins`` = ``--bins`` (960; the
generator's ``gen.sim.n_bins``), simulated once. Every model is ``conf/model/auger_transformer.yaml`` (or
``auger_perceiver.yaml``) at the reduced widths of :data:`WIDTHS`, 10-bin patches (P = 96 tokens per station) for
every kind, targets X_max and ln A (standardised, MSE). Training: :func:`bench_auger.race` — the same batches in the
same order for all, AdamW with warm-up + cosine, the models taking turns step by step; events/s from each model's
summed CPU time of its training steps (``time.process_time`` with ``--threads 1``). The epoch with the lowest
validation loss is reported, and the test resolution is that of the model after the last epoch. Peak memory: the
extra RSS of one training step of ``--batch`` events in a fresh process (``bench_auger.model_peak_mb``). The set is
small (CPU time is scarce): the numbers rank the kinds on this budget, they are not converged resolutions.

JSON: ``{"command", "load_average": {"before", "after"}, "threads", "device", "bins", "patch", "train_events",
"val_events", "test_events", "epochs", "batch", "widths", "kinds": {kind: {"attention", "params", "events_per_s",
"peak_mb", "val": {"loss", "xmax_resolution", "lna_resolution", "step"}, "test": {"loss", "xmax_resolution",
"lna_resolution"}, "curve": [[step, seconds, val_loss, xmax_res, lna_res], …]}}}``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_auger as ba  # noqa: E402

# the reduced widths every kind shares (the temporal encoder is what differs)
WIDTHS = {"patch": 10, "temporal_dim": 32, "temporal_heads": 2, "temporal_depth": 1, "dim": 48, "num_heads": 4,
          "depth": 2, "pair_hidden": 16, "head_hidden": 64}
# kind → (model config, overrides beyond WIDTHS)
KINDS = {
    "window": ("transformer", {"window": 12, "temporal_attention": {"kind": "window"}}),
    "perceiver": ("perceiver", {"latents": 16}),
    "lsh": ("transformer", {"temporal_attention": {"kind": "lsh", "bucket_size": 16, "n_hashes": 2}}),
    "sparse_strided": ("transformer", {"temporal_attention": {"kind": "sparse_strided"}}),
    "sparse_fixed": ("transformer", {"temporal_attention": {"kind": "sparse_fixed"}}),
    "full": ("transformer", {"temporal_attention": {"kind": "full"}}),
}


def dotlist(overrides: dict, prefix: str = "") -> list[str]:
    """{"a": {"b": 1}} → ["a.b=1"] (a model spec for bench_auger's child processes)."""
    out = []
    for key, value in overrides.items():
        if isinstance(value, dict):
            out += dotlist(value, f"{prefix}{key}.")
        else:
            out.append(f"{prefix}{key}={value}")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kinds", nargs="+", choices=list(KINDS), default=list(KINDS))
    p.add_argument("--bins", type=int, default=960)
    p.add_argument("--train", type=int, default=1200)
    p.add_argument("--val", type=int, default=300)
    p.add_argument("--test", type=int, default=300)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args()
    if a.device == "cuda" and not torch.cuda.is_available():
        sys.exit("auger_kinds: error: --device cuda: no CUDA device available")
    torch.set_num_threads(a.threads)
    load_before = [round(x, 2) for x in os.getloadavg()]
    print(f"simulating {a.train} + {a.val} + {a.test} events of 9×9 stations × {a.bins} bins")
    train = ba.simulate(a.train, a.bins, seed=11)
    val, test = ba.simulate(a.val, a.bins, seed=12), ba.simulate(a.test, a.bins, seed=13)
    targets = ("xmax", "lna")
    specs = {kind: (name, {**WIDTHS, **extra}) for kind, (name, extra) in KINDS.items() if kind in a.kinds}
    nets = {kind: ba.build(name, a.bins, len(targets), overrides) for kind, (name, overrides) in specs.items()}
    result = ba.race(nets, train, val, targets=targets, epochs=a.epochs, batch=a.batch, lr=a.lr, evals_per_epoch=1,
                     device=a.device)
    test_batches = [ba.to_batch({k: v[i: i + 256] for k, v in test.items()}, list(targets), ba.NORM)
                    for i in range(0, a.test, 256)]
    kinds = {}
    for kind, r in result.items():
        best = min(r["curve"], key=lambda row: row[2])
        loss, res = ba.evaluate(nets[kind], test_batches, a.device)
        name, overrides = specs[kind]
        spec = f"{kind}={name}:" + ",".join(dotlist(overrides))
        kinds[kind] = {"attention": specs[kind][1].get("temporal_attention", {"kind": "latent"}),
                       "params": r["params"], "events_per_s": r["events_per_s"],
                       "peak_mb": ba.model_peak_mb(spec, a.batch, a.threads, a.device, a.bins),
                       "val": {"loss": best[2], "xmax_resolution": best[3], "lna_resolution": best[4],
                               "step": best[0]},
                       "test": {"loss": loss, "xmax_resolution": res[0] * ba.NORM["xmax"][1],
                                "lna_resolution": res[1] * ba.NORM["lna"][1]},
                       "curve": r["curve"]}
        k = kinds[kind]
        print(f"{kind:<15} {k['params']:>9,} params {k['events_per_s']:7.1f} events/s {k['peak_mb']:7.0f} MB  val "
              f"X_max {best[3]:.1f} g/cm², ln A {best[4]:.2f}; test X_max {k['test']['xmax_resolution']:.1f}, "
              f"ln A {k['test']['lna_resolution']:.2f}")
    out = {"command": " ".join(sys.argv), "load_average": {"before": load_before,
                                                          "after": [round(x, 2) for x in os.getloadavg()]},
           "threads": a.threads, "device": a.device, "bins": a.bins, "patch": WIDTHS["patch"],
           "train_events": a.train, "val_events": a.val, "test_events": a.test, "epochs": a.epochs,
           "batch": a.batch, "widths": WIDTHS, "kinds": kinds}
    if a.json:
        sys.path.insert(0, str(ba.ROOT))
        from physics_tf.data.atomic import atomic_path

        with atomic_path(a.json) as tmp:
            tmp.write_text(json.dumps(out, indent=1) + "\n")
        print(f"wrote {a.json}")


if __name__ == "__main__":
    main()
