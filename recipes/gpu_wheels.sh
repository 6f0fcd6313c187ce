#!/usr/bin/env bash
# Download the wheels a bare GPU machine lacks into .whl/ (ignored by git), for
# recipes/gpu_check.sh, which installs them there with no index and no network.
#
#   bash recipes/gpu_wheels.sh                  # CPython 3.12, manylinux x86-64 (the GPU machines)
#   PY_VERSION=3.11 bash recipes/gpu_wheels.sh  # for another interpreter (e.g. a local dry run)
#
# Run it on a machine with the package index. Exactly these packages are fetched, with no
# dependencies: the GPU machine's python3 already has torch, torchvision, lightning (which brings
# PyYAML and packaging), numpy, rich, nvidia-ml-py, matplotlib and pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"          # the interpreter whose pip downloads (any version)
PY_VERSION="${PY_VERSION:-3.12}" # the interpreter the wheels are for
DEST="${WHEEL_DIR:-.whl}"
case "$PY_VERSION" in 3.[0-9] | 3.[0-9][0-9]) ;; *) echo "error: PY_VERSION must look like 3.12, got '$PY_VERSION'" >&2; exit 2 ;; esac
ABI="cp${PY_VERSION/./}"
# Versions tested with ff_lightning, within pyproject.toml's hydra-core>=1.3,<1.4 and kornia>=0.7,<1:
# omegaconf 2.3 pins antlr4-python3-runtime 4.9.*, and kornia 0.9 needs kornia_rs>=0.2 and Python>=3.11.
BINARY=(hydra-core==1.3.8 omegaconf==2.3.1 kornia==0.9.0 kornia_rs==0.2.0)
ANTLR=antlr4-python3-runtime==4.9.3 # on the index only as a source archive: built into a wheel here

rm -rf "$DEST"
mkdir -p "$DEST"
"$PY" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --python-version "$PY_VERSION" --implementation cp --abi "$ABI" --abi abi3 --abi none \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux_2_28_x86_64 --platform any \
    -d "$DEST" "${BINARY[@]}"
# antlr4 4.9.3 is pure Python: its wheel (py3-none-any) works for any CPython 3.
"$PY" -m pip wheel --quiet --disable-pip-version-check --no-deps -w "$DEST" "$ANTLR"
rm -f "$DEST"/*.tar.gz
echo "wheels for CPython $PY_VERSION in $DEST:"
ls -1 "$DEST"
n=$(ls "$DEST"/*.whl | wc -l)
[ "$n" = 5 ] || { echo "error: expected 5 wheels, got $n" >&2; exit 1; }
