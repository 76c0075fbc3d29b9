"""The README's performance and comparison tables, rendered from the JSON that the benchmark scripts write
(``docs/figures/<name>.json``); docs/readme_figures.py puts each in its ``<!-- generated: NAME -->`` section.

Each ``section_*`` reads one benchmark's JSON and returns Markdown: the figures are never typed by hand, and a
section says the load average the figures were taken at.
"""

from __future__ import annotations

import json
import textwrap
from collections import defaultdict
from pathlib import Path

FIGURES = Path(__file__).resolve().parent / "figures"


def _load(name: str) -> dict:
    return json.loads((FIGURES / name).read_text())


def _wrap(text: str) -> str:
    return "\n".join(textwrap.wrap(text, 115, break_long_words=False, break_on_hyphens=False))


def _load_text(before, after=None) -> str:
    """A load average (a number or the (1, 5, 15 min) triple) as 'load 12.7–16.1'."""
    first = lambda x: x[0] if isinstance(x, (list, tuple)) else x  # noqa: E731
    if after is None:
        return f"load {first(before):.1f}"
    return f"load {first(before):.1f}–{first(after):.1f}"


ATTENTION_ROWS = (  # (variant in bench_attention.json, label)
    ("naive", "naive softmax(QKᵀ/√d)V"),
    ("sdpa_bias_mask", "SDPA + pair bias + key mask (ParT)"),
    ("full", "`full` (SDPA + key mask; light curves)"),
    ("window", "`window`"),
    ("lsh", "`lsh` (Reformer)"),
    ("sparse_strided", "`sparse_strided` (blocks √L)"),
    ("sparse_fixed", "`sparse_fixed` (blocks √L)"),
    ("latent", "`LatentEncoder` (Perceiver latents, whole encoder)"),
    ("auger_window", "Auger window temporal encoder (whole encoder)"),
    ("auger_perceiver", "Auger Perceiver temporal encoder (whole encoder)"),
)
SCORES = ("scaled_dot", "dot", "general", "cosine", "location", "additive")


def section_attention() -> str:
    """Attention memory and time against L, per kind and per alignment score (benchmarks/bench_attention.py)."""
    d = _load("bench_attention.json")
    rows: dict[str, dict[int, dict]] = defaultdict(dict)
    for r in d["rows"]:
        rows[r["variant"]][r["L"]] = r
    clock = "CPU ms" if d.get("time_slope_clock") == "cpu_ms" else "ms"
    key = "cpu_ms" if clock == "CPU ms" else "ms"
    lines = [f"| variant | longest L | peak at longest L | {clock} at L = 4096 | {clock} at longest L | "
             "memory slope | time slope |", "|---|---|---|---|---|---|---|"]
    for variant, label in ATTENTION_ROWS:
        if variant not in rows:
            continue
        top = max(rows[variant])
        last, slope = rows[variant][top], d["slopes"].get(variant, {})
        peak = f"{last['peak_mb']:.1f} MB"
        if last.get("input_mb"):
            peak += f" (+ {last['input_mb']:.0f} MB bias input)"
        at4096 = rows[variant].get(4096)
        mem = f"{slope['memory']:.2f}" if "memory" in slope else "–"
        if "memory_with_input" in slope:
            mem += f" ({slope['memory_with_input']:.2f} with the input)"
        lines.append(f"| {label} | {top:,} | {peak} | {at4096[key]:.1f} | {last[key]:.1f} | {mem} | "
                     f"{slope.get('time', float('nan')):.2f} |")
    score_lines = ["| score | memory slope | time slope | " + " | ".join(f"{clock} / peak MB at L = {n:,}" for n in (1024, 4096))
                   + " |", "|---|---|---|---|---|"]
    for s in SCORES:
        v = f"score_{s}"
        if v not in rows:
            continue
        cells = []
        for n in (1024, 4096):
            r = rows[v].get(n)
            cells.append(f"{r[key]:.1f} / {r['peak_mb']:.1f}" if r else f"– (stopped at {max(rows[v]):,})")
        sl = d["slopes"].get(v, {})
        score_lines.append(f"| `{s}` | {sl.get('memory', float('nan')):.2f} | {sl.get('time', float('nan')):.2f} | "
                           + " | ".join(cells) + " |")
    note = (f"One call, batch 1, 8 heads × 16, inference, {d['threads']} thread on {d['device']}, "
            f"{_load_text(d['load_before'], d['load_after'])} on 2 cores (so times are process CPU time); "
            "peak = extra resident memory of the call; slopes = least squares of log(value) on log(L) over L ≥ 512. "
            "Made by `python benchmarks/bench_attention.py --threads 1 --json docs/figures/bench_attention.json`.")
    return ("\n".join(lines) + "\n\nAlignment scores (a whole `MultiheadAttention(128, 8, score=...)` layer):\n\n"
            + "\n".join(score_lines) + "\n\n" + _wrap(note))


