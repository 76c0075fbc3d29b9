"""The README's figures, produced rather than typed: its generated sections and pictures come from JSON and PNG files
that the pipelines and benchmarks wrote, kept under docs/figures/.

    # 1. collect: copy a finished run's metrics.json and plots (and benchmark JSON) into docs/figures/
    python docs/readme_figures.py collect --demo-run logs/train/jets_demo/<time> --demo-log demo.log \\
        --lightcurves-run logs/train/lightcurves_transformer/<time> --auger-run logs/train/auger_transformer/<time> \\
        --bench-model model_a.json model_b.json
    # 2. render: rewrite the README's generated sections from docs/figures/ (--check: only compare, exit 1 if stale)
    python docs/readme_figures.py render [--check]

A generated section of README.md lies between ``<!-- generated: NAME -->`` and ``<!-- end generated: NAME -->``;
edit this script or the JSON, never the section. tests/test_readme.py fails when a section differs from what
``render`` makes of the committed JSON, and (slow) when ``make demo`` prints another table than the README's.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
import shutil
import textwrap
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
FIGURES = HERE / "figures"
README = ROOT / "README.md"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

import perf_figures  # noqa: E402


def _load(name: str) -> dict:
    return json.loads((FIGURES / name).read_text())


def demo_table(metrics: dict) -> str:
    """The "Test metrics" table exactly as the demo prints it (the same printer, fed from ``metrics.json``)."""
    from physics_tf.jets.task import JetTaggingTask
    from physics_tf.tasks.summary import print_test_summary

    values = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        print_test_summary(values, JetTaggingTask.COUNT_KEY, Path("RUN"), ["metrics.json"])
    lines = out.getvalue().splitlines()
    end = max(i for i, line in enumerate(lines) if line.startswith("└"))
    return "\n".join(line.rstrip() for line in lines[: end + 1])


def _minutes(seconds: float) -> str:
    m, s = divmod(round(seconds), 60)
    return f"{m} min {s} s" if m else f"{s} s"


def section_demo() -> str:
    demo = _load("demo.json")
    timing = demo.get("timing", {})
    lines = []
    if timing:
        lines.append(f"`make demo` took {_minutes(timing['generate_s'] + timing['train_s'])} on 2 CPU cores after the "
                     f"install when these figures were taken ({_minutes(timing['generate_s'])} to generate "
                     f"{demo['generated_jets']:,} jets, {_minutes(timing['train_s'])} to train the small ParT — "
                     f"`model=part_small`, {demo['epochs']} epochs over {demo['train_jets']:,} jets — and test it "
                     f"on {int(demo['metrics']['num_jets']):,} held-out jets; load average {timing['load']:.1f}). "
                     "It ends with")
    lines = textwrap.wrap(" ".join(lines), 115) if lines else []
    lines += ["", "```", demo_table(demo["metrics"]), "```"]
    return "\n".join(lines)


def _ratio(rows: list[dict], key: str) -> tuple[float, float, float]:
    ours = next(r[key] for r in rows if r["model"] == "physics_tf")
    ref = next(r[key] for r in rows if r["model"] == "weaver-core")
    return ours / ref, ours, ref


def section_part_vs_weaver() -> str:
    """ParT against weaver-core, same work: the current run (bench_model.json) beside the earlier ones."""
    named = [("now", "bench_model.json")] + [(f"earlier run {p.stem[-1].upper()}", p.name)
                                             for p in sorted(FIGURES.glob("bench_model_*.json"))]
    runs = [(label, _load(name)) for label, name in named if (FIGURES / name).exists()]
    head = "| figure | " + " | ".join(f"{label} (threads {r['threads']})" for label, r in runs) + " |"
    lines = [head, "|---" * (len(runs) + 1) + "|"]
    for key, what in (("train_jets_s", "fp32 training"), ("infer_jets_s", "fp32 inference")):
        cells = []
        for _, r in runs:
            fp32 = [row for row in r["rows"] if row["precision"] == "fp32"]
            ratio, ours, ref = _ratio(fp32, key)
            cells.append(f"**{ratio:.2f}×** ({ours:.1f} vs {ref:.1f} jets/s)")
        lines.append(f"| {what}, physics_tf / weaver-core | " + " | ".join(cells) + " |")
    loads = ", ".join(f"{label}: {r['load_before']:.1f}–{r['load']:.1f}" if "load_before" in r
                      else f"{label}: {r['load']:.1f}" if "load" in r else f"{label}: not recorded"
                      for label, r in runs)
    first = runs[0][1]
    lines += [""] + textwrap.wrap(f"Batch {first['batch']}, {first['params']:,} parameters on both sides, "
              f"{first['rows'][0]['repeats']} repeats each, medians; same weights give logits equal to "
              f"{max(r['max_logit_diff_same_weights'] for _, r in runs):.1e}. Load average on the 2 cores: {loads}. "
              "Made by `python benchmarks/bench_model.py --threads 1 --json docs/figures/bench_model.json`.", 115,
              break_long_words=False, break_on_hyphens=False)
    return "\n".join(lines)


def section_pictures() -> str:
    parts = []
    demo = _load("demo.json")
    parts.append(f"![ROC of the demo](docs/figures/demo_roc.png)\n\n*The demo's background rejection against top-jet "
                 f"efficiency (`make demo`; AUC {demo['metrics']['auc_macro']:.4f}).*")
    if (FIGURES / "auger.json").is_file():
        a = _load("auger.json")
        res = a["metrics"]["xmax"]["resolution"]
        parts.append(f"![Auger X_max resolution against energy](docs/figures/auger_resolution.png)\n\n*X_max bias and "
                     f"resolution against lg(E/eV) per primary, Auger transformer "
                     f"({int(a['metrics']['num_events']):,} test events; σ(X_max) = {res:.1f} g/cm² overall), made "
                     f"by:*\n\n```\n{_lines(a['command'])}\n```")
    if (FIGURES / "lightcurves.json").is_file():
        lc = _load("lightcurves.json")
        m = lc["metrics"]
        parts.append(f"![Light-curve confusion matrix](docs/figures/lightcurves_confusion.png)\n\n*Normalised "
                     f"confusion matrix of the light-curve transformer ({int(m['num_objects']):,} test objects; "
                     f"accuracy {m['accuracy']:.3f}, PLAsTiCC weighted log-loss {m['plasticc_logloss']:.3f}), made "
                     f"by:*\n\n```\n{_lines(lc['command'])}\n```")
    return "\n\n".join(parts)


def section_finetune() -> str:
    """The fine-tuning gain table, from benchmarks/finetune_gain.py's JSON."""
    f = _load("finetune.json")
    pre, small, res = f["pretrain"], f["small_set"], f["results"]
    lines = ["| ParT (`%s`) on %s top-vs-QCD training jets | AUC | 1/ε_B (ε_S = 50 %%) | 1/ε_B (ε_S = 30 %%) | "
             "accuracy |" % (f["model"], f"{small['train_jets']:,}"), "|---|---|---|---|---|"]
    for key, what in (("scratch", "from scratch"), ("finetuned", "fine-tuned")):
        r = res[key]
        lines.append(f"| {what} ({r['steps']} steps) | {r['auc']:.3f} | {r['rej50']:.1f} | {r['rej30']:.1f} | "
                     f"{r['accuracy']:.3f} |")
    load = f.get("load_average_1_5_15_min", {}).get("before", [float("nan")])[0]
    note = (f"Pre-trained on {pre['train_jets']:,} generated jets of {len(pre['classes'])} classes "
            f"({', '.join(c.removeprefix('label_') for c in pre['classes'])}) for {pre['epochs']} epoch"
            f"{'s' if pre['epochs'] != 1 else ''} ({pre['steps']} steps, validation macro AUC "
            f"{pre['val_auc_macro']:.3f}); fine-tuned with the head at lr {f['finetune']['lr_head']:g} and the "
            f"backbone at {f['finetune']['lr_backbone']:g}; from scratch at lr {f['scratch']['lr']:g}; both tested on "
            f"{small['test_jets']:,} held-out jets with their best checkpoint (validation AUC). One seed; load "
            f"average {load:.1f} on the 2 cores. 1/ε_B at ε_S = 30 % counts only "
            f"{small['test_jets'] / 2 / res['finetuned']['rej30']:.0f} (fine-tuned) and "
            f"{small['test_jets'] / 2 / res['scratch']['rej30']:.0f} (scratch) passing background jets, so it is "
            f"uncertain by about a third; the AUC is the firmer figure. Made by `{f['command']}`.")
    return "\n".join(lines) + "\n\n" + "\n".join(textwrap.wrap(note, 115))


