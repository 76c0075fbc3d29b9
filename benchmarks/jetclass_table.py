"""The JetClass comparison table on generated jets: PFN, P-CNN, ParticleNet, LorentzNet, ParT (plain) and ParT
trained with the same budget through the real training pipeline, evaluated on the test split.

    python pipelines/generate.py gen=jets_table                       # data/generated/jets_table (4 classes)
    python benchmarks/jetclass_table.py [--steps 10000] [--batch 128] [--models pfn,pcnn,...] [--threads 1]
                                        [--device cpu|cuda] [--json docs/figures/jetclass_table.json]

Every model is one ``pipelines/train.py experiment=jets_<model>`` run (its own process, ``--threads`` intra-op
threads) on the same files, labels (QCD, Tbqq, Wqq, Zqq), batch size, number of optimizer steps (``--steps``;
``trainer.max_steps``, so the warm-up + cosine schedule spans the same steps), validation every ``--val-every``
steps on ``--val-batches`` batches (the best by val/auc is tested), seed, and the task's optimizer settings. Run
directories: ``--work-dir``/<model>. After each model the JSON is rewritten (atomically); a model already in it
with the same settings is skipped, and a finished run directory (metrics.json) is read instead of retrained — so
an interrupted table resumes where it stopped (``--force`` retrains).

Per model: test accuracy, macro AUC, 1/ε_B at ε_S = 50 % for each signal class vs QCD (``rej50``; JetClass
table style), parameters, FLOPs per jet (``torch.utils.flop_counter.FlopCounterMode`` on one test batch of
``--flops-batch`` jets, divided by its size: the matmul / conv FLOPs the network runs on these jets, each trimmed
to the batch's longest jet; benchmarks/bench_flops.py's count), training time (the training steps only:
forward, backward, optimizer — not data loading or validation; :class:`StepTimer`) and its rate per 1,000 steps,
the fit loop's time (Lightning's Timer: with data loading and validation) and the whole run's wall time. The
published figures (issue 17; the ParT paper's JetClass table on 10 classes and 100 M jets, LorentzNet on top
tagging) go beside them, for orientation only: the data, class set and budget differ.

JSON (``--json``): ``{"schema": "jetclass_table/1", "command", "settings": {dataset, data_dir, labels, steps,
batch, val_every, val_batches, seed, threads, device, overrides}, "load_average": {"before", "after"} (1, 5,
15 min), "torch", "models": {name: {"experiment", "accuracy", "auc_macro", "rej50": {class: value}, "params",
"flops_per_jet", "train_s", "train_s_per_1000_steps", "fit_s", "wall_s", "steps", "num_jets",
"run_dir", "load_average", "trained_by"}} (seconds; a run read back from its directory keeps the wall time, load
average (before / after its training) and command of the invocation that trained it, from ``table_run.json`` in
the run directory; null where that file is absent; the top-level load average is this invocation's),
"published": {"jetclass": {name: {"accuracy", "params", "flops_per_jet"}}, "top_tagging": {name: {"accuracy"}},
"sources"}}`` — absent published values are left out.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import lightning as L

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

# model config name → its experiment
MODELS = {"pfn": "jets_pfn", "pcnn": "jets_pcnn", "particlenet": "jets_particlenet", "lorentznet": "jets_lorentznet",
          "part_plain": "jets_part_plain", "part": "jets_part"}
LABELS = ["label_QCD", "label_Tbqq", "label_Wqq", "label_Zqq"]
PUBLISHED = {
    "jetclass": {  # ParT paper (arXiv 2202.03772) Table 2, as issue 17 and ../shared/PHYSICS.md quote it
        "pfn": {"accuracy": 0.772, "params": 86_100},
        "pcnn": {"accuracy": 0.809, "params": 354_000},
        "particlenet": {"accuracy": 0.844, "params": 370_000, "flops_per_jet": 540e6},
        "part_plain": {"accuracy": 0.849},
        "part": {"accuracy": 0.861, "params": 2_140_000, "flops_per_jet": 340e6},
    },
    "top_tagging": {"particlenet": {"accuracy": 0.940}, "lorentznet": {"accuracy": 0.942, "params": 224_000},
                    "part": {"accuracy": 0.940}},
    "sources": "JetClass (10 classes, 100 M training jets): Qu, Li, Qian, arXiv 2202.03772, Table 2; top tagging: "
               "the same paper and Gong et al., arXiv 2201.08187 (LorentzNet). Parameter counts of PFN, P-CNN "
               "and LorentzNet as the papers state them (physics_tf/jets/{pfn,pcnn,lorentznet}.py).",
}


class StepTimer(L.Callback):
    """Seconds spent in training steps (forward, backward, optimizer; not data loading or validation), written to
    ``path`` as ``{"seconds", "steps"}`` when training ends; kept in checkpoints, so a resumed run adds up."""

    def __init__(self, path: str) -> None:
        self.path, self.seconds, self.steps, self._start = Path(path), 0.0, 0, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._start is not None:
            if pl_module.device.type == "cuda":
                import torch

                torch.cuda.synchronize()
            self.seconds += time.perf_counter() - self._start
            self.steps += 1
            self._start = None

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            write_json(self.path, {"seconds": self.seconds, "steps": self.steps})

    def state_dict(self) -> dict:
        return {"seconds": self.seconds, "steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.seconds, self.steps = float(state["seconds"]), int(state["steps"])


def settings(a: argparse.Namespace) -> dict:
    return {"dataset": a.dataset, "data_dir": str(a.data_dir), "labels": LABELS, "steps": a.steps, "batch": a.batch,
            "val_every": a.val_every, "val_batches": a.val_batches, "seed": a.seed, "threads": a.threads,
            "device": a.device, "overrides": a.override}


def train_command(a: argparse.Namespace, model: str, run_dir: Path) -> list[str]:
    files = Path(a.data_dir) / "generated" / a.dataset
    val_every = min(a.val_every, a.steps)
    overrides = [
        f"experiment={MODELS[model]}", f"paths.data_dir={a.data_dir}",
        *(f"data.files.{split}=[{files}/{split}_*.root]" for split in ("train", "val", "test")),
        f"data.labels=[{','.join(LABELS)}]", f"data.batch_size={a.batch}", f"seed={a.seed}",
        "trainer=gpu" if a.device == "cuda" else "trainer=cpu",
        "trainer.max_epochs=-1", "trainer.min_epochs=0", f"++trainer.max_steps={a.steps}",
        "trainer.check_val_every_n_epoch=null", f"++trainer.val_check_interval={val_every}",
        f"trainer.limit_val_batches={a.val_batches}", "trainer.num_sanity_val_steps=0",
        "logger=csv", "+callbacks.timer._target_=lightning.pytorch.callbacks.Timer",
        "+callbacks.step_timer._target_=jetclass_table.StepTimer", f"+callbacks.step_timer.path={run_dir}/steps.json",
        "callbacks.progress_bar.refresh_rate=0", f"hydra.run.dir={run_dir}", *a.override,
    ]
    return [sys.executable, str(ROOT / "pipelines" / "train.py"), *overrides]


def fit_seconds(run_dir: Path) -> float | None:
    """The fit loop's time (training with its data loading and validation) from the Timer callback's state in
    the run's last checkpoint."""
    import torch

    for name in ("last.ckpt", "best.ckpt"):
        path = run_dir / "checkpoints" / name
        if path.is_file():
            state = torch.load(path, map_location="cpu", weights_only=True).get("callbacks", {})
            timer = next((v for k, v in state.items() if k.split("{")[0] == "Timer"), None)
            if timer:
                return float(timer["time_elapsed"]["train"])
    return None