def section_loader() -> str:
    """Jets loader jets/s and peak RSS against weaver-core (benchmarks/bench_loader.py)."""
    d = _load("bench_loader.json")
    pts = {(p["loader"], p["scale"]): p for p in d["points"]}
    lines = ["| dataset | physics_tf jets/s | weaver-core jets/s (whole files) | ratio | goal | physics_tf peak RSS "
             "(above imports) | weaver-core peak RSS (above imports) | load |", "|---|---|---|---|---|---|---|---|"]
    for scale in sorted({s for _, s in pts}):
        ours, ref = pts.get(("physics_tf", scale)), pts.get(("weaver-core", scale))
        if not ours or not ref:
            continue
        lines.append(f"| ×{scale} ({ours['jets']:,} jets) | {ours['jets_s']:,.0f} | {ref['jets_s']:,.0f} | "
                     f"**{ours['jets_s'] / ref['jets_s']:.2f}×** | ≥ 3× | {ours['peak_rss_mb']:.0f} MB "
                     f"({ours['peak_rss_above_imports_mb']:.0f}) | {ref['peak_rss_mb']:.0f} MB "
                     f"({ref['peak_rss_above_imports_mb']:.0f}) | {ours['load'][0]:.1f} |")
    default = pts.get(("weaver-core-default", 1))
    note = (f"{d['files']} files × {d['jets_per_file']:,} synthetic JetClass jets (×10 lists them 10 times), batch "
            f"{d['batch']}, {d['workers']} DataLoader worker(s) each, {d['threads']} thread, {d['device']}; steady "
            f"state = {d['steady_state']}. ")
    if default:
        note += (f"weaver-core with its train.py defaults (1 % of every file per fetch): "
                 f"{default['jets_s']:,.0f} jets/s at ×1. ")
    note += ("The same check sum on both sides. Made by `python benchmarks/bench_loader.py --workers 1 --threads 1 "
             "--repeats 3 --json docs/figures/bench_loader.json`.")
    return "\n".join(lines) + "\n\n" + _wrap(note)


def section_lightcurves_speed() -> str:
    """Light-curve transformer and GRU: curves/s and the log-loss at one budget (benchmarks/bench_lightcurves.py)."""
    d = _load("bench_lightcurves.json")
    lines = ["| model | parameters | inference curves/s | ÷ GRU | single-curve latency | training curves/s | "
             "weighted log-loss | accuracy |", "|---|---|---|---|---|---|---|---|"]
    gru = d["models"]["lightcurve_gru"]["infer_curves_per_s"]
    for name, m in d["models"].items():
        loss = f"{m['plasticc_logloss']:.3f}" if "plasticc_logloss" in m else "–"
        acc = f"{m['accuracy']:.3f}" if "accuracy" in m else "–"
        lines.append(f"| `{name}` | {m['params']:,} | {m['infer_curves_per_s']:,.0f} | "
                     f"{m['infer_curves_per_s'] / gru:.2f}× | {m['latency_ms']:.1f} ms | "
                     f"{m['train_curves_per_s']:,.1f} | {loss} | {acc} |")
    b = d["budget"]
    note = (f"Held-out batch of {d['batch']} simulated curves padded to {d['padded_length']} "
            f"({d['mean_observations']:.0f} observations on average), {d['threads']} thread, {d['device']}, "
            f"{_load_text(d['load']['before'], d['load']['after'])} on 2 cores; log-loss and accuracy after "
            f"{b['epochs']} epochs on {b['train_objects']:,} objects (batch {b['batch_size']}, seed {b['seed']}), tested "
            f"on {b['test_objects']:,} (– : not trained). Made by `python benchmarks/bench_lightcurves.py "
            f"--threads 1 --json docs/figures/bench_lightcurves.json`.")
    return "\n".join(lines) + "\n\n" + _wrap(note)


