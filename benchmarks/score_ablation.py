"""The six alignment scores of the attention core on the light-curve task: the same model, data, budget and seed,
one score at a time (issue 17).

    python benchmarks/score_ablation.py [--threads 1] [--epochs 5] [--json docs/figures/score_ablation.json]

Model: ``conf/model/<--model>.yaml`` (default ``lightcurve_patch``, the transformer on patches of 8 observations)
with ``attention.score`` set to each of :data:`physics_tf.nn.scores.SCORES` in turn — scaled_dot (Vaswani), dot and
general (Luong), additive (Bahdanau), cosine (Graves, content-based), location (Luong, location-based; its
``max_len`` is the most keys any layer sees: ⌈max_length / patch_size⌉ + 2). Every run starts from the same seed
(so the weights the scores share start equal) and sees the same batches.

Data and budget: the simulated set of ``benchmarks/bench_lightcurves.py`` (2,400 train / 1,200 test objects,
written when missing), ``--epochs`` epochs of batch 64 with the task's AdamW and schedule
(:func:`bench_lightcurves.train_and_evaluate`). The default, 5 epochs (190 steps of 64 curves per score), took
33 minutes for all six with 1 thread on a 2-core machine at a load average of 11–13 (one score 3.5–6.5 min; the
additive score is the slowest); at a load of ~4 it takes about a third of that.

Per score: PLAsTiCC weighted log-loss and accuracy on the whole test split, parameters, median training seconds
per step (batch 64), and inference curves/s on one held-out batch of 256 curves (all six timed in turns, medians of
``--rounds`` rounds, as in bench_lightcurves).

JSON (``--json``): ``{"benchmark": "score_ablation", "torch", "device", "threads", "model", "config" (the
scaled-dot model's hparams), "load": {"before", "after"} (1/5/15-minute load averages), "budget": {"train_objects",
"test_objects", "epochs", "batch_size", "steps", "lr", "seed"}, "scores": {score: {"plasticc_logloss",
"accuracy", "params", "train_s_per_step", "train_wall_s", "infer_curves_per_s"}}}``.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_lightcurves import (  # noqa: E402
    ROOT,
    build_model,
    count_params,
    data_module,
    speed,
    to_device,
    train_and_evaluate,
    write_json,
)

from physics_tf.nn.scores import SCORES  # noqa: E402


def score_overrides(score: str, model: str, max_length: int) -> dict:
    """The ``attention`` of ``model``'s config for ``score`` (location: ``max_len`` from the token count)."""
    attention: dict = {"score": score}
    if score == "location":
        from omegaconf import OmegaConf

        patch = int(OmegaConf.load(ROOT / "conf" / "model" / f"{model}.yaml").get("patch_size", 1))
        attention["max_len"] = math.ceil(max_length / patch) + 2  # [class token, conditioning token, tokens]
    return {"attention": attention}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch threads (CPU)")
    p.add_argument("--model", default="lightcurve_patch", help="model config (conf/model)")
    p.add_argument("--scores", nargs="+", default=list(SCORES), choices=SCORES)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rounds", type=int, default=3, help="timed rounds of the inference figures (medians)")
    p.add_argument("--data-dir", default=str(ROOT / "data"))
    p.add_argument("--json", default=None, help="write the figures here (e.g. docs/figures/score_ablation.json)")
    a = p.parse_args()
    if a.device == "cuda" and not torch.cuda.is_available():
        sys.exit("score_ablation: error: --device cuda but no CUDA device is available")
    device = torch.device(a.device)
    torch.set_num_threads(a.threads)
    load_before = os.getloadavg()

    dm = data_module(a.data_dir, 64, seed=42)
    dm.setup("fit")
    dm.setup("test")
    results: dict[str, dict] = {}
    nets = {}
    for score in a.scores:
        print(f"{score}: training {a.model} for {a.epochs} epochs ...", flush=True)
        net = build_model(a.model, dm.model_dims, score_overrides(score, a.model, dm.max_length), seed=a.seed)
        res = train_and_evaluate(net, dm, a.epochs, device, seed=a.seed)
        results[score] = {"params": count_params(net), **res}
        nets[score] = net
        print(f"{score}: log-loss {res['plasticc_logloss']:.3f}, accuracy {res['accuracy']:.3f}, "
              f"{res['train_s_per_step']:.3f} s/step", flush=True)

    speed_dm = data_module(a.data_dir, 256)
    speed_dm.setup("test")
    batch = to_device(next(iter(speed_dm.test_dataloader())), device)
    for score, figures in speed(nets, batch, a.rounds, device).items():
        results[score]["infer_curves_per_s"] = figures["infer_curves_per_s"]

    print(f"{'score':<12}{'log-loss':>10}{'accuracy':>10}{'params':>10}{'train s/step':>14}{'infer curves/s':>16}")
    for score, r in results.items():
        print(f"{score:<12}{r['plasticc_logloss']:>10.3f}{r['accuracy']:>10.3f}{r['params']:>10,}"
              f"{r['train_s_per_step']:>14.3f}{r['infer_curves_per_s']:>16,.0f}")
    load_after = os.getloadavg()
    print(f"load average (1, 5, 15 min) before {load_before}, after {load_after}")
    if a.json:
        first = next(iter(results))
        write_json(a.json, {
            "benchmark": "score_ablation", "torch": torch.__version__, "device": a.device,
            "threads": torch.get_num_threads(), "model": a.model,
            "config": build_model(a.model, dm.model_dims).hparams_for_checkpoint,
            "load": {"before": load_before, "after": load_after},
            "budget": {"train_objects": len(dm.datasets["train"]), "test_objects": results[first]["test_objects"],
                       "epochs": a.epochs, "batch_size": 64, "steps": a.epochs * len(dm.train_dataloader()),
                       "lr": 1e-3, "seed": a.seed},
            "scores": {s: {k: v for k, v in r.items() if k != "test_objects"} for s, r in results.items()}})
        print(f"wrote {a.json}")


if __name__ == "__main__":
    main()
