#!/usr/bin/env bash
# The one-shot GPU check, for a bare GPU box (Python 3.12, CUDA torch, transformers, nvcc, CMake; no
# network): numbers first, tests second, everything under a wall-clock budget, at most 5 files in OUTDIR.
#
#   scripts/gpu_check.sh [--dry-run] [--budget S] OUTDIR
#     OUTDIR       bench-rows.jsonl (one JSON row per measurement, appended and flushed as measured),
#                  steps.tsv (step, exit code, seconds; appended as each ends), log.txt (every step's
#                  output, appended), junit.xml (the GPU tests), summary.json (written last)
#     --dry-run    the same steps on this machine's CPU with the tiny twins (CI runs it; ~1 minute)
#     --budget S   seconds for the whole check (default 480 on a GPU, 60 dry); the benchmark gets
#                  BENCH_S (default 290, 42 dry), the tests what is left
#   Installs nothing into the system Python: the wheels in .whl/ (scripts/gpu_wheels.sh) go to a
#   scratch --target folder on PYTHONPATH; kbridge is imported from this source tree through a
#   namespace shim; the MaxSim kernels are built with CMake in the background meanwhile. Caches and
#   the build go to a scratch folder (KBRIDGE_CACHE is kept if set), never under OUTDIR.
#   PYTHON=/path/to/python overrides the interpreter (default: python3).
set -uo pipefail

DRY=0
BUDGET=""
OUT=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) DRY=1; shift ;;
    --budget) BUDGET=$2; shift 2 ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    -*) echo "error: unknown argument $1 (see --help)" >&2; exit 2 ;;
    *) [[ -n "$OUT" ]] && { echo "error: one OUTDIR only (got $OUT and $1)" >&2; exit 2; }; OUT=$1; shift ;;
  esac
done
[[ -z "$OUT" ]] && { echo "usage: scripts/gpu_check.sh [--dry-run] [--budget S] OUTDIR" >&2; exit 2; }

T0=$(date +%s)
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python3}
if [[ $DRY -eq 1 ]]; then BUDGET=${BUDGET:-60}; BENCH_S=${BENCH_S:-42}; else BUDGET=${BUDGET:-480}; BENCH_S=${BENCH_S:-290}; fi
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
rm -f "$OUT"/{bench-rows.jsonl,steps.tsv,log.txt,junit.xml,summary.json}
: > "$OUT/steps.tsv"; : > "$OUT/log.txt"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/kbridge-gpu-check.XXXXXX")
SITE=$WORK/site SHIM=$WORK/shim
# dry: the tiny twins where this machine keeps them (built once); on the GPU box a scratch folder
[[ $DRY -eq 1 ]] || export KBRIDGE_CACHE=${KBRIDGE_CACHE:-$WORK/cache}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PIP_NO_INPUT=1
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 PYTHONNOUSERSITE=1
export TORCHINDUCTOR_CACHE_DIR=$WORK/inductor TRITON_CACHE_DIR=$WORK/triton
export KBRIDGE_KERNEL_WAIT=$WORK/kernels.done

left() { echo $((BUDGET - ($(date +%s) - T0))); }
log() { echo "gpu_check: $*" | tee -a "$OUT/log.txt"; }
# step NAME CMD...: output appended to log.txt, "NAME rc seconds" to steps.tsv the moment it ends
step() {
  local name=$1; shift
  local t0 rc
  t0=$(date +%s.%N)
  log "$name: $* ($(left) s of the budget left)"
  "$@" >> "$OUT/log.txt" 2>&1
  rc=$?
  printf '%s\t%s\t%s\n' "$name" "$rc" "$(awk "BEGIN{printf \"%.2f\", $(date +%s.%N) - $t0}")" >> "$OUT/steps.tsv"
  log "$name: exit $rc"
  return $rc
}

