"""Run every benchmark and print their figures: `make bench` (a few minutes on 2 cores).

Model throughput is measured side by side with weaver-core when the `[bench]` extra is installed; the loader
and light-curve benchmarks need generated data, which they generate if missing.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def run(args: list[str]) -> None:
    print(f"\n$ {' '.join(args)}", flush=True)
    subprocess.run([sys.executable, *args], cwd=ROOT, check=True)


def main() -> None:
    run([str(HERE / "bench_model.py"), "--steps", "5"])
    if not list((ROOT / "data" / "generated" / "jets_demo").glob("train_*.root")):
        run([str(ROOT / "pipelines" / "generate.py")])
    run([str(HERE / "bench_loader.py")])
    run([str(HERE / "bench_loader.py"), "--repeat", "5"])
    if not (ROOT / "data" / "generated" / "lightcurves_sim" / "test.h5").is_file():
        run([str(ROOT / "pipelines" / "generate.py"), "data=lightcurves_sim"])
    run([str(HERE / "bench_lightcurves.py")])
    run([str(HERE / "bench_ddp.py")])


if __name__ == "__main__":
    main()
