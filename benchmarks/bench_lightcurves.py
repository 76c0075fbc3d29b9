"""Light-curve models: inference throughput (curves/s, batched and single-curve latency) and training throughput.

    python benchmarks/bench_lightcurves.py [--batch 256] [--steps 5]

Batches come from the simulated held-out split through the training data module (max_length 256, padding
masks), so the models see realistic sequence lengths. Both models are timed alternately in one run. Needs
`python pipelines/generate.py data=lightcurves_sim` first.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from physics_tf.tasks.base import model_inputs  # noqa: E402

MODELS = ("lightcurve_transformer", "lightcurve_gru")


def median_time(fn, steps: int) -> float:
    fn()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--data-dir", default=str(ROOT / "data"))
    a = p.parse_args()
    cfg = OmegaConf.load(ROOT / "conf" / "data" / "lightcurves_sim.yaml")
    cfg.files = {k: f"{a.data_dir}/generated/lightcurves_sim/{k}.h5" for k in ("train", "val", "test")}
    if not Path(cfg.files.test).is_file():
        sys.exit(f"{cfg.files.test} missing: run `python pipelines/generate.py data=lightcurves_sim` first")
    cfg.batch_size = a.batch
    dm = instantiate(cfg)
    dm.setup("test")
    batch = next(iter(dm.test_dataloader()))
    inputs = model_inputs(batch)
    single = {k: v[:1] for k, v in inputs.items()}
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, batch {a.batch}, "
          f"padded length {batch['mask'].shape[1]}, mean observations {batch['mask'].sum(1).float().mean():.0f}")
    print(f"{'model':<24}{'params':>9}{'infer curves/s':>16}{'latency ms':>12}{'train curves/s':>16}")
    for name in MODELS:
        net = instantiate(OmegaConf.load(ROOT / "conf" / "model" / f"{name}.yaml"), **dm.model_dims)
        opt = torch.optim.AdamW(net.parameters(), lr=1e-4)

        @torch.inference_mode()
        def infer(x=inputs):
            net.eval()
            net(**x)

        def train():
            net.train()
            loss = torch.nn.functional.cross_entropy(net(**inputs), batch["y"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        t_inf = median_time(infer, a.steps)
        t_one = median_time(lambda: infer(single), 3 * a.steps)
        t_train = median_time(train, a.steps)
        n = sum(q.numel() for q in net.parameters())
        print(f"{name:<24}{n:>9,}{a.batch / t_inf:>16,.0f}{1e3 * t_one:>12.1f}{a.batch / t_train:>16,.0f}")


if __name__ == "__main__":
    main()
