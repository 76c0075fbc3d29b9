"""ParT training and inference throughput (jets/s), physics_tf vs weaver-core side by side when it is installed.

    python benchmarks/bench_model.py [--batch 128] [--steps 5] [--bf16] [--threads N]

Identical hyper-parameters (the paper's: 17 features, 10 classes, 2,143,486 parameters — checked), identical
padded batches (pad 128, ~50 real particles per jet on average), training step = forward + backward + AdamW
step. Both models are timed alternately in the same process so machine noise hits both.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from physics_tf.models.part import ParticleTransformer


def make_batch(batch: int, pad: int = 128, mean_particles: float = 50.0, features: int = 17, seed: int = 0):
    """Random jets with realistic multiplicities: n ~ Normal(mean, mean/3) clipped to [5, pad]; pT-ordered."""
    g = torch.Generator().manual_seed(seed)
    n = (torch.randn(batch, generator=g) * mean_particles / 3 + mean_particles).round().clamp(5, pad).long()
    mask = torch.arange(pad)[None] < n[:, None]  # (B, P)
    pt = torch.sort(torch.rand(batch, pad, generator=g) ** 3 * 200 + 0.5, dim=1, descending=True).values
    eta = torch.randn(batch, pad, generator=g) * 0.3
    phi = torch.randn(batch, pad, generator=g) * 0.3
    v = torch.stack([pt * phi.cos(), pt * phi.sin(), pt * torch.sinh(eta), pt * torch.cosh(eta)], -1)
    x = torch.randn(batch, pad, features, generator=g)
    m = mask[..., None]
    return x * m, v * m, mask, torch.randint(0, 10, (batch,), generator=g)


def weaver_part():
    try:
        from weaver.nn.model.ParticleTransformer import ParticleTransformer as WeaverParT
    except Exception:  # noqa: BLE001 - optional peer
        return None
    return WeaverParT(input_dim=17, num_classes=10)


def timed(fn, steps: int) -> list[float]:
    fn()  # warm-up
    out = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def step_fns(model, x, v, mask, y, layout: str, autocast: bool):
    """Closures for one training step and one inference pass on a batch, in the model's own layout."""
    if layout == "weaver":  # (N, C, P) and mask (N, 1, P)
        args = (x.transpose(1, 2).contiguous(), v.transpose(1, 2).contiguous(), mask[:, None].float())
    else:
        args = (x, v, mask)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ctx = lambda: torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast)  # noqa: E731

    def train():
        model.train()
        with ctx():
            loss = torch.nn.functional.cross_entropy(model(*args).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    @torch.inference_mode()
    def infer():
        model.eval()
        with ctx():
            model(*args)

    return train, infer


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--bf16", action="store_true", help="also time bf16 autocast (very slow on CPUs without bf16 units)")
    p.add_argument("--threads", type=int, default=None)
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    x, v, mask, y = make_batch(a.batch)
    count = lambda m: sum(q.numel() for q in m.parameters())  # noqa: E731
    models = {"physics_tf": (ParticleTransformer(17, 10), "physics_tf")}
    peer = weaver_part()
    if peer is not None:
        models["weaver-core"] = (peer, "weaver")
        assert count(peer) == count(models["physics_tf"][0]), (count(peer), count(models["physics_tf"][0]))
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, batch {a.batch}, pad 128, "
          f"mean real particles {mask.sum(1).float().mean():.1f}, params {count(models['physics_tf'][0]):,}")
    rows = []
    for precision in ["fp32"] + (["bf16"] if a.bf16 else []):
        fns = {name: step_fns(m, x, v, mask, y, layout, precision == "bf16") for name, (m, layout) in models.items()}
        times = {name: {"train": [], "infer": []} for name in models}
        for _ in range(a.steps):  # alternate models so drifts in machine load hit both
            for name, (train, infer) in fns.items():
                times[name]["train"] += timed(train, 1)
                times[name]["infer"] += timed(infer, 1)
        for name in models:
            tr = a.batch / statistics.median(times[name]["train"])
            inf = a.batch / statistics.median(times[name]["infer"])
            rows.append((precision, name, tr, inf))
    print(f"{'precision':<10}{'model':<14}{'train jets/s':>14}{'infer jets/s':>14}")
    for r in rows:
        print(f"{r[0]:<10}{r[1]:<14}{r[2]:>14.1f}{r[3]:>14.1f}")
    if peer is not None:
        for precision in sorted({r[0] for r in rows}):
            ours = next(r for r in rows if r[0] == precision and r[1] == "physics_tf")
            ref = next(r for r in rows if r[0] == precision and r[1] == "weaver-core")
            print(f"{precision}: physics_tf / weaver-core = train {ours[2] / ref[2]:.2f}x, inference {ours[3] / ref[3]:.2f}x")


if __name__ == "__main__":
    main()
