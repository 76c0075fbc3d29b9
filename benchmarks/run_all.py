"""Run every benchmark and print their figures and one summary table: `make bench` (a few minutes on 2 cores).

    python benchmarks/run_all.py [--quick] [--bf16] [--threads N] [--device cpu|cuda] [--json F]

Comparisons with weaver-core need the `[bench]` extra (``make bench`` installs it); without it the physics_tf
figures are printed alone. The loader benchmark writes its own synthetic JetClass-layout files; the light-curve
benchmark generates its data if missing. ``--quick`` cuts repeats and sizes (a smoke run), ``--bf16`` adds
bf16-autocast timings of the model (very slow on CPUs without bf16 units: one repeat). ``--device cuda`` runs the
model, FLOP/s and attention benchmarks on the GPU (the loader, light-curve and DDP ones stay on the CPU; see also
``benchmarks/gpu_check.sh``). ``--json``: the summary rows ``{"rows": [{"figure", "value", "goal"}], "device"}``,
written atomically.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from physics_tf.data.atomic import atomic_path  # noqa: E402


def run(args: list[str]) -> None:
    print(f"\n$ {' '.join(args)}", flush=True)
    subprocess.run([sys.executable, *args], cwd=ROOT, check=True)


def summary(out: Path) -> list[tuple[str, str, str]]:
    """(figure, value, goal) rows from the benchmarks' JSON files."""
    rows = []
    model = json.loads((out / "model.json").read_text())
    for r in model["rows"]:
        rows.append((f"ParT {r['precision']} {r['model']} train / infer (jets/s)",
                     f"{r['train_jets_s']:.1f} / {r['infer_jets_s']:.1f}", ""))
    for key, r in model["ratios"].items():
        rows.append((f"ParT {key} / weaver-core, training", f"{r['train']:.2f}x", ">= 2x (1 thread)"))
        rows.append((f"ParT {key} / weaver-core, inference", f"{r['infer']:.2f}x", ">= 2x (1 thread)"))
    if "max_logit_diff_same_weights" in model:
        rows.append(("ParT same weights: max |logit difference| vs weaver-core",
                     f"{model['max_logit_diff_same_weights']:.1e}", "~0"))
    loader = json.loads((out / "loader.json").read_text())
    for p in loader["points"]:
        rows.append((f"loader {p['loader']} x{p['scale']}: jets/s, peak RSS", f"{p['jets_s']:,.0f}, "
                     f"{p['peak_rss_mb']:.0f} MB", ""))
    for key, r in loader["ratios"].items():
        rows.append((f"loader physics_tf / {key.split(' vs ')[1]} ({key.split(' vs ')[0]})", f"{r:.2f}x", ">= 3x"))
    for key in [k for k in loader if k.startswith("rss_growth_")]:
        rows.append((f"loader {key[len('rss_growth_'):]} peak RSS growth, dataset x10", f"{loader[key]:.2f}x",
                     "flat (1x)"))
    flops = json.loads((out / "flops.json").read_text())
    rows.append(("fp32 GEMM peak (GFLOP/s)", f"{flops['gemm_peak_gflops']:.1f}", ""))
    for name, r in flops["models"].items():
        rows.append((f"ParT inference {name}: achieved GFLOP/s (fraction of peak)",
                     f"{r['achieved_gflops']:.1f} ({100 * r['fraction_of_peak']:.0f} %)", ">= 50 %"))
        if "useful_fraction_of_peak" in r and name != "weaver-core":
            rows.append((f"ParT inference {name}: weaver-core's FLOPs per second (fraction)",
                         f"{r['useful_gflops']:.1f} ({100 * r['useful_fraction_of_peak']:.0f} %)", ""))
    attn = json.loads((out / "attention.json").read_text())
    for variant, s in attn["slopes"].items():
        rows.append((f"attention {variant}: log-log slope memory / time", f"{s['memory']:.2f} / {s['time']:.2f}",
                     ""))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--json", default=None, help="write the summary rows to this JSON file")
    a = p.parse_args()
    threads = ["--threads", str(a.threads)] if a.threads else []
    device = ["--device", a.device]
    with tempfile.TemporaryDirectory(prefix="physics_tf_bench_") as tmp:
        out = Path(tmp)
        model = [str(HERE / "bench_model.py"), "--repeats", "2" if a.quick else "5", "--json", str(out / "model.json")]
        run(model + threads + device + (["--bf16", "--bf16-repeats", "1"] if a.bf16 else []))
        run([str(HERE / "bench_flops.py"), "--repeats", "2" if a.quick else "5", "--json", str(out / "flops.json"),
             *threads, *device])
        loader = [str(HERE / "bench_loader.py"), "--json", str(out / "loader.json")]
        run(loader + (["--jets-per-file", "1024", "--repeats", "1"] if a.quick else []))
        attention = [str(HERE / "bench_attention.py"), "--json", str(out / "attention.json")]
        run(attention + device + (["--lengths", "128", "512", "1024"] if a.quick else []))
        if not (ROOT / "data" / "generated" / "lightcurves_sim" / "test.h5").is_file():
            run([str(ROOT / "pipelines" / "generate.py"), "data=lightcurves_sim"])
        run([str(HERE / "bench_lightcurves.py")])
        run([str(HERE / "bench_ddp.py")])
        rows = summary(out)
    width = max(len(r[0]) for r in rows)
    print(f"\n{'=' * 30} summary {'=' * 30}")
    print(f"{'figure':<{width}}  {'value':>24}  goal")
    for name, value, goal in rows:
        print(f"{name:<{width}}  {value:>24}  {goal}")
    if a.json:
        with atomic_path(a.json) as tmp:
            Path(tmp).write_text(json.dumps({"device": a.device, "rows": [
                {"figure": name, "value": value, "goal": goal} for name, value, goal in rows]}, indent=1))


if __name__ == "__main__":
    main()