def section_predict_speed() -> str:
    """Prediction jets/s against weaver-core's --predict, from benchmarks/bench_predict.py's JSON files."""
    lines = ["| ParT size | physics_tf | weaver-core | ratio (jets/s) | ratio (wall time, with start-up) | load |",
             "|---|---|---|---|---|---|"]
    runs = [_load(p.name) for p in sorted(FIGURES.glob("bench_predict_*.json"))]
    for r in sorted(runs, key=lambda r: r["size"] != "small"):
        ours, ref = r["physics_tf"], r["weaver-core"]
        lines.append(f"| {r['size']} | {ours['jets_s']:.0f} jets/s | {ref['jets_s']:.0f} jets/s | "
                     f"**{ours['jets_s'] / ref['jets_s']:.2f}×** | {ref['wall_s'] / ours['wall_s']:.2f}× | "
                     f"{r['load_average_before'][0]:.1f} |")
    r = runs[0]
    note = (f"{r['files']} files × {r['jets_per_file']:,} synthetic JetClass jets, the same weights on both sides "
            f"(scores agree to {max(x['max_abs_score_diff'] for x in runs):.0e}), batch {r['batch']}, "
            f"{r['threads']} thread, {r['workers']} workers, ROOT output; each tool's own rate over its prediction "
            f"loop (weaver-core's excludes writing the output, ours includes it). Made by "
            f"`python benchmarks/bench_predict.py --threads 1 [--size paper] --json ...`.")
    return "\n".join(lines) + "\n\n" + "\n".join(textwrap.wrap(note, 115))


