"""Loader throughput: JetClass-layout ROOT files → padded training batches (jets/s) and peak RSS.

    python benchmarks/bench_loader.py [--data-dir data/generated/jets_demo] [--workers 0] [--batch 256]

Reads the generated demo files (run `python pipelines/generate.py` first) with the demo data config (13 kinpid
features + 4-vectors, pad 128, shuffle buffer), the way training does: one full epoch of the train split.
Reports jets/s and the process's peak RSS; pass --repeat K to list the same files K times and see that memory
stays flat while the dataset grows.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from physics_tf.data.datamodule import JetDataModule  # noqa: E402


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=str(ROOT / "data" / "generated" / "jets_demo"))
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--repeat", type=int, default=1, help="read every train file this many times (via links)")
    a = p.parse_args()
    files = sorted(Path(a.data_dir).glob("train_*.root"))
    if not files:
        sys.exit(f"no train_*.root in {a.data_dir}: run `python pipelines/generate.py` first")
    if a.repeat > 1:  # a dataset a.repeat times larger: links to the same files under other names
        tmp = Path(tempfile.mkdtemp(prefix="bench_loader_"))
        for k in range(a.repeat):
            for f in files:
                (tmp / f"{k:03d}_{f.name}").symlink_to(f.resolve())
        files = sorted(tmp.glob("*.root"))
    cfg = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "data" / "jets_demo.yaml"))
    cfg.pop("_target_")
    cfg.update(files={"train": [str(f) for f in files]}, batch_size=a.batch, num_workers=a.workers)
    rss_before = peak_rss_mb()
    dm = JetDataModule(**cfg)
    dm.setup("fit")
    t0 = time.perf_counter()
    n = 0
    for batch in dm.train_dataloader():
        n += batch["x"].shape[0]
    dt = time.perf_counter() - t0
    print(f"{len(files)} files, workers {a.workers}, batch {a.batch}: {n} jets in {dt:.2f} s = {n / dt:,.0f} jets/s; "
          f"peak RSS {peak_rss_mb():.0f} MB ({peak_rss_mb() - rss_before:.0f} MB above the {rss_before:.0f} MB after imports)")


if __name__ == "__main__":
    main()