def size_and_flops(run_dir: Path, flops_batch: int) -> tuple[int, float]:
    """Parameters of the run's network and its FLOPs per jet on the first ``flops_batch`` test jets."""
    import yaml
    from bench_flops import count_flops

    from physics_tf.tasks.base import model_inputs
    from physics_tf.training.export import build_network

    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    config["data"]["batch_size"] = flops_batch
    net, datamodule = build_network(config)
    params = sum(p.numel() for p in net.parameters())
    datamodule.setup("test")
    batch = model_inputs(next(iter(datamodule.test_dataloader())), net)
    jets = next(iter(batch.values())).shape[0]
    net.requires_grad_(False)  # no autograd graph (memory), and FlopCounterMode's module tracker needs no hooks
    return params, count_flops(lambda: net(**batch)) / jets


def same_run(run_dir: Path, a: argparse.Namespace) -> bool:
    """Whether the run directory's stored config was trained with these settings (steps, batch, seed, files)."""
    import yaml

    path = run_dir / "config.yaml"
    if not path.is_file():
        return False
    cfg = yaml.safe_load(path.read_text())
    files = Path(a.data_dir) / "generated" / a.dataset
    return (cfg["trainer"].get("max_steps") == a.steps and cfg["data"]["batch_size"] == a.batch
            and cfg["seed"] == a.seed and cfg["data"]["files"]["train"] == [f"{files}/train_*.root"])