def _lines(command: str) -> str:
    """``a && b`` as two lines."""
    return "\n".join(part.strip() for part in command.split("&&"))


SECTIONS = {"demo": section_demo, "part_vs_weaver": section_part_vs_weaver, "pictures": section_pictures,
            "finetune": section_finetune, "predict_speed": section_predict_speed}
SECTIONS.update(perf_figures.SECTIONS)  # the performance and comparison tables (docs/perf_figures.py)
BLOCK = re.compile(r"(<!-- generated: (\w+) -->\n)(?:(.*?)\n)?(<!-- end generated: \2 -->)", re.S)


def render(text: str) -> str:
    def one(m: re.Match) -> str:
        name = m.group(2)
        if name not in SECTIONS:
            raise SystemExit(f"readme_figures: README.md has an unknown generated section {name!r}")
        return m.group(1) + SECTIONS[name]() + "\n" + m.group(4)

    return BLOCK.sub(one, text)


def sections(text: str) -> dict[str, str]:
    return {m.group(2): m.group(3) or "" for m in BLOCK.finditer(text)}


def collect(a: argparse.Namespace) -> None:
    FIGURES.mkdir(parents=True, exist_ok=True)
    if a.demo_run:
        run = Path(a.demo_run)
        metrics = json.loads((run / "metrics.json").read_text())
        demo = {"run": run.name, "metrics": metrics, **json.loads(a.demo_facts or "{}")}
        (FIGURES / "demo.json").write_text(json.dumps(demo, indent=1) + "\n")
        shutil.copy(run / "roc.png", FIGURES / "demo_roc.png")
    for name, run, plot, key in (("auger", a.auger_run, "resolution.png", "auger_resolution.png"),
                                 ("lightcurves", a.lightcurves_run, "confusion.png", "lightcurves_confusion.png")):
        if run:
            run = Path(run)
            info = {"command": a.commands.get(name, ""), "metrics": json.loads((run / "metrics.json").read_text())}
            (FIGURES / f"{name}.json").write_text(json.dumps(info, indent=1, allow_nan=True) + "\n")
            shutil.copy(run / plot, FIGURES / key)
    for i, path in enumerate(a.bench_model or []):
        shutil.copy(path, FIGURES / f"bench_model_{chr(97 + i)}.json")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("collect", help="copy runs' JSON and plots into docs/figures/")
    c.add_argument("--demo-run")
    c.add_argument("--demo-facts", help='JSON: {"timing": {"generate_s":, "train_s":, "load":}, "generated_jets":, '
                                        '"train_jets":, "epochs":}')
    c.add_argument("--auger-run")
    c.add_argument("--lightcurves-run")
    c.add_argument("--command", action="append", default=[], metavar="WING=COMMAND",
                   help="the command that made a run, shown under its picture")
    c.add_argument("--bench-model", nargs="+", help="benchmarks/bench_model.py --json files, one per run")
    r = sub.add_parser("render", help="rewrite README.md's generated sections")
    r.add_argument("--check", action="store_true", help="do not write; exit 1 if README.md is stale")
    a = p.parse_args(argv)
    if a.cmd == "collect":
        a.commands = dict(x.split("=", 1) for x in a.command)
        collect(a)
        return 0
    text = README.read_text()
    new = render(text)
    if a.check:
        stale = [k for k, v in sections(new).items() if sections(text).get(k) != v]
        if stale:
            print(f"README.md: generated sections out of date: {', '.join(stale)} "
                  "(run python docs/readme_figures.py render)", file=sys.stderr)
            return 1
        return 0
    README.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