def section_score_ablation() -> str:
    """The six alignment scores on the light-curve task (benchmarks/score_ablation.py)."""
    d = _load("score_ablation.json")
    lines = ["| score | weighted log-loss | accuracy | parameters | training s/step | inference curves/s |",
             "|---|---|---|---|---|---|"]
    best = min(v["plasticc_logloss"] for v in d["scores"].values())
    for name, v in d["scores"].items():
        loss = f"{v['plasticc_logloss']:.3f}"
        lines.append(f"| `{name}` | {'**' + loss + '**' if v['plasticc_logloss'] == best else loss} | "
                     f"{v['accuracy']:.3f} | {v['params']:,} | {v['train_s_per_step']:.2f} | "
                     f"{v['infer_curves_per_s']:,.0f} |")
    b = d["budget"]
    note = (f"`model={d['model']}`, the same simulated set, seed and budget for every score: {b['epochs']} epochs "
            f"({b['steps']} steps of {b['batch_size']}) on {b['train_objects']:,} objects, tested on "
            f"{b['test_objects']:,}; {d['threads']} thread, {_load_text(d['load']['before'], d['load']['after'])} on 2 "
            "cores (training s/step moved with the load; inference was timed in turns). One seed and a short budget: "
            "differences under about 0.05 are within noise. Made by `python benchmarks/score_ablation.py --threads 1 "
            "--json docs/figures/score_ablation.json`.")
    return "\n".join(lines) + "\n\n" + _wrap(note)


JET_MODELS = (("pfn", "PFN"), ("pcnn", "P-CNN"), ("particlenet", "ParticleNet"), ("lorentznet", "LorentzNet"),
              ("part_plain", "ParT (plain)"), ("part", "ParT"))


def _training_loads(models: dict, fallback: dict) -> str:
    """The load each group of models was trained at (rows keep their training invocation's load average)."""
    groups: dict[str, list[str]] = {}
    for key, label in JET_MODELS:
        m = models.get(key)
        if m is None:
            continue
        load = m.get("load_average") or fallback
        groups.setdefault(_load_text(load["before"], load["after"]), []).append(label)
    return "; ".join(f"{text} ({', '.join(labels)})" for text, labels in groups.items())


def section_jetclass_table() -> str:
    """The jet models of the published tables, trained with one budget on the generated four-class set
    (benchmarks/jetclass_table.py), beside the published figures."""
    d = _load("jetclass_table.json")
    models, pub = d["models"], d["published"]
    classes = sorted({c for m in models.values() for c in m["rej50"]})
    lines = ["| model | accuracy | macro AUC | " + " | ".join(f"1/ε_B {c} (ε_S = 50 %)" for c in classes)
             + " | parameters | MFLOPs per jet | training s | published JetClass accuracy | published parameters "
             "| published top-tagging accuracy |", "|---" * (9 + len(classes)) + "|"]
    for key, label in JET_MODELS:
        m = models.get(key)
        if m is None:
            continue
        j, t = pub["jetclass"].get(key, {}), pub["top_tagging"].get(key, {})
        rej = " | ".join(f"{m['rej50'][c]:.0f}" if m["rej50"].get(c) is not None else "–" for c in classes)
        lines.append(f"| {label} | {m['accuracy']:.3f} | {m['auc_macro']:.3f} | {rej} | {m['params']:,} | "
                     f"{m['flops_per_jet'] / 1e6:.1f} | {m['train_s']:.0f} | {j.get('accuracy', '–')} | "
                     f"{format(j['params'], ',') if 'params' in j else '–'} | {t.get('accuracy', '–')} |")
    st = d["settings"]
    order = sorted((m["accuracy"], label) for key, label in JET_MODELS if (m := models.get(key)))
    note = (f"Each model: {st['steps']} optimizer steps of {st['batch']} jets on `{st['dataset']}` "
            f"(classes {', '.join(st['labels'])}), seed {st['seed']}, {st['threads']} thread, {st['device']}, the "
            f"best validation checkpoint tested on the whole test split; FLOPs counted by "
            f"`torch.utils.flop_counter` on one test batch (matmuls and convolutions). Trained at "
            f"{_training_loads(models, d['load_average'])} on 2 cores. Measured order by "
            f"accuracy: {' < '.join(label for _, label in order)}. The published figures are for orientation only: "
            f"{pub['sources']} Made by `{d['command']}`.")
    return "\n".join(lines) + "\n\n" + _wrap(note)


