"""ParT training and inference throughput (jets/s), physics_tf vs weaver-core side by side when it is installed.

    python benchmarks/bench_model.py [--batch 128] [--repeats 5] [--bf16] [--compile] [--threads N]
                                     [--device cpu|cuda] [--json F]

Identical hyper-parameters (the paper's: 17 features, 10 classes, 2,143,486 parameters — checked), identical
padded batches (pad 128, ~50 real particles per jet on average), the same weights (weaver-core's initial weights
loaded into physics_tf's model), training step = forward + backward + AdamW step. Both models are timed
alternately in the same process so machine noise hits both. ``--device cuda`` times on the GPU (synchronised;
bf16 there uses the same batch as fp32) and reports the peak GPU memory of each model's steps.

JSON (``--json``, written atomically): ``{"device", "torch", "batch", "threads", "params", "rows": [{"precision",
"model", "repeats", "batch", "train_jets_s", "infer_jets_s" (wall clock), "train_jets_cpu_s", "infer_jets_cpu_s"
(per CPU-second of the compute thread; CPU with 1 thread: robust to other load), "peak_mem_mb" (cuda only)}],
"ratios": {"<precision> <model>": {"train", "infer", "train_cpu", "infer_cpu"}} (physics_tf / weaver-core), "max_logit_diff_same_weights", "init_std_ratio_range",
"compile_s" (with --compile: seconds of the first compiled training + inference step), "load_before",
"load" (1-minute load averages before / after)}``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import time
from pathlib import Path

import torch

from physics_tf.data.atomic import atomic_path
from physics_tf.jets.part import ParticleTransformer, from_weaver_state_dict


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


@torch.no_grad()
def check_same_function(ours, peer, x, v, mask) -> float:
    """Randomise every parameter and BatchNorm statistic of the reference, load them into ours, compare eval logits.

    Returns the largest absolute logit difference (a copy of each model is used; the originals are untouched).
    """
    ours, peer = copy.deepcopy(ours).eval(), copy.deepcopy(peer).eval()
    g = torch.Generator().manual_seed(1)
    for name, t in peer.state_dict().items():
        if t.is_floating_point():
            noise = torch.rand(t.shape, generator=g) if "running_var" in name else torch.randn(t.shape, generator=g)
            t.copy_(0.5 + noise if ("running_var" in name or name.endswith(("c_attn", "w_resid"))) else t + 0.1 * noise)
    ours.load_state_dict(from_weaver_state_dict(peer.state_dict()))
    ref = peer(x.transpose(1, 2).contiguous(), v.transpose(1, 2).contiguous(), mask[:, None].float())
    return float((ours(x, v, mask) - ref).abs().max())


def init_spread(model, weaver_names: bool = False) -> dict[str, float]:
    """Standard deviation of every weight matrix at initialisation, keyed by physics_tf's parameter names."""
    sd = model.state_dict()
    sd = from_weaver_state_dict(sd) if weaver_names else sd
    return {k: float(t.float().std()) for k, t in sd.items() if k.endswith("weight") and t.dim() >= 2}


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def step_fns(model, x, v, mask, y, layout: str, autocast: bool):
    """Closures for one training step and one inference pass on a batch, in the model's own layout."""
    if layout == "weaver":  # (N, C, P) and mask (N, 1, P)
        args = (x.transpose(1, 2).contiguous(), v.transpose(1, 2).contiguous(), mask[:, None].float())
    else:
        args = (x, v, mask)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    device = x.device.type
    ctx = lambda: torch.autocast(device, dtype=torch.bfloat16, enabled=autocast)  # noqa: E731

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
    p.add_argument("--repeats", type=int, default=5, help="timed steps per model and mode (medians reported)")
    p.add_argument("--bf16", action="store_true", help="also time bf16 autocast (very slow on CPUs without bf16 units)")
    p.add_argument("--bf16-repeats", type=int, default=1)
    p.add_argument("--bf16-batch", type=int, default=32, help="smaller batch for bf16 (same for both models)")
    p.add_argument("--compile", action="store_true", help="also time torch.compile(physics_tf model)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--no-peer", action="store_true", help="physics_tf alone, even if weaver-core is installed")
    p.add_argument("--json", default=None, help="write the figures to this JSON file")
    a = p.parse_args()
    if a.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device available")
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    load_before = os.getloadavg()[0]
    x, v, mask, y = make_batch(a.batch)
    count = lambda m: sum(q.numel() for q in m.parameters())  # noqa: E731
    ours = ParticleTransformer(17, 10)
    models = {"physics_tf": (ours, "physics_tf")}
    peer = None if a.no_peer else weaver_part()
    result: dict = {"device": a.device, "torch": torch.__version__, "batch": a.batch,
                    "threads": torch.get_num_threads(), "params": count(ours), "rows": [], "load_before": load_before}
    if peer is not None:
        models["weaver-core"] = (peer, "weaver")
        assert count(peer) == count(ours), (count(peer), count(ours))
        result["max_logit_diff_same_weights"] = check_same_function(ours, peer, x[:32], v[:32], mask[:32])
        spread_ours, spread_ref = init_spread(ours), init_spread(peer, weaver_names=True)
        result["init_std_ratio_range"] = [min(spread_ours[k] / spread_ref[k] for k in spread_ours),
                                          max(spread_ours[k] / spread_ref[k] for k in spread_ours)]
        ours.load_state_dict(from_weaver_state_dict(peer.state_dict()))  # same weights: the same work
    if a.compile:
        models["physics_tf+compile"] = (torch.compile(copy.deepcopy(ours), dynamic=True), "physics_tf")
    for model, _ in models.values():
        model.to(a.device)
    x, v, mask, y = (t.to(a.device) for t in (x, v, mask, y))
    print(f"torch {torch.__version__}, device {a.device}, threads {torch.get_num_threads()}, batch {a.batch}, pad 128, "
          f"mean real particles {mask.sum(1).float().mean():.1f}, longest {int(mask.sum(1).max())}, "
          f"params {count(ours):,} (weaver-core: {count(peer) if peer is not None else 'not compared'})")
    print("both: dropout 0.1 (attention weights, activations, residual branches), AdamW lr 1e-4; training trims "
          "each batch to a random quantile q ~ U(0.9, 1.02) of its multiplicities (weaver-core SequenceTrimmer, "
          "after its 5 warm-up calls), inference to the longest jet")
    if "max_logit_diff_same_weights" in result:
        lo, hi = result["init_std_ratio_range"]
        print(f"same function: max |logit difference| with the reference's (randomised) weights loaded = "
              f"{result['max_logit_diff_same_weights']:.2e}; init std ratio per weight matrix {lo:.3f} … {hi:.3f}")
    cuda = a.device == "cuda"
    for precision in ["fp32"] + (["bf16"] if a.bf16 else []):
        repeats = a.repeats if precision == "fp32" or cuda else a.bf16_repeats
        nb = a.batch if precision == "fp32" or cuda else a.bf16_batch
        fns = {name: step_fns(m, x[:nb], v[:nb], mask[:nb], y[:nb], layout, precision == "bf16")
               for name, (m, layout) in models.items()}
        peak_mem = {}
        for name, (train, infer) in fns.items():  # warm-up: > 5 forward calls, past the reference trimmer's
            if cuda:
                sync(a.device)
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            for _ in range(3 if precision == "fp32" or cuda else 1):
                train(), infer()
            sync(a.device)
            if name.endswith("+compile") and precision == "fp32":
                result["compile_s"] = time.perf_counter() - t0
            if cuda:
                peak_mem[name] = torch.cuda.max_memory_allocated() / 2**20
        times = {name: {"train": [], "infer": []} for name in models}
        cpu = {name: {"train": [], "infer": []} for name in models}  # this thread's CPU time: robust to load
        for step in range(repeats):  # alternate models so drifts in machine load hit both
            for name, (train, infer) in fns.items():
                for mode, fn in (("train", train), ("infer", infer)):
                    torch.manual_seed(1000 + step)  # the same random trimming length for both models
                    sync(a.device)
                    t0, c0 = time.perf_counter(), time.thread_time()
                    fn()
                    sync(a.device)
                    times[name][mode].append(time.perf_counter() - t0)
                    cpu[name][mode].append(time.thread_time() - c0)
        for name in models:
            row = {"precision": precision, "model": name, "repeats": repeats, "batch": nb,
                   "train_jets_s": nb / statistics.median(times[name]["train"]),
                   "infer_jets_s": nb / statistics.median(times[name]["infer"])}
            if not cuda and torch.get_num_threads() == 1:  # jets per CPU-second of the (only) compute thread
                row["train_jets_cpu_s"] = nb / statistics.median(cpu[name]["train"])
                row["infer_jets_cpu_s"] = nb / statistics.median(cpu[name]["infer"])
            if name in peak_mem:
                row["peak_mem_mb"] = peak_mem[name]
            result["rows"].append(row)
    print(f"{'precision':<10}{'model':<20}{'batch':>6}{'train jets/s':>14}{'infer jets/s':>14}")
    for r in result["rows"]:
        print(f"{r['precision']:<10}{r['model']:<20}{r['batch']:>6}{r['train_jets_s']:>14.1f}{r['infer_jets_s']:>14.1f}")
    result["ratios"] = {}
    if peer is not None:
        for precision in dict.fromkeys(r["precision"] for r in result["rows"]):
            rows = {r["model"]: r for r in result["rows"] if r["precision"] == precision}
            for name in rows:
                if name == "weaver-core":
                    continue
                tr = rows[name]["train_jets_s"] / rows["weaver-core"]["train_jets_s"]
                inf = rows[name]["infer_jets_s"] / rows["weaver-core"]["infer_jets_s"]
                result["ratios"][f"{precision} {name}"] = {"train": tr, "infer": inf}
                print(f"{precision}: {name} / weaver-core = train {tr:.2f}x, inference {inf:.2f}x (goal 2x each, "
                      f"1 thread)")
                if "train_jets_cpu_s" in rows[name]:
                    ref = rows["weaver-core"]
                    cpu_ratio = {"train": rows[name]["train_jets_cpu_s"] / ref["train_jets_cpu_s"],
                                 "infer": rows[name]["infer_jets_cpu_s"] / ref["infer_jets_cpu_s"]}
                    result["ratios"][f"{precision} {name}"].update(train_cpu=cpu_ratio["train"],
                                                                    infer_cpu=cpu_ratio["infer"])
                    print(f"{precision}: {name} / weaver-core per CPU-second of the compute thread = train "
                          f"{cpu_ratio['train']:.2f}x, inference {cpu_ratio['infer']:.2f}x")
    result["load"] = os.getloadavg()[0]  # 1-minute load average at the end: how busy the machine was
    print(f"1-minute load average: {load_before:.1f} before, {result['load']:.1f} after")
    if a.json:
        with atomic_path(a.json) as tmp:
            Path(tmp).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