def run_model(a: argparse.Namespace, model: str) -> dict:
    run_dir = (Path(a.work_dir) / model).resolve()
    metrics_path = run_dir / "metrics.json"
    record_path = run_dir / "table_run.json"  # when and under what load this run was trained
    wall = None
    same = same_run(run_dir, a) and not a.force
    if not (same and metrics_path.is_file()):
        run_dir.mkdir(parents=True, exist_ok=True)
        metrics_path.unlink(missing_ok=True)
        path = os.pathsep.join(filter(None, [str(ROOT / "benchmarks"), os.environ.get("PYTHONPATH")]))
        env = {**os.environ, "OMP_NUM_THREADS": str(a.threads), "MKL_NUM_THREADS": str(a.threads),
               "WANDB_MODE": "offline", "MPLBACKEND": "Agg", "PYTHONPATH": path}  # (StepTimer from here)
        cmd = train_command(a, model, run_dir)
        if same and (run_dir / "checkpoints" / "last.ckpt").is_file():
            cmd.append("ckpt_path=last")  # an interrupted run: on from its last epoch
        print(f"[{model}] {' '.join(cmd[1:])}", flush=True)
        load_before = [round(x, 2) for x in os.getloadavg()]
        t0 = time.perf_counter()
        with open(run_dir / "stdout.log", "w") as log:
            res = subprocess.run(cmd, check=False, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        wall = time.perf_counter() - t0
        if res.returncode != 0 or not metrics_path.is_file():
            tail = (run_dir / "stdout.log").read_text().splitlines()[-5:]
            raise SystemExit(f"jetclass_table: error: {model} training failed (exit {res.returncode}); "
                             f"{run_dir / 'stdout.log'}: {' | '.join(tail)}")
        write_json(record_path, {"command": " ".join(sys.argv), "wall_s": wall, "load_average": {
            "before": load_before, "after": [round(x, 2) for x in os.getloadavg()]}})
    record = json.loads(record_path.read_text()) if record_path.is_file() else {}
    metrics = json.loads(metrics_path.read_text())
    params, flops = size_and_flops(run_dir, a.flops_batch)
    steps = json.loads((run_dir / "steps.json").read_text()) if (run_dir / "steps.json").is_file() else {}
    train_s = steps.get("seconds")
    return {"experiment": MODELS[model], "accuracy": metrics.get("accuracy"), "auc_macro": metrics.get("auc_macro"),
            "rej50": {k.removeprefix("rej50_"): v for k, v in metrics.items() if k.startswith("rej50_")},
            "params": params, "flops_per_jet": flops, "train_s": train_s,
            "train_s_per_1000_steps": train_s / steps["steps"] * 1000 if steps.get("steps") else None,
            "fit_s": fit_seconds(run_dir), "wall_s": record.get("wall_s", wall), "steps": a.steps,
            "num_jets": metrics.get("num_jets"), "run_dir": str(run_dir),
            "load_average": record.get("load_average"), "trained_by": record.get("command")}


def write_json(path: Path, table: dict) -> None:
    from physics_tf.data.atomic import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(table, indent=1) + "\n")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated, of: " + ", ".join(MODELS))
    p.add_argument("--data-dir", default=str(ROOT / "data"), help="holds generated/<dataset>/{train,val,test}_*.root")
    p.add_argument("--dataset", default="jets_table")
    p.add_argument("--steps", type=int, default=10_000, help="optimizer steps per model")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--val-every", type=int, default=1000, help="validate every N steps (and at the end)")
    p.add_argument("--val-batches", type=int, default=50)
    p.add_argument("--flops-batch", type=int, default=128)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--work-dir", default=str(ROOT / "logs" / "jetclass_table"))
    p.add_argument("--json", default=str(ROOT / "docs" / "figures" / "jetclass_table.json"))
    p.add_argument("--force", action="store_true", help="retrain every model, even one already done")
    p.add_argument("--override", action="append", default=[], help="an extra training override (repeatable)")
    a = p.parse_args(argv)
    models = [m.strip() for m in a.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        p.error(f"--models: unknown {unknown}; choose from {list(MODELS)}")
    files = Path(a.data_dir) / "generated" / a.dataset
    if not any(files.glob("train_*.root")):
        p.error(f"--data-dir/--dataset: no {files}/train_*.root (python pipelines/generate.py gen={a.dataset})")
    if a.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            p.error("--device cuda: no CUDA device available")
    import torch

    torch.set_num_threads(a.threads)
    path = Path(a.json)
    old = json.loads(path.read_text()) if path.is_file() else {}
    same = old.get("settings") == settings(a) and not a.force
    table = {"schema": "jetclass_table/1", "command": " ".join(sys.argv), "settings": settings(a),
             "load_average": {"before": [round(x, 2) for x in os.getloadavg()]}, "torch": torch.__version__,
             "models": dict(old.get("models", {})) if same else {}, "published": PUBLISHED}
    for model in models:
        if model in table["models"]:
            print(f"[{model}] already in {path}: skipped", flush=True)
            continue
        table["models"][model] = run_model(a, model)
        table["load_average"]["after"] = [round(x, 2) for x in os.getloadavg()]
        write_json(path, table)
        row = table["models"][model]
        print(f"[{model}] accuracy {row['accuracy']:.4f}, AUC {row['auc_macro']:.4f}, rej50 {row['rej50']}, "
              f"{row['params']:,} parameters, {row['flops_per_jet'] / 1e6:.1f} MFLOPs/jet, train "
              f"{row['train_s'] or float('nan'):.0f} s", flush=True)
    table["load_average"]["after"] = [round(x, 2) for x in os.getloadavg()]
    write_json(path, table)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
