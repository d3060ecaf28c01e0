#!/usr/bin/env bash
# The whole test suite, from scratch, as CI runs it (the README's second command):
#   1. .venv with kbridge and every tested extra, then the main suite (pytest -m "not vllm");
#   2. meanwhile, in the background, .venv-vllm — the real vLLM CPU engine (scripts/vllm_env.sh,
#      one pip process of a few minutes; its log is printed if it fails);
#   3. the LMM paths against the real engine: pytest -m vllm tests/vllm, from .venv-vllm.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install -e '.[cpu,test,ray,otel]'
log="$(mktemp)"
bash scripts/vllm_env.sh > "$log" 2>&1 &
pid=$!
trap 'kill "$pid" 2>/dev/null || true' EXIT  # a failed main suite does not leave pip running
.venv/bin/python -m pytest -q -m "not vllm"
if ! wait "$pid"; then cat "$log"; echo "error: scripts/vllm_env.sh failed (its log is above)" >&2; exit 1; fi
trap - EXIT
.venv-vllm/bin/python -m pytest -q -m vllm tests/vllm
