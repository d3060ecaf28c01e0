#!/usr/bin/env bash
# The GPU acceptance check, offline, in minutes: install kbridge into the current Python (a CUDA
# torch, nanobind, scikit-build-core and CMake/nvcc must be there; the rest comes from the wheels
# folder made by scripts/gpu_wheels.sh), build the kernels with CUDA, run `pytest -m gpu` and
# `kbridge bench gpu --quick`, and write a JSON report (what ran, what was skipped and why, timings,
# versions) under --out. On a machine without a GPU every GPU test is reported as skipped and the
# benchmark as not run.
#
#   scripts/gpu_check.sh [--out DIR] [--wheels DIR] [--no-install]
#     --out DIR      report folder (default gpu-check/; never benchmarks/results/)
#     --wheels DIR   install every wheel in DIR first (--no-index --no-deps)
#     --no-install   use the kbridge already installed in this Python
#   PYTHON=/path/to/python overrides the interpreter (default: python3).
set -uo pipefail

OUT=gpu-check
WHEELS=""
INSTALL=1
while [[ $# -gt 0 ]]; do
  case "$1" in
    --out) OUT=$2; shift 2 ;;
    --wheels) WHEELS=$2; shift 2 ;;
    --no-install) INSTALL=0; shift ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "error: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python3}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
: > "$OUT/steps.tsv"
export HF_HUB_OFFLINE=1 PIP_NO_INPUT=1
export KBRIDGE_CACHE=${KBRIDGE_CACHE:-$OUT/cache}

# step NAME CMD...: run CMD with its output in $OUT/NAME.log, record "NAME rc seconds" in steps.tsv
step() {
  local name=$1; shift
  local t0 t1 rc
  t0=$(date +%s.%N)
  echo "gpu_check: $name: $*"
  "$@" > "$OUT/$name.log" 2>&1
  rc=$?
  t1=$(date +%s.%N)
  printf '%s\t%s\t%s\n' "$name" "$rc" "$(awk "BEGIN{print $t1 - $t0}")" >> "$OUT/steps.tsv"
  echo "gpu_check: $name: exit $rc"
  return $rc
}

failed=0
if [[ $INSTALL -eq 1 ]]; then
  if [[ -n "$WHEELS" ]]; then
    shopt -s nullglob
    whls=("$WHEELS"/*.whl)
    if [[ ${#whls[@]} -eq 0 ]]; then
      echo "error: no wheels in $WHEELS (make them with scripts/gpu_wheels.sh PYVER DIR)" >&2
      exit 2
    fi
    step wheels "$PY" -m pip install --no-index --no-deps --find-links "$WHEELS" "${whls[@]}" || failed=1
  fi
  CUDA_FLAG=AUTO
  command -v nvcc > /dev/null && CUDA_FLAG=ON  # a toolkit is here: the CUDA kernels must build
  step install "$PY" -m pip install --no-index --no-deps --no-build-isolation -e "$ROOT" \
    --config-settings=cmake.define.KBRIDGE_CUDA=$CUDA_FLAG || failed=1
fi

step kernels "$PY" -c "from kbridge.kernels.maxsim import cpu_available, cuda_status; \
print('cpu kernel:', cpu_available()); print('cuda kernel:', cuda_status())"
step pytest timeout 480 "$PY" -m pytest -m gpu "$ROOT/tests/gpu" -q -rA -p no:cacheprovider \
  --rootdir "$ROOT" --junitxml="$OUT/junit.xml" || { rc=$?; [[ $rc -ne 5 ]] && failed=1; }
step bench timeout 300 "$PY" -m kbridge.cli bench gpu --quick --no-save --json "$OUT/bench-gpu.json"

"$PY" - "$OUT" "$failed" <<'PY'
import importlib.metadata as md, json, platform, sys, time, xml.etree.ElementTree as ET
from pathlib import Path

out, failed = Path(sys.argv[1]), sys.argv[2] == "1"
steps = []
for line in (out / "steps.tsv").read_text().splitlines():
    name, rc, sec = line.split("\t")
    steps.append({"name": name, "rc": int(rc), "seconds": round(float(sec), 2), "log": f"{name}.log"})
tests = []
if (out / "junit.xml").exists():
    for case in ET.parse(out / "junit.xml").getroot().iter("testcase"):
        outcome, reason = "passed", None
        for tag in ("skipped", "failure", "error"):
            el = case.find(tag)
            if el is not None:
                outcome = {"skipped": "skipped", "failure": "failed", "error": "error"}[tag]
                reason = (el.get("message") or "").strip()[:500]
        tests.append({"name": f"{case.get('classname')}::{case.get('name')}", "outcome": outcome,
                      "seconds": float(case.get("time") or 0), "reason": reason})
bench_json = out / "bench-gpu.json"
bench = {"ran": bench_json.exists()}
if not bench["ran"]:
    log = (out / "bench.log").read_text().strip().splitlines() if (out / "bench.log").exists() else []
    bench["reason"] = "not run: " + (log[-1] if log else "no output")
else:
    bench["report"] = "bench-gpu.json"
versions = {"python": platform.python_version()}
for pkg in ("kbridge", "torch", "diffusers", "transformers", "xgrammar", "onnxruntime", "onnxruntime-gpu",
            "tensorrt", "torch-tensorrt", "vllm", "faiss-cpu", "faiss-gpu", "faiss-gpu-cu12"):
    try:
        versions[pkg] = md.version(pkg)
    except md.PackageNotFoundError:
        pass
try:
    import torch
    versions["cuda"] = torch.version.cuda
    versions["gpu"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
except Exception as e:  # a broken torch is itself the finding
    versions["torch_error"] = f"{type(e).__name__}: {e}"
count = lambda o: sum(t["outcome"] == o for t in tests)  # noqa: E731
report = {"created": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "ok": not failed and not count("failed") and not count("error"),
          "summary": {o: count(o) for o in ("passed", "failed", "error", "skipped")},
          "steps": steps, "tests": tests, "bench": bench, "versions": versions}
(out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
print(f"gpu_check: wrote {out / 'report.json'}: {report['summary']}, bench "
      f"{'ran' if bench['ran'] else bench['reason']}")
sys.exit(0 if report["ok"] else 1)
PY
