"""Light-curve models side by side: inference and training curves/s, and the PLAsTiCC weighted log-loss after the
same training budget.

    python benchmarks/bench_lightcurves.py [--threads 1] [--epochs 8] [--device cpu] [--json F]

Data: the simulated set in ``--data-dir``/generated/lightcurves_sim (written first, at the README's size of 2,400
train / 600 val / 1,200 test objects, seed 42, when it is missing). Every model is a config of ``conf/model``
built with the data module's sizes (``--models``; default the per-observation transformer, the patched transformer
and the GRU).

* **Speed**: one held-out batch of ``--batch`` curves (padded to the longest, at most max_length 256 observations);
  inference curves/s (batched), single-curve latency and training curves/s (forward, backward, AdamW step). The
  models are timed in turns, round after round, so that a change of load hits all alike; each figure is the median
  over ``--rounds`` rounds.
* **Accuracy** (``--train-models``; default the patched transformer and the GRU): each model is trained for
  ``--epochs`` epochs over the train split (batch 64, the data module's augmentations, the task's AdamW with
  weight decay 0.01, 5 % warm-up and cosine decay to 1 %, lr 1e-3, seed ``--seed``), then evaluated on the whole
  test split: PLAsTiCC weighted log-loss (:func:`physics_tf.lightcurves.task.plasticc_weighted_logloss`) and
  accuracy. :func:`train_and_evaluate` is also what ``benchmarks/score_ablation.py`` uses.

JSON (``--json``): ``{"benchmark", "torch", "device", "threads", "load": {"before", "after"} (1/5/15-minute load
averages), "batch", "padded_length", "mean_observations", "budget": {"train_objects", "test_objects", "epochs",
"batch_size", "lr", "seed"}, "models": {name: {"params", "config", "infer_curves_per_s", "latency_ms",
"train_curves_per_s", and when trained "plasticc_logloss", "accuracy", "train_s_per_step", "train_wall_s"}},
"ratios_to_gru": {name: {"infer", "train"}}}``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from physics_tf.data.atomic import atomic_path  # noqa: E402
from physics_tf.lightcurves.task import plasticc_weighted_logloss  # noqa: E402
from physics_tf.tasks.base import model_inputs  # noqa: E402
from physics_tf.tasks.optim import parameter_groups  # noqa: E402
from physics_tf.tasks.schedulers import build_warmup_decay_scheduler  # noqa: E402

MODELS = ("lightcurve_transformer", "lightcurve_patch", "lightcurve_gru")
TRAIN_MODELS = ("lightcurve_patch", "lightcurve_gru")
SIZES = {"train": 2400, "val": 600, "test": 1200}  # the README's light-curve run


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def data_module(data_dir: str | Path, batch_size: int, seed: int = 42):
    """The simulated light-curve data module on ``data_dir``/generated/lightcurves_sim, written first (the README's
    sizes, seed 42) when the files are missing."""
    out = Path(data_dir) / "generated" / "lightcurves_sim"
    if not all((out / f"{k}.h5").is_file() for k in SIZES):
        from physics_tf.lightcurves.simulate import write_dataset

        print(f"writing the simulated light curves {SIZES} to {out} ...", flush=True)
        write_dataset(out, SIZES, seed=42, csv=False)
    cfg = OmegaConf.load(ROOT / "conf" / "data" / "lightcurves_sim.yaml")
    cfg.files = {k: str(out / f"{k}.h5") for k in SIZES}
    cfg.batch_size, cfg.seed = batch_size, seed
    return instantiate(cfg)


def build_model(name: str, dims: Mapping[str, int], overrides: Mapping[str, Any] | None = None, seed: int = 0):
    """``conf/model/<name>.yaml`` with ``overrides`` (e.g. ``{"attention": {"score": "additive"}}``) merged in."""
    cfg = OmegaConf.load(ROOT / "conf" / "model" / f"{name}.yaml")
    if overrides:
        cfg = OmegaConf.merge(cfg, OmegaConf.create(dict(overrides)))
    torch.manual_seed(seed)
    return instantiate(cfg, **dims)


def count_params(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def to_device(batch: Mapping[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items() if isinstance(v, torch.Tensor)}


@torch.inference_mode()
def evaluate(net: torch.nn.Module, dm: Any, device: torch.device) -> dict[str, float]:
    """PLAsTiCC weighted log-loss and accuracy of ``net`` over the whole test split."""
    net.eval()
    probs, labels = [], []
    for batch in dm.test_dataloader():
        batch = to_device(batch, device)
        probs.append(net(**model_inputs(batch)).float().softmax(-1).cpu())
        labels.append(batch["y"].cpu())
    p, y = torch.cat(probs).numpy(), torch.cat(labels).numpy()
    return {"plasticc_logloss": plasticc_weighted_logloss(p, y, dm.task_kwargs["class_codes"]),
            "accuracy": float((p.argmax(1) == y).mean()), "test_objects": int(len(y))}


def train_and_evaluate(net: torch.nn.Module, dm: Any, epochs: int, device: torch.device, lr: float = 1e-3,
                       seed: int = 0, log: Callable[[str], None] = print) -> dict[str, float]:
    """Train ``net`` for ``epochs`` over ``dm``'s train split with the task's optimiser and schedule (module
    docstring), then :func:`evaluate`; adds the median seconds per training step and the training wall time."""
    net.to(device)
    opt = torch.optim.AdamW(parameter_groups(net, lr, 0.01), lr=lr)
    total = epochs * len(dm.train_dataloader())
    sched = build_warmup_decay_scheduler(opt, int(round(0.05 * total)), total, "cosine", 0.01)
    torch.manual_seed(seed)
    step_times, t_start = [], time.perf_counter()
    for epoch in range(epochs):
        dm.set_epoch(epoch)
        net.train()
        losses = []
        for batch in dm.train_dataloader():
            batch = to_device(batch, device)
            t0 = time.perf_counter()
            loss = torch.nn.functional.cross_entropy(net(**model_inputs(batch)), batch["y"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            sync(device)
            step_times.append(time.perf_counter() - t0)
            losses.append(loss.item())
        log(f"  epoch {epoch}: train loss {statistics.fmean(losses):.3f}")
    out = evaluate(net, dm, device)
    out.update(train_s_per_step=statistics.median(step_times), train_wall_s=time.perf_counter() - t_start)
    return out


def timed_rounds(fns: Mapping[str, Callable[[], None]], rounds: int, device: torch.device) -> dict[str, float]:
    """Median seconds of each function, called in turns (one call of each per round) after one warm-up call."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():
        fn()
    for _ in range(rounds):
        for k, fn in fns.items():
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def speed(nets: Mapping[str, torch.nn.Module], batch: Mapping[str, torch.Tensor], rounds: int,
          device: torch.device) -> dict[str, dict[str, float]]:
    """Inference curves/s, single-curve latency (ms) and training curves/s of every net on ``batch``."""
    inputs = model_inputs(batch)
    single = {k: v[:1] for k, v in inputs.items()}
    n = inputs["flux"].shape[0]
    opts = {k: torch.optim.AdamW(net.parameters(), lr=1e-5) for k, net in nets.items()}

    def infer(net, x):
        @torch.inference_mode()
        def run():
            net.eval()
            net(**x)
        return run

    def train(net, opt):
        def run():
            net.train()
            loss = torch.nn.functional.cross_entropy(net(**inputs), batch["y"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return run

    t_inf = timed_rounds({k: infer(net, inputs) for k, net in nets.items()}, rounds, device)
    t_one = timed_rounds({k: infer(net, single) for k, net in nets.items()}, 3 * rounds, device)
    t_train = timed_rounds({k: train(net, opts[k]) for k, net in nets.items()}, rounds, device)
    return {k: {"infer_curves_per_s": n / t_inf[k], "latency_ms": 1e3 * t_one[k],
                "train_curves_per_s": n / t_train[k]} for k in nets}


def write_json(path: str | Path, result: Mapping[str, Any]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(result, indent=1) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch threads (CPU)")
    p.add_argument("--batch", type=int, default=256, help="curves per batch of the speed figures")
    p.add_argument("--rounds", type=int, default=5, help="timed rounds of the speed figures (medians)")
    p.add_argument("--epochs", type=int, default=8, help="training budget of the accuracy figures; 0: speed only")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--models", nargs="+", default=list(MODELS), help="model configs (conf/model) timed")
    p.add_argument("--train-models", nargs="*", default=list(TRAIN_MODELS), help="of those, the ones trained")
    p.add_argument("--data-dir", default=str(ROOT / "data"))
    p.add_argument("--json", default=None, help="write the figures here (e.g. docs/figures/bench_lightcurves.json)")
    a = p.parse_args()
    if a.device == "cuda" and not torch.cuda.is_available():
        sys.exit("bench_lightcurves: error: --device cuda but no CUDA device is available")
    device = torch.device(a.device)
    torch.set_num_threads(a.threads)
    load_before = os.getloadavg()

    dm = data_module(a.data_dir, a.batch)
    dm.setup("test")
    batch = to_device(next(iter(dm.test_dataloader())), device)
    nets = {name: build_model(name, dm.model_dims).to(device) for name in a.models}
    length, mean_obs = batch["mask"].shape[1], float(batch["mask"].sum(1).float().mean())
    print(f"torch {torch.__version__}, {a.device}, threads {torch.get_num_threads()}, batch {a.batch}, padded length "
          f"{length}, mean observations {mean_obs:.0f}, load {load_before[0]:.2f}")
    figures = speed(nets, batch, a.rounds, device)
    models: dict[str, dict[str, Any]] = {}
    for name, net in nets.items():
        models[name] = {"params": count_params(net), "config": net.hparams_for_checkpoint, **figures[name]}

    train_dm = data_module(a.data_dir, 64, seed=42)
    train_dm.setup("fit")
    budget = {"train_objects": len(train_dm.datasets["train"]), "epochs": a.epochs, "batch_size": 64, "lr": 1e-3,
              "seed": a.seed}
    if a.epochs > 0:
        for name in a.train_models:
            print(f"training {name} for {a.epochs} epochs ...", flush=True)
            net = build_model(name, train_dm.model_dims, seed=a.seed)
            res = train_and_evaluate(net, train_dm, a.epochs, device, seed=a.seed)
            budget["test_objects"] = res.pop("test_objects")
            models.setdefault(name, {"params": count_params(net), "config": net.hparams_for_checkpoint}).update(res)

    print(f"{'model':<24}{'params':>9}{'infer curves/s':>16}{'latency ms':>12}{'train curves/s':>16}"
          f"{'log-loss':>10}{'accuracy':>10}")
    for name, m in models.items():
        cells = [f"{m[k]:>{w},.{d}f}" if k in m else f"{'-':>{w}}" for k, w, d in
                 (("infer_curves_per_s", 16, 0), ("latency_ms", 12, 1), ("train_curves_per_s", 16, 0),
                  ("plasticc_logloss", 10, 3), ("accuracy", 10, 3))]
        print(f"{name:<24}{m['params']:>9,}" + "".join(cells))
    gru = models.get("lightcurve_gru", {})
    ratios = {name: {"infer": m["infer_curves_per_s"] / gru["infer_curves_per_s"],
                     "train": m["train_curves_per_s"] / gru["train_curves_per_s"]}
              for name, m in models.items() if "infer_curves_per_s" in m and "infer_curves_per_s" in gru}
    for name, r in ratios.items():
        print(f"{name} / lightcurve_gru: inference {r['infer']:.2f}×, training {r['train']:.2f}×")
    load_after = os.getloadavg()
    print(f"load average (1, 5, 15 min) before {load_before}, after {load_after}")
    if a.json:
        write_json(a.json, {"benchmark": "bench_lightcurves", "torch": torch.__version__, "device": a.device,
                            "threads": torch.get_num_threads(), "load": {"before": load_before, "after": load_after},
                            "batch": a.batch, "padded_length": length, "mean_observations": mean_obs,
                            "budget": budget, "models": models,
                            "ratios_to_gru": ratios})
        print(f"wrote {a.json}")


if __name__ == "__main__":
    main()
