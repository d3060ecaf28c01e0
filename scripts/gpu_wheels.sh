#!/usr/bin/env bash
# Download the wheels scripts/gpu_check.sh installs offline, for one Python version, on a machine
# with the package registry. The target GPU image already has a CUDA torch, nanobind,
# scikit-build-core and CMake/nvcc; these are what kbridge needs on top (kept under 60 MB).
#   scripts/gpu_wheels.sh 3.12 wheels/        then copy wheels/ to the GPU box
#   EXTRA="transformers==5.19.0 tokenizers" scripts/gpu_wheels.sh 3.12 wheels/   (more packages)
set -euo pipefail

if [[ $# -ne 2 ]]; then
  echo "usage: scripts/gpu_wheels.sh PYVER DIR   (e.g. 3.12 wheels/)" >&2
  exit 2
fi
PYVER=$1
DIR=$2
PYTHON=${PYTHON:-python3}
LIMIT_MB=${LIMIT_MB:-60}
mkdir -p "$DIR"

# kbridge's runtime dependencies a torch image lacks, each without its own dependencies (torch,
# numpy, transformers, triton… come from the image): pip must not pull a second torch.
PKGS=(
  "diffusers>=0.42" "xgrammar" "apache-tvm-ffi" "httpx2>=2.16" "httpcore2" "h11" "truststore" "anyio"
  "pydantic" "pydantic-core" "annotated-types" "typing-inspection" "importlib-metadata" "zipp"
  "faiss-cpu"   # search runs on the CPU by default (faiss-gpu is optional: `kbridge[gpu]`)
  "onnx" "onnxscript" "onnx-ir" "ml-dtypes"   # ONNX export (the exported-graph GPU tests)
)
# EXTRA="transformers==5.19.0 tokenizers safetensors" adds what a leaner image also lacks
read -r -a EXTRA_PKGS <<< "${EXTRA:-}"
PKGS+=(${EXTRA_PKGS[@]+"${EXTRA_PKGS[@]}"})
"$PYTHON" -m pip download --dest "$DIR" --no-deps --only-binary=:all: \
  --python-version "$PYVER" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform any "${PKGS[@]}"

total_kb=$(du -sk "$DIR" | cut -f1)
echo "wheels for Python $PYVER in $DIR: $(ls "$DIR"/*.whl | wc -l) files, $((total_kb / 1024)) MB"
if (( total_kb > LIMIT_MB * 1024 )); then
  echo "error: the wheels take $((total_kb / 1024)) MB, more than the ${LIMIT_MB} MB budget" >&2
  exit 1
fi