# 1. wheels to a scratch target, kbridge through a namespace shim (no install of any kind)
shopt -s nullglob
whls=("$ROOT"/.whl/*.whl)
if [[ ${#whls[@]} -gt 0 && $DRY -eq 1 ]]; then  # they are Python 3.12 wheels: install them as the box will, import none
  step wheels "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$WORK/site312" \
    --only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 \
    --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 "${whls[@]}"
elif [[ ${#whls[@]} -gt 0 ]]; then
  step wheels "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" "${whls[@]}"
else
  log "wheels: none in .whl/ (scripts/gpu_wheels.sh makes them); using what $PY has"
fi
mkdir -p "$SHIM/kbridge"
for d in engine export kernels benchmarks cli; do ln -s "$ROOT/$d" "$SHIM/kbridge/$d"; done
export PYTHONPATH=$SHIM:$SITE${PYTHONPATH:+:$PYTHONPATH}
# A development machine may have kbridge installed (editable: a .pth import hook ahead of PYTHONPATH);
# the GPU box has none. There -S skips .pth files and site-packages go on PYTHONPATH instead, so
# kbridge comes from the shim as it will on the box.
if "$PY" -c "import importlib.metadata as m; m.version('kbridge')" 2> /dev/null; then
  PYTHONPATH=$PYTHONPATH:$("$PY" -c "import site; print(':'.join(site.getsitepackages()))")
  PY=("$PY" -S)
else
  PY=("$PY")
fi
step import "${PY[@]}" -c "import kbridge.engine, kbridge.cli.app; f = kbridge.engine.__file__; \
print('kbridge from', f); assert f.startswith('$SHIM'), 'kbridge is not imported from the source tree'"

# 2. the MaxSim kernels, built in the background (CUDA when nvcc is here); the bench's MaxSim
#    section waits for kernels.done, which is written whether the build worked or not
build_kernels() {
  local cuda=OFF gen=()
  command -v nvcc > /dev/null && cuda=ON
  command -v ninja > /dev/null && gen=(-G Ninja)
  [[ $DRY -eq 1 ]] && cuda=OFF  # the dry run builds the C++ kernel only (nvcc alone takes ~30 s on 2 cores)
  cmake -S "$ROOT" -B "$WORK/build" "${gen[@]}" -DKBRIDGE_CUDA=$cuda -DPython_EXECUTABLE="$(command -v "${PY[0]}")" \
    -DCMAKE_BUILD_TYPE=Release > "$WORK/kernels.log" 2>&1 &&
    cmake --build "$WORK/build" -j "$(nproc)" >> "$WORK/kernels.log" 2>&1 &&
    cp "$WORK"/build/_kernels*.so "$SHIM/kbridge/" >> "$WORK/kernels.log" 2>&1
  local rc=$?
  echo "$rc" > "$KBRIDGE_KERNEL_WAIT"
}
build_kernels & BUILD_PID=$!

command -v nvidia-smi > /dev/null && step smi nvidia-smi

# 3. numbers first: each row is appended to bench-rows.jsonl and flushed as it is measured
dry=(); [[ $DRY -eq 1 ]] && dry=(--dry-run)
export KBRIDGE_KERNEL_WAIT_S=$((BENCH_S / 3))
step bench timeout -k 5 "$BENCH_S" "${PY[@]}" -m kbridge.benchmarks.gpu "$OUT/bench-rows.jsonl" \
  --budget $((BENCH_S - 5)) "${dry[@]}"

wait "$BUILD_PID"
printf 'kernels\t%s\t-\n' "$(cat "$KBRIDGE_KERNEL_WAIT" 2>/dev/null || echo 1)" >> "$OUT/steps.tsv"
log "kernels build log:"; cat "$WORK/kernels.log" >> "$OUT/log.txt" 2>/dev/null

# 4. tests second, each with a timeout, in what is left of the budget (the demo run only with room)
T=$(($(left) - 5))
if (( T >= 10 )); then
  sel=(-k "not kbridge_run_demo"); (( T >= 300 )) && sel=()
  tmo=(); "${PY[@]}" -c "import pytest_timeout" 2> /dev/null && tmo=(--timeout 100)
  step pytest timeout -k 5 "$T" "${PY[@]}" -m pytest -m gpu "$ROOT/tests/gpu" -q -rA -p no:cacheprovider \
    --rootdir "$ROOT" --junitxml="$OUT/junit.xml" "${sel[@]}" "${tmo[@]}"
else
  log "pytest: skipped, $T s left"; printf 'pytest\tskipped\t0\n' >> "$OUT/steps.tsv"
fi

# 5. summary.json: what ran, the tests by outcome (a test skipped for a package this image lacks is
#    "not available there", never a pass), the bench rows by status
"${PY[@]}" - "$OUT" "$DRY" "$BUDGET" "$(($(date +%s) - T0))" <<'PY' >> "$OUT/log.txt" 2>&1
import json, sys, xml.etree.ElementTree as ET
from pathlib import Path

out, dry, budget, wall = Path(sys.argv[1]), sys.argv[2] == "1", int(sys.argv[3]), int(sys.argv[4])
steps = [dict(zip(("name", "rc", "seconds"), l.split("\t"))) for l in (out / "steps.tsv").read_text().splitlines()]
tests = []
if (out / "junit.xml").exists():
    for case in ET.parse(out / "junit.xml").getroot().iter("testcase"):
        outcome, reason = "passed", None
        for tag in ("skipped", "failure", "error"):
            el = case.find(tag)
            if el is not None:
                outcome, reason = {"skipped": "skipped", "failure": "failed", "error": "error"}[tag], el.get("message")
        if outcome == "skipped" and reason and ("pip install" in reason or "two CUDA GPUs" in reason):
            outcome = "not available there"
        tests.append({"name": f"{case.get('classname')}::{case.get('name')}", "outcome": outcome,
                      "seconds": float(case.get("time") or 0), "reason": (reason or "")[:300] or None})
rows = [json.loads(l) for l in (out / "bench-rows.jsonl").read_text().splitlines()] \
    if (out / "bench-rows.jsonl").exists() else []
count = lambda xs, k: {v: sum(x[k] == v for x in xs) for v in sorted({x[k] for x in xs})}  # noqa: E731
summary = {"dry_run": dry, "budget_s": budget, "wall_s": wall, "steps": steps, "bench": count(rows, "status"),
           "tests": count(tests, "outcome"), "test_cases": tests}
(out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
print("summary:", json.dumps({k: summary[k] for k in ("wall_s", "bench", "tests")}))
PY
tail -1 "$OUT/log.txt"
rm -rf "$WORK"
exit 0
