#!/usr/bin/env bash
# The wheels a GPU machine without network needs for bench/gpu.py, into .whl/ (git-ignored), for CPython 3.12 on
# x86-64 Linux. That machine has torch, torchvision, numpy, pillow, tqdm, psutil, requests, pyyaml, packaging,
# portalocker and typing_extensions, but not sam2 and what sam2 and the model layer need beyond them.
#
#   bash scripts/gpu_wheels.sh            # prints the size; the device tool carries at most 64 MiB with the tree
#   then on that machine: python3 -m pip install --no-index --no-deps --target /tmp/site .whl/*.whl
#
# Versions are the ones this project's .venv runs (tested together). Binary wheels are downloaded for the target
# platform; sdists with no wheel (antlr4-python3-runtime, iopath) and sam2 (a source package: its only compiled
# part is an optional CUDA extension, skipped with SAM2_BUILD_CUDA=0) are built here as pure-Python wheels.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
[ -x "$PYTHON" ] || PYTHON=python3
PIP="$PYTHON -m pip"
OUT=.whl
TARGET=(--python-version 3.12 --implementation cp --abi cp312
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
BINARY=(av==18.1.0 pycocotools==2.0.11 isal==1.9.1)            # compiled: wheels for cp312 manylinux
PURE=(hydra-core==1.3.8 omegaconf==2.3.1)                       # pure-Python wheels on PyPI
SDIST=(antlr4-python3-runtime==4.9.3 iopath==0.1.10)            # sdist only: built here, pure Python

rm -rf "$OUT" && mkdir -p "$OUT"
$PIP download --quiet --disable-pip-version-check --no-deps --only-binary=:all: "${TARGET[@]}" -d "$OUT" "${BINARY[@]}"
$PIP download --quiet --disable-pip-version-check --no-deps --only-binary=:all: -d "$OUT" "${PURE[@]}"
$PIP wheel --quiet --no-deps -w "$OUT" "${SDIST[@]}"
# sam2's setup.py imports torch: build it with the torch already installed (no second torch in a build env).
SAM2_BUILD_CUDA=0 $PIP wheel --quiet --no-deps --no-build-isolation -w "$OUT" sam2==1.1.0

# Only pure-Python wheels may be built here (this machine's CPU or Python may differ from the target's).
for whl in "$OUT"/*.whl; do
  case "$whl" in
    *-py3-none-any.whl|*-py2.py3-none-any.whl|*-cp312-cp312-manylinux*x86_64*.whl) ;;
    *-cp3[0-9]-abi3-manylinux*x86_64*.whl|*-cp31[0-2]-abi3-manylinux*x86_64*.whl) ;;  # stable ABI: 3.12 too
    *) echo "error: $whl would not install on CPython 3.12 x86-64" >&2; exit 1 ;;
  esac
done
ls -1 "$OUT"
du -cb "$OUT"/*.whl | awk 'END {printf "%s: %.1f MiB in %d wheels (the device tool carries 64 MiB with the tree)\n", "'"$OUT"'", $1 / 1048576, NR - 1}'
