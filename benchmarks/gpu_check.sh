#!/usr/bin/env bash
# One-GPU check of physics_tf, under 8 minutes on one CUDA GPU:
#   bash benchmarks/gpu_check.sh [--out DIR] [--smoke]
#
#   1. model.json      ParT training + inference jets/s, fp32 and bf16 autocast, physics_tf and weaver-core side by
#                      side (same batch, jets and weights), peak GPU memory  (benchmarks/bench_model.py --device cuda)
#   2. flops.json      ParT inference FLOP/s against the GPU's fp32 GEMM rate  (benchmarks/bench_flops.py)
#   3. attention.json  attention time and peak memory against the length L  (benchmarks/bench_attention.py)
#   4. lightcurves.json, auger.json  light-curve and Auger model throughput  (bench_lightcurves.py, bench_auger.py)
#   5. demo.json       the 2-epoch jets demo on the GPU (experiment=jets_demo trainer=gpu): wall time + metrics.json
#   gpu_check.json     every step's status (ok / failed / timeout), seconds and the tail of its log
# Each step has a time limit (a step over it is stopped and recorded as "timeout"; the others still run), and every
# step's log lies beside its JSON in --out (default docs/figures/gpu/).
#
# Without a CUDA GPU it prints one line saying so and exits 0; with --smoke it first runs the CPU-able parts in a
# tiny smoke mode (ParT on a few jets, attention at one short length) into --out (default: a temporary directory, so
# that a smoke run never overwrites GPU figures). The interpreter: $PYTHON, else .venv/bin/python, else python3.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 2
OUT=""
SMOKE=0
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT="${2:?--out needs a directory}"; shift 2 ;;
    --out=*) OUT="${1#--out=}"; shift ;;
    --smoke) SMOKE=1; shift ;;
    -h|--help) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "physics_tf: error: gpu_check.sh: unknown argument '$1' (expected --out DIR, --smoke)" >&2; exit 2 ;;
  esac
done
if [ -n "${PYTHON:-}" ]; then PY="$PYTHON"; elif [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
export PYTHONUNBUFFERED=1 WANDB_MODE=offline MPLBACKEND=Agg

GPU="$("$PY" -c 'import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")' 2>/dev/null)"
if [ -z "$GPU" ] && [ "$SMOKE" = 0 ]; then
  echo "gpu_check: no CUDA GPU here: nothing to do (bash benchmarks/gpu_check.sh --smoke runs the CPU-able parts)"
  exit 0
fi
if [ -z "$GPU" ] && [ -z "$OUT" ]; then
  OUT="$(mktemp -d "${TMPDIR:-/tmp}/gpu_check_smoke.XXXXXX")"
fi
[ -n "$OUT" ] || OUT=docs/figures/gpu
mkdir -p "$OUT" || exit 2
STEPS="$OUT/.steps.tsv"
: > "$STEPS"

elapsed() {  # seconds since $1 (date +%s%N), with 3 decimals
  local ms=$(( ($(date +%s%N) - $1) / 1000000 ))
  printf '%d.%03d' $((ms / 1000)) $((ms % 1000))
}

# step NAME LIMIT_S JSON COMMAND...: run COMMAND with a time limit, log to $OUT/NAME.log, record the outcome
step() {
  local name="$1" limit="$2" json="$3"
  shift 3
  local t0 rc status seconds
  t0=$(date +%s%N)
  timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1
  rc=$?
  seconds=$(elapsed "$t0")
  case $rc in 0) status=ok ;; 124|137) status=timeout ;; *) status=failed ;; esac
  printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$status" "$rc" "$seconds" "$json" >> "$STEPS"
  echo "gpu_check: $name: $status ($seconds s, log $OUT/$name.log)"
}