def section_auger_speed() -> str:
    """Auger transformer against the LSTM + hexagonal-convolution baseline: events/s and the race to the
    baseline's best validation loss (benchmarks/bench_auger.py)."""
    d, r = _load("bench_auger.json"), _load("bench_auger_race.json")
    lines = ["| model | parameters | training events/s | ÷ baseline | peak MB |", "|---|---|---|---|---|"]
    for name, m in d["throughput"].items():
        lines.append(f"| {name} | {m['params']:,} | {m['train_events_per_s']:.1f} | {d['speed_ratio'][name]:.2f}× | "
                     f"{m['peak_mb']:.0f} |")
    race = r["race"]
    rl = ["| model (race) | events/s | best validation loss | its X_max resolution | time to the baseline's best |",
          "|---|---|---|---|---|"]
    for name, m in race["models"].items():
        ratio = race["time_to_target_ratio"].get(name)
        reach = f"{ratio:.2f}× the baseline's" if ratio is not None else "not reached"
        rl.append(f"| {name} | {m['events_per_s']:.1f} | {m['best_val_loss']:.4f} | "
                  f"{m['best_val_resolution']:.1f} g/cm² | {reach} |")
    note = (f"Throughput: batch {d['batch']}, {d['threads']} thread, process CPU time, "
            f"{_load_text(d['load_average']['before'], d['load_average']['after'])}; made by `{d['command']}`. "
            f"Race: both models get the same batches in the same order ({race['train_events']:,} training and "
            f"{race['val_events']:,} validation events, {race['epochs']} epochs, batch {race['batch']}), taking turns "
            f"step by step; {_load_text(r['load_average']['before'], r['load_average']['after'])}; made by "
            f"`{r['command']}`.")
    return "\n".join(lines) + "\n\n" + "\n".join(rl) + "\n\n" + _wrap(note)


def section_auger_kinds() -> str:
    """The temporal attention kinds on 960-bin traces (benchmarks/auger_kinds.py)."""
    d = _load("auger_kinds.json")
    lines = ["| temporal attention | parameters | training events/s | peak MB | test X_max resolution | "
             "test ln A resolution |", "|---|---|---|---|---|---|"]
    for name, k in d["kinds"].items():
        opts = ", ".join(f"{a}={b}" for a, b in k["attention"].items() if a != "kind")
        label = f"`{name}`" + (f" ({opts})" if opts else "")
        lines.append(f"| {label} | {k['params']:,} | {k['events_per_s']:.1f} | {k['peak_mb']:.0f} | "
                     f"{k['test']['xmax_resolution']:.1f} g/cm² | {k['test']['lna_resolution']:.2f} |")
    note = (f"Traces of {d['bins']} bins in patches of {d['patch']} ({d['bins'] // d['patch']} tokens), the same "
            f"reduced widths for every kind, {d['train_events']:,} training / {d['val_events']:,} validation / "
            f"{d['test_events']:,} test events, {d['epochs']} epochs of batch {d['batch']}, the same batches for "
            f"every kind; {d['threads']} thread, {_load_text(d['load_average']['before'], d['load_average']['after'])}. "
            f"Made by `{d['command']}`.")
    if d.get("rerun"):
        r = d["rerun"]
        note += (f" Rerun of {', '.join(f'`{k}`' for k in r['kinds'])} beside `{r['reference']}` (`{r['command']}`, "
                 f"{_load_text(r['load_average']['before'], r['load_average']['after'])}): {r['why']}; its events/s "
                 f"are the rerun's ratio to `{r['reference']}` times `{r['reference']}`'s figure above.")
    return "\n".join(lines) + "\n\n" + _wrap(note)


def section_flops() -> str:
    """Achieved FLOP/s of ParT inference against the fp32 GEMM peak (benchmarks/bench_flops.py)."""
    d = _load("bench_flops.json")
    peak = d["gemm_peak_gflops"]
    lines = ["| model | GFLOP per batch | seconds | achieved GFLOP/s | ÷ GEMM peak | weaver-core's FLOPs per second ÷ peak |",
             "|---|---|---|---|---|---|"]
    for name, m in d["models"].items():
        lines.append(f"| {name} | {m['gflop_per_batch']:.1f} | {m['seconds']:.2f} | {m['achieved_gflops']:.1f} | "
                     f"**{m['fraction_of_peak']:.0%}** | {m['useful_fraction_of_peak']:.0%} |")
    note = (f"fp32 GEMM peak (`torch.mm`, {d['gemm_n']}²): {peak:.1f} GFLOP/s at {d['threads']} thread; batch "
            f"{d['batch']} of ParT inference, FLOPs counted with `torch.utils.flop_counter` (plus the CPU flash kernel "
            f"as 4·B·H·Lq·Lk·d); {_load_text(d['load_before'], d['load'])} on 2 cores. Made by `python "
            "benchmarks/bench_flops.py --threads 1 --json docs/figures/bench_flops.json`.")
    return "\n".join(lines) + "\n\n" + _wrap(note)


SECTIONS = {"flops": section_flops, "auger_speed": section_auger_speed, "auger_kinds": section_auger_kinds, "jetclass_table": section_jetclass_table, "attention": section_attention, "loader": section_loader, "lightcurves_speed": section_lightcurves_speed,
            "score_ablation": section_score_ablation}
