"""Loader throughput: JetClass-layout ROOT files → padded training batches (jets/s) and peak RSS, physics_tf vs
weaver-core's loader (``weaver.utils.dataset.SimpleIterDataset``) on the same files, side by side.

    python benchmarks/bench_loader.py [--files 2] [--jets-per-file 5120] [--scales 1 10] [--workers 0]
                                      [--batch 256] [--repeats 2] [--threads 1] [--device cpu|cuda] [--json F]

Data: synthetic JetClass-layout ROOT files (every JetClass branch; QCD and t→bqq labels; ~50 particles per jet,
normal spread, up to 150 so some jets are truncated), written once under data/generated/bench_loader/. The 10×
dataset lists the same files 10 times (links under other names), so both loaders read 10× the jets with the
same page cache.

Equivalent configurations: the 13 "kinpid" features with the same standardisation and clipping, the 4-vectors,
the mask, pad to 128 with zeros, the 2 labels; training mode (shuffled), ``drop_last``. physics_tf: the loader its
``JetDataModule`` hands the trainer (``JetIterableDataset`` in an ``EpochDataLoader``; chunks of 10,000 entries,
shuffle buffer 5,000), built here without Lightning so that both processes hold the loader and torch only.
weaver-core: ``SimpleIterDataset`` and the standard ``DataLoader``, in two settings: "weaver-core" reads whole
files per fetch (``fetch_by_files=True, fetch_step=1``; its fastest streaming setting, the one the ratio goal is
judged on) and "weaver-core-default" uses the defaults of its ``train.py`` (1 % of every file per fetch; ~10×
slower on files this small, so timed once at the smallest scale).

Steady state: jets/s over one whole epoch, from the first batch asked for to the last (the loader's set-up
before it — building the dataset and, for physics_tf, reading every file's entry count — is timed apart as
``setup_s``); on the ×10 dataset the first file's latency is amortised over 20 files. Every (loader, scale) point
runs in its own process, alternating loaders, with ``torch.set_num_threads(--threads)``; peak RSS (``ru_maxrss``
of the process and of its DataLoader workers) is that of one loader alone, also given above the RSS the process
had after its imports (``rss_imports_mb``); medians over ``--repeats``. The load average before each point is
recorded. ``--device cuda`` also moves every batch to the GPU (pinned memory, non-blocking copies), both loaders
alike. A check sum (mean of the features over real particles, jets per epoch) shows both read the same data.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data" / "generated" / "bench_loader"
LABELS = ("label_QCD", "label_Hbb", "label_Hcc", "label_Hgg", "label_H4q",
          "label_Hqql", "label_Zqq", "label_Wqq", "label_Tbqq", "label_Tbl")
PID_FLAGS = ("part_isChargedHadron", "part_isNeutralHadron", "part_isPhoton", "part_isElectron", "part_isMuon")
# (name, expression, subtract, multiply); every feature clipped to [-5, 5], as in conf/data/jets_demo.yaml
FEATURES = [
    ("part_pt_log", "log(part_pt)", "np.log(part_pt)", 1.7, 0.7),
    ("part_e_log", "log(part_energy)", "np.log(part_energy)", 2.0, 0.7),
    ("part_logptrel", "log(part_pt / jet_pt)", "np.log(part_pt/jet_pt)", -4.7, 0.7),
    ("part_logerel", "log(part_energy / jet_energy)", "np.log(part_energy/jet_energy)", -4.7, 0.7),
    ("part_deltaR", "hypot(part_deta, part_dphi)", "np.hypot(part_deta, part_dphi)", 0.2, 4.0),
    *[(n, n, None, 0.0, 1.0) for n in ("part_deta", "part_dphi", "part_charge", *PID_FLAGS)],
]


def write_files(n_files: int, jets_per_file: int) -> list[Path]:
    """Synthetic JetClass-layout files (cached by size)."""
    from physics_tf.jets.writers import write_jetclass_root

    out = []
    for k in range(n_files):
        path = DATA / f"synth_{jets_per_file}_{k:03d}.root"
        out.append(path)
        if path.is_file():
            continue
        rng = np.random.default_rng(k)
        n = jets_per_file
        counts = np.clip(np.round(rng.normal(50, 17, n)), 5, 150).astype(np.int64)
        tot = int(counts.sum())
        pt = rng.exponential(8.0, tot) + 0.5
        eta, phi = rng.normal(0.0, 0.3, tot), rng.normal(0.0, 0.3, tot)
        px, py, pz = pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta)
        jag = lambda a: np.split(a, np.cumsum(counts)[:-1])  # noqa: E731
        pid = rng.integers(0, 5, tot)
        particles = {"part_px": jag(px), "part_py": jag(py), "part_pz": jag(pz), "part_energy": jag(pt * np.cosh(eta)),
                     "part_deta": jag(eta), "part_dphi": jag(phi), "part_charge": jag(rng.integers(-1, 2, tot) * 1.0),
                     **{b: jag(rng.normal(0, 1, tot)) for b in ("part_d0val", "part_d0err", "part_dzval", "part_dzerr")},
                     **{name: jag((pid == i).astype(np.int32)) for i, name in enumerate(PID_FLAGS)}}
        jet_pt = np.bincount(np.repeat(np.arange(n), counts), weights=pt, minlength=n)
        jets = {"jet_pt": jet_pt, "jet_eta": rng.normal(0, 1, n), "jet_phi": rng.uniform(-3, 3, n),
                "jet_energy": jet_pt * 1.2, "jet_nparticles": counts * 1.0}
        cls = rng.choice([0, 8], size=n)
        labels = {name: (cls == i).astype(np.float32) for i, name in enumerate(LABELS)}
        DATA.mkdir(parents=True, exist_ok=True)
        write_jetclass_root(path, particles, jets, labels)
    return out


def scaled_file_list(files: list[Path], scale: int, tmp: Path) -> list[str]:
    if scale == 1:
        return [str(f) for f in files]
    d = tmp / f"x{scale}"
    d.mkdir(exist_ok=True)
    out = []
    for k in range(scale):
        for f in files:
            link = d / f"{k:03d}_{f.name}"
            if not link.exists():
                link.symlink_to(f.resolve())
            out.append(str(link))
    return out


def weaver_yaml(path: Path) -> None:
    """weaver-core data config equivalent to physics_tf's (same features, transformations, padding, labels)."""
    new_vars = {"part_mask": "ak.ones_like(part_energy)", "part_pt": "np.hypot(part_px, part_py)"}
    new_vars.update({name: wexpr for name, _, wexpr, *_ in FEATURES if wexpr is not None})
    cfg = {
        "selection": None,
        "new_variables": new_vars,
        "preprocess": {"method": "manual", "data_fraction": 0.5},
        "inputs": {
            "pf_features": {"length": 128, "pad_mode": "constant",
                            "vars": [[name, sub, mul, -5.0, 5.0, 0.0] for name, _, _, sub, mul in FEATURES]},
            "pf_vectors": {"length": 128, "pad_mode": "constant",
                           "vars": [["part_px", None], ["part_py", None], ["part_pz", None], ["part_energy", None]]},
            "pf_mask": {"length": 128, "pad_mode": "constant", "vars": [["part_mask", None]]},
        },
        "labels": {"type": "simple", "value": ["label_QCD", "label_Tbqq"]},
        "observers": [],
        "weights": None,
    }
    import yaml

    path.write_text(yaml.safe_dump(cfg, sort_keys=False))


