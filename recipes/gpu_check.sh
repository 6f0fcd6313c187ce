#!/usr/bin/env bash
# GPU check for a single-GPU machine: the CUDA tests, the augmentation micro-benchmark and the
# training benchmark on a realistic job (resnet50, 224 px, batch 256, 4 workers, bf16).
# Results go to $OUT (when set) or outputs/gpu_check. Meant to finish in under 8 minutes.
set -uo pipefail
cd "$(dirname "$0")/.."
DEST="${OUT:-outputs/gpu_check}"
mkdir -p "$DEST"
PY="${PYTHON:-.venv/bin/python}"
status=0
echo "== CUDA tests" | tee "$DEST/gpu_check.log"
timeout 180 "$PY" -m pytest -m cuda -q -p no:cacheprovider tests 2>&1 | tee -a "$DEST/gpu_check.log" || status=1
echo "== augmentation benchmark (cuda)" | tee -a "$DEST/gpu_check.log"
timeout 120 "$PY" recipes/benchmark_augment.py --device cuda --threads 4 --batch 256 --size 224 \
    --iters 10 --out "$DEST/benchmark_augment.json" 2>&1 | tee -a "$DEST/gpu_check.log" || status=1
echo "== training benchmark (cuda)" | tee -a "$DEST/gpu_check.log"
timeout 300 "$PY" recipes/benchmark.py experiment=gpu_check "hydra.run.dir=$DEST/benchmark" 2>&1 \
    | tee -a "$DEST/gpu_check.log" || status=1
cp "$DEST/benchmark/benchmark.json" "$DEST/benchmark.json" 2>/dev/null || true
exit $status
