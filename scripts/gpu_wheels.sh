#!/usr/bin/env bash
# Download, into .whl/ (ignored by git; carried to the GPU box), exactly the wheels scripts/gpu_check.sh
# needs on top of the GPU image (Python 3.12, CUDA torch, transformers, onnx, onnxruntime, triton):
# what the check imports and the image lacks, pinned, each without its dependencies (pip must not
# pull a second torch). pydantic 2.14 needs typing-extensions >= 4.16 (the image's may be older).
#   scripts/gpu_wheels.sh [DIR]       (default .whl/; PYVER=3.12, PYTHON=python3)
set -euo pipefail

if [[ $# -gt 1 || "${1:-}" == -* ]]; then
  echo "usage: scripts/gpu_wheels.sh [DIR]   (default .whl/, Python \${PYVER:-3.12})" >&2
  exit 2
fi
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DIR=${1:-$ROOT/.whl}
PYVER=${PYVER:-3.12}
PYTHON=${PYTHON:-python3}
LIMIT_MB=${LIMIT_MB:-20}
mkdir -p "$DIR"

PKGS=(
  "diffusers==0.42.1"                                    # SDXL, the VAE, the tiny twins
  "xgrammar==0.2.8" "apache-tvm-ffi==0.1.15.post2"       # schema-guided JSON (hf LMM backend)
  "pydantic==2.14.4" "pydantic-core==2.50.5" "annotated-types==0.8.0" "typing-inspection==0.4.5"
  "typing-extensions==4.16.0"                            # xgrammar -> pydantic
)
"$PYTHON" -m pip download --dest "$DIR" --no-deps --only-binary=:all: \
  --python-version "$PYVER" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any "${PKGS[@]}"

n=$(ls "$DIR"/*.whl | wc -l)
total_kb=$(du -sk "$DIR" | cut -f1)
echo "wheels for Python $PYVER in $DIR: $n files, $((total_kb / 1024)) MB"
if (( n != ${#PKGS[@]} )); then
  echo "error: $DIR holds $n wheels, expected ${#PKGS[@]} (remove stale ones: two versions of one package stop the install)" >&2
  exit 1
fi
if (( total_kb > LIMIT_MB * 1024 )); then
  echo "error: the wheels take $((total_kb / 1024)) MB, more than the ${LIMIT_MB} MB budget" >&2
  exit 1
fi