def peak_rss_mb() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, workers) / 1024


def child(loader: str, files: list[str], workers: int, batch: int, tmp: Path, device: str = "cpu") -> dict:
    """One epoch of one loader in this process; returns jets, seconds, peak RSS and a check sum."""

    cuda = device == "cuda"
    if loader == "physics_tf":
        from physics_tf.data.streaming import EpochDataLoader
        from physics_tf.jets.dataset import JetIterableDataset
        from physics_tf.jets.features import JetDataConfig
    else:
        import logging

        from torch.utils.data import DataLoader
        from weaver.utils.dataset import SimpleIterDataset

        logging.getLogger("weaver").setLevel(logging.WARNING)
    rss_imports = peak_rss_mb()
    t0 = time.perf_counter()
    if loader == "physics_tf":  # what JetDataModule(...).train_dataloader() builds, without Lightning
        features = {name: {"expr": expr, "subtract": sub, "multiply": mul, "clip": [-5.0, 5.0]}
                    for name, expr, _, sub, mul in FEATURES}
        cfg = JetDataConfig(files={"train": files}, format="jetclass_root", treename="tree",
                            labels=["label_QCD", "label_Tbqq"], features=features,
                            vectors=["part_px", "part_py", "part_pz", "part_energy"], pad_length=128, chunk_size=10000)
        ds = JetIterableDataset(cfg, files, batch, train=True, shuffle_buffer=5000, seed=42)
        loader_ = EpochDataLoader(ds, lambda: 0, num_workers=workers, persistent_workers=workers > 0,
                                  pin_memory=cuda)
        unpack = lambda b: (b["x"], b["mask"])  # noqa: E731  (B, P, C), (B, P)
    else:
        cfg = tmp / "weaver_data.yaml"
        weaver_yaml(cfg)
        if loader == "weaver-core":  # whole files per fetch: its fastest streaming setting, like our chunks
            fetch = dict(fetch_by_files=True, fetch_step=1)
        else:  # "weaver-core-default": the defaults of weaver's train.py (1 % of every file per fetch)
            fetch = dict(fetch_by_files=False, fetch_step=0.01)
        ds = SimpleIterDataset({"train": files}, str(cfg), for_training=True, **fetch)
        loader_ = DataLoader(ds, batch_size=batch, drop_last=True, num_workers=workers,
                             persistent_workers=workers > 0, pin_memory=cuda)
        unpack = lambda b: (b[0]["pf_features"].transpose(1, 2), b[0]["pf_mask"][:, 0].bool())  # noqa: E731
    setup = time.perf_counter() - t0
    t0 = time.perf_counter()
    n, total, count = 0, 0.0, 0
    for batch_ in loader_:
        x, mask = unpack(batch_)
        if cuda:
            x, mask = x.to("cuda", non_blocking=True), mask.to("cuda", non_blocking=True)
        n += x.shape[0]
        total += float(x[mask].double().sum())
        count += int(mask.sum())
    dt = time.perf_counter() - t0
    peak = peak_rss_mb()
    return {"jets": n, "seconds": dt, "jets_s": n / dt, "setup_s": setup, "peak_rss_mb": peak,
            "rss_imports_mb": rss_imports, "peak_rss_above_imports_mb": peak - rss_imports,
            "feature_mean": total / count}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--files", type=int, default=2)
    p.add_argument("--jets-per-file", type=int, default=5120, help="a multiple of --batch: no remainder dropped")
    p.add_argument("--scales", type=int, nargs="+", default=[1, 10])
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads in every timed process")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--loaders", nargs="+", default=["physics_tf", "weaver-core", "weaver-core-default"])
    p.add_argument("--json", default=None)
    p.add_argument("--child", nargs=3, metavar=("LOADER", "FILELIST", "TMP"), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        import torch

        torch.set_num_threads(a.threads)
        loader, filelist, tmp = a.child
        out = child(loader, json.loads(Path(filelist).read_text()), a.workers, a.batch, Path(tmp), a.device)
        print("RESULT " + json.dumps(out))
        return
    if a.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            sys.exit("--device cuda: no CUDA device here")
    loaders = list(a.loaders)
    try:
        import weaver  # noqa: F401
    except ImportError:
        print("weaver-core not installed (pip install -e '.[bench]'): timing physics_tf only")
        loaders = [q for q in loaders if not q.startswith("weaver")]
    files = write_files(a.files, a.jets_per_file)
    results: dict = {"workers": a.workers, "batch": a.batch, "threads": a.threads, "device": a.device,
                     "files": a.files, "jets_per_file": a.jets_per_file, "cpus": os.cpu_count(),
                     "steady_state": "jets/s over one whole epoch from the first batch asked for to the last; "
                                     "loader set-up timed apart (setup_s)",
                     "points": []}
    with tempfile.TemporaryDirectory(prefix="bench_loader_") as tmp_:
        tmp = Path(tmp_)
        runs: dict = {}
        for scale in a.scales:
            listing = tmp / f"files_x{scale}.json"
            listing.write_text(json.dumps(scaled_file_list(files, scale, tmp)))
            for rep in range(a.repeats):
                for loader in loaders:  # alternate: machine noise hits both
                    if loader == "weaver-core-default" and (rep or scale != min(a.scales)):
                        continue  # ~10x slower: once, at the smallest scale
                    cmd = [sys.executable, __file__, "--workers", str(a.workers), "--batch", str(a.batch),
                           "--threads", str(a.threads), "--device", a.device, "--child", loader, str(listing),
                           str(tmp)]
                    load = os.getloadavg()[0]
                    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
                    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
                    if proc.returncode or line is None:
                        sys.exit(f"{loader} x{scale} failed:\n{proc.stderr[-3000:]}")
                    runs.setdefault((loader, scale), []).append({**json.loads(line[7:]), "load": load})
        print(f"{a.files} files x {a.jets_per_file} jets (x scale), batch {a.batch}, workers {a.workers}, "
              f"threads {a.threads}, device {a.device}, repeats {a.repeats} (medians)")
        print(f"{'loader':<20}{'scale':>6}{'jets':>9}{'jets/s':>10}{'setup s':>9}{'peak RSS MB':>13}"
              f"{'above imports':>15}{'load':>6}{'feature mean':>14}")
        for (loader, scale), rs in runs.items():
            med = lambda key: statistics.median(r[key] for r in rs)  # noqa: E731
            point = {"loader": loader, "scale": scale, "jets": rs[0]["jets"], "jets_s": med("jets_s"),
                     "setup_s": med("setup_s"), "peak_rss_mb": med("peak_rss_mb"),
                     "rss_imports_mb": med("rss_imports_mb"),
                     "peak_rss_above_imports_mb": med("peak_rss_above_imports_mb"),
                     "load": [round(r["load"], 2) for r in rs], "jets_s_runs": [r["jets_s"] for r in rs],
                     "feature_mean": rs[0]["feature_mean"], "repeats": len(rs)}
            results["points"].append(point)
            print(f"{loader:<20}{scale:>6}{point['jets']:>9}{point['jets_s']:>10,.0f}{point['setup_s']:>9.2f}"
                  f"{point['peak_rss_mb']:>13.0f}{point['peak_rss_above_imports_mb']:>15.0f}"
                  f"{statistics.median(point['load']):>6.1f}{point['feature_mean']:>14.5f}")
    pts = {(q["loader"], q["scale"]): q for q in results["points"]}
    results["ratios"] = {}
    results["rss_ratios"] = {}
    for scale in a.scales:
        for ref in ("weaver-core", "weaver-core-default"):
            if ("physics_tf", scale) in pts and (ref, scale) in pts:
                ours, theirs = pts[("physics_tf", scale)], pts[(ref, scale)]
                r = ours["jets_s"] / theirs["jets_s"]
                results["ratios"][f"x{scale} vs {ref}"] = r
                results["rss_ratios"][f"x{scale} vs {ref}"] = ours["peak_rss_mb"] / theirs["peak_rss_mb"]
                print(f"x{scale}: physics_tf / {ref} = {r:.2f}x jets/s (goal 3), peak RSS "
                      f"{ours['peak_rss_mb']:.0f} / {theirs['peak_rss_mb']:.0f} MB (goal <= 1)")
    lo, hi = min(a.scales), max(a.scales)
    for loader in loaders:
        if (loader, lo) in pts and (loader, hi) in pts and hi > lo:
            growth = pts[(loader, hi)]["peak_rss_mb"] / pts[(loader, lo)]["peak_rss_mb"]
            results[f"rss_growth_{loader}"] = growth
            print(f"{loader}: peak RSS x{growth:.2f} when the dataset grows {hi // lo}x")
    if a.json:
        sys.path.insert(0, str(ROOT))
        from physics_tf.data.atomic import atomic_path

        with atomic_path(a.json) as tmp_json:
            tmp_json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