summary() {  # gpu_check.json from the steps table, written atomically
  "$PY" - "$OUT" "$1" "$GPU" <<'EOF'
import json, os, sys, time
from pathlib import Path
from physics_tf.data.atomic import atomic_path
out, mode, gpu = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
steps = []
for line in (out / ".steps.tsv").read_text().splitlines():
    name, status, rc, seconds, js = line.split("\t")
    log = out / f"{name}.log"
    tail = log.read_text(errors="replace").splitlines()[-8:] if log.is_file() else []
    steps.append({"name": name, "status": status, "returncode": int(rc), "seconds": float(seconds),
                  "json": js if js and (out / js).is_file() else None, "log_tail": tail})
import torch
result = {"mode": mode, "gpu": gpu or None, "torch": torch.__version__, "cuda": torch.version.cuda,
          "time": time.strftime("%Y-%m-%d %H:%M:%S"), "load": os.getloadavg()[0], "steps": steps}
with atomic_path(out / "gpu_check.json") as tmp:
    Path(tmp).write_text(json.dumps(result, indent=1))
EOF
  rm -f "$STEPS"
}

if [ -z "$GPU" ]; then  # --smoke
  step model 120 model.json "$PY" benchmarks/bench_model.py --device cpu --batch 4 --repeats 1 --no-peer \
      --threads 1 --json "$OUT/model.json"
  step attention 120 attention.json "$PY" benchmarks/bench_attention.py --device cpu --lengths 64 \
    --variants sdpa_bias_mask --threads 1 --json "$OUT/attention.json"
  summary smoke
  echo "gpu_check: no CUDA GPU here: nothing was timed on a GPU (smoke run of the CPU-able parts in $OUT)"
  exit 0
fi

echo "gpu_check: $GPU; figures in $OUT"
# 1. ParT side by side with weaver-core, fp32 and bf16 (about 90 s on an H100-class GPU)
step model 150 model.json "$PY" benchmarks/bench_model.py --device cuda --batch 512 --repeats 20 --bf16 \
  --json "$OUT/model.json"
# 2. inference FLOP/s against the fp32 GEMM rate
step flops 60 flops.json "$PY" benchmarks/bench_flops.py --device cuda --batch 512 --gemm 8192 --repeats 20 \
  --json "$OUT/flops.json"
# 3. attention memory and time against L (the script skips longer L once a call takes over --limit seconds)
step attention 90 attention.json "$PY" benchmarks/bench_attention.py --device cuda --limit 5 \
  --json "$OUT/attention.json"
# 4. light-curve and Auger throughput (speed only)
step lightcurves 60 lightcurves.json "$PY" benchmarks/bench_lightcurves.py --device cuda --epochs 0 \
  --json "$OUT/lightcurves.json"
step auger 60 auger.json "$PY" benchmarks/bench_auger.py --device cuda --parts throughput \
  --json "$OUT/auger.json"
# 5. the 2-epoch jets demo on the GPU (generates its jets first if they are missing: Pythia 8, all cores)
DEMO_DIR="$(mktemp -d "${TMPDIR:-/tmp}/gpu_check_demo.XXXXXX")"
export PY OUT DEMO_DIR
demo() {
  "$PY" pipelines/generate.py gen=jets_demo gen.n_workers=null gen.progress=false || return $?
  local t0
  t0=$(date +%s%N)
  "$PY" pipelines/train.py experiment=jets_demo trainer=gpu "hydra.run.dir=$DEMO_DIR" || return $?
  "$PY" - "$DEMO_DIR" "$OUT/demo.json" "$(elapsed "$t0")" <<'EOF'
import json, sys
from pathlib import Path
from physics_tf.data.atomic import atomic_path
run, dest, seconds = Path(sys.argv[1]), sys.argv[2], float(sys.argv[3])
metrics = json.loads((run / "metrics.json").read_text()) if (run / "metrics.json").is_file() else None
with atomic_path(dest) as tmp:
    Path(tmp).write_text(json.dumps({"train_and_test_seconds": seconds, "trainer": "gpu", "metrics": metrics},
                                    indent=1))
EOF
}
step demo 150 demo.json bash -c "$(declare -f elapsed demo); demo"
rm -rf "$DEMO_DIR"
summary gpu
echo "gpu_check: done ($(grep -c '"status": "ok"' "$OUT/gpu_check.json") steps ok); $OUT/gpu_check.json"
