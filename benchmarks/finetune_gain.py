"""The gain of fine-tuning a pretrained ParT over training it from scratch on a small top-vs-QCD set, the way the
ParT paper shows it (arXiv 2202.03772, Table 4: ParT-f.t. against ParT on the top-tagging data set):

1. generate (Pythia 8 + FastJet, ``pipelines/generate.py gen=jets_demo``) a 4-class pre-training set (QCD, Wqq,
   Zqq, Tbqq) and, with another seed, a small 2-class top-vs-QCD set with a large held-out test split;
2. pre-train ParT on the 4 classes (``pipelines/train.py experiment=jets_demo`` with the 4 labels);
3. fine-tune it on the small set (``experiment=jets_part_finetune task.pretrained=<best.ckpt>``: backbone loaded,
   new 2-class head, backbone at ``lr_backbone_mult`` × lr);
4. train the same network from scratch on the same small set with the same settings (``task.pretrained=null``,
   one learning rate): the same epochs, hence the same number of optimizer steps;
5. both are tested on the held-out jets (the test stage of each run: AUC, 1/ε_B at 50 % and 30 % signal
   efficiency); the numbers, sizes, epochs, steps, wall times and the machine's load average go to a JSON file.

    nice python benchmarks/finetune_gain.py                      # ~10 min on 2 idle cores (defaults below)
    python benchmarks/finetune_gain.py --pretrain-jets 20000 --pretrain-epochs 10 --model part   # a bigger run

Each step is a subprocess of the package's own command lines, as a user would run them. The runs go under
``--work-dir`` (default ``data/generated/finetune_gain``, git-ignored); the generated sets are reused when they
already match. ``--pretrained CKPT`` skips step 2 and fine-tunes CKPT (e.g. this script's pre-training, stopped).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
PRETRAIN_LABELS = ["label_QCD", "label_Wqq", "label_Zqq", "label_Tbqq"]


def run(args: list[str], log: Path) -> float:
    """Run a pipeline script (python pipelines/<args>), its output into ``log``; returns the wall time (s)."""
    cmd = [sys.executable, *args]
    print("$", " ".join(cmd), flush=True)
    start = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.run(cmd, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT, check=False,
                              env={**os.environ, "WANDB_MODE": "offline", "MPLBACKEND": "Agg"})
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"failed ({proc.returncode}), see {log}:\n" + "".join(log.read_text().splitlines(True)[-15:]))
    return wall


def files(directory: Path, split: str) -> str:
    return f"[{directory}/{split}_*.root]"


def data_args(directory: Path, labels: list[str]) -> list[str]:
    return [f"data.files.train={files(directory, 'train')}", f"data.files.val={files(directory, 'val')}",
            f"data.files.test={files(directory, 'test')}", f"data.labels=[{','.join(labels)}]"]


def steps_of(run_dir: Path) -> int:
    """Optimizer steps of a finished run (``global_step`` of its last checkpoint)."""
    return int(torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True,
                          mmap=True)["global_step"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work-dir", type=Path, default=ROOT / "data" / "generated" / "finetune_gain")
    ap.add_argument("--json", type=Path, default=ROOT / "docs" / "figures" / "finetune.json")
    ap.add_argument("--model", default="part_small")
    ap.add_argument("--pretrain-jets", type=int, default=1500, help="pre-training jets per class (4 classes)")
    ap.add_argument("--pretrain-epochs", type=int, default=3)
    ap.add_argument("--finetune-jets", type=int, default=1000, help="small-set training jets per class (2 classes)")
    ap.add_argument("--finetune-epochs", type=int, default=10)
    ap.add_argument("--test-jets", type=int, default=2000, help="held-out test jets per class")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--lr-backbone-mult", type=float, default=0.1)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--pretrained", type=Path, default=None,
                    help="a checkpoint of step 2 (this script's pre-training, e.g. stopped early): skip pre-training")
    args = ap.parse_args()

    work = args.work_dir.resolve()
    pre_data, small_data = work / "pretrain_data", work / "small_data"
    work.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    wall: dict[str, float] = {}
    gen = ["pipelines/generate.py", "gen=jets_demo", f"gen.n_workers={args.workers}", "gen.progress=false"]
    wall["generate_pretrain_s"] = run([*gen, f"gen.out_dir={pre_data}", "gen.processes=[QCD,Wqq,Zqq,Tbqq]",
                                       f"gen.n_train={args.pretrain_jets}", f"gen.n_val={args.pretrain_jets // 10}",
                                       f"gen.n_test={args.pretrain_jets // 10}", "gen.seed=101"],
                                      work / "generate_pretrain.log")
    wall["generate_small_s"] = run([*gen, f"gen.out_dir={small_data}", "gen.processes=[QCD,Tbqq]",
                                    f"gen.n_train={args.finetune_jets}", f"gen.n_val={args.finetune_jets // 4}",
                                    f"gen.n_test={args.test_jets}", "gen.seed=202"], work / "generate_small.log")

    common = ["pipelines/train.py", f"model={args.model}", "model.dropout=0.0", "model.attn_dropout=0.0",
              "model.activation_dropout=0.0", "logger=none", "callbacks.progress_bar.refresh_rate=0", "seed=7"]
    pre_dir = work / "pretrain"
    if args.pretrained is None:
        wall["pretrain_s"] = run([*common, "experiment=jets_demo", *data_args(pre_data, PRETRAIN_LABELS),
                                  f"task.lr={args.lr}", f"trainer.max_epochs={args.pretrain_epochs}", "test=false",
                                  f"hydra.run.dir={pre_dir}"], work / "pretrain.log")
    pretrained = args.pretrained.resolve() if args.pretrained else pre_dir / "checkpoints" / "best.ckpt"
    pre_ckpt = torch.load(pretrained, map_location="cpu", weights_only=True, mmap=True)
    pre_auc = [float(state["best_model_score"]) for key, state in pre_ckpt.get("callbacks", {}).items()
               if "'val/auc'" in key and state.get("best_model_score") is not None]

    results = {}
    small = ["experiment=jets_part_finetune", *data_args(small_data, ["label_QCD", "label_Tbqq"]),
             f"task.lr={args.lr}", f"trainer.max_epochs={args.finetune_epochs}"]
    runs = {"finetuned": [f"task.pretrained={pretrained}", f"task.lr_backbone_mult={args.lr_backbone_mult}"],
            "scratch": ["task.pretrained=null", "task.lr_backbone_mult=1.0"]}
    for name, extra in runs.items():
        run_dir = work / name
        wall[f"{name}_s"] = run([*common, *small, *extra, f"hydra.run.dir={run_dir}"], work / f"{name}.log")
        metrics = json.loads((run_dir / "metrics.json").read_text())
        results[name] = {"auc": metrics["auc_macro"], "rej50": metrics["rej50_Tbqq"],
                         "rej30": metrics["rej30_Tbqq"], "accuracy": metrics["accuracy"],
                         "test_jets": metrics["num_jets"], "steps": steps_of(run_dir),
                         "epochs": args.finetune_epochs, "wall_s": round(wall[f"{name}_s"], 1)}
        print(name, results[name], flush=True)

    out = {
        "what": "ParT fine-tuned from a 4-class pre-training (QCD, Wqq, Zqq, Tbqq) vs trained from scratch, both on "
                "the same small top-vs-QCD set with the same epochs and steps, tested on held-out jets "
                "(Pythia 8 + FastJet jets generated by pipelines/generate.py gen=jets_demo); each run is tested with "
                "its best checkpoint by validation AUC (the train pipeline's default)",
        "command": "nice python benchmarks/finetune_gain.py " + " ".join(sys.argv[1:]),
        "model": args.model,
        "pretrain": {"classes": PRETRAIN_LABELS, "train_jets": 4 * args.pretrain_jets,
                     "val_jets": 4 * (args.pretrain_jets // 10), "checkpoint": str(pretrained),
                     "epochs": int(pre_ckpt["epoch"]) + 1, "steps": int(pre_ckpt["global_step"]), "lr": args.lr,
                     "val_auc_macro": pre_auc[0] if pre_auc else None},
        "small_set": {"classes": ["label_QCD", "label_Tbqq"], "train_jets": 2 * args.finetune_jets,
                      "val_jets": 2 * (args.finetune_jets // 4), "test_jets": 2 * args.test_jets},
        "finetune": {"lr_head": args.lr, "lr_backbone": args.lr * args.lr_backbone_mult},
        "scratch": {"lr": args.lr},
        "results": results,
        "wall_s": {k: round(v, 1) for k, v in wall.items()},
        "load_average_1_5_15_min": {"before": [round(x, 2) for x in load_before],
                                    "after": [round(x, 2) for x in os.getloadavg()]},
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "python": platform.python_version(), "torch": torch.__version__},
    }
    sys.path.insert(0, str(ROOT))
    from physics_tf.data.atomic import atomic_path

    args.json.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(args.json) as tmp:
        tmp.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
