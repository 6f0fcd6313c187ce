#!/usr/bin/env bash
# GPU check for a bare single-GPU machine, as one command (`make gpu-check`):
#
#   bash recipes/gpu_wheels.sh           # beforehand, on a machine with the package index
#   bash recipes/gpu_check.sh            # on the GPU machine: no network, no .venv
#   bash recipes/gpu_check.sh --dry-run  # anywhere: the whole chain on the CPU, CUDA parts skipped
#
# It needs only an interpreter (PYTHON, default python3) with torch, torchvision, lightning,
# rich, nvidia-ml-py and pytest (matplotlib for the plots), plus the wheels gpu_wheels.sh put in
# .whl/ (hydra-core, omegaconf, antlr4-python3-runtime, kornia, kornia_rs). Those are installed
# with no index and no dependencies into a target directory, never into the interpreter, and
# the project runs from this checkout through PYTHONPATH.
#
# Steps: environment, wheels, imports, configs + dataset, the CUDA tests, the augmentation
# benchmark against kornia on the same GPU, the training benchmark (experiment=gpu_check:
# resnet50, 224 px, bf16-mixed, modes torchvision/off/gpu/auto/ceiling, 4 workers so the job
# is loader-bound) and a short training run for the FusionFlow report. Every step has a time
# limit, the limits add up to 400 s, and the whole check has a budget of 450 s (machine start
# excluded), so it fits one 600 s call with room to spare; a failing step is recorded in
# summary.txt and the next one still runs. Results go to $OUT when it is set (else
# outputs/gpu_check) AS THEY ARE PRODUCED: every log line is written there at once (Python
# unbuffered), each result file is copied there when its step ends, so a run cut short still
# returns what it did. At most 8 files: summary.txt, setup.txt, pytest.txt, bench.txt,
# benchmark.json, benchmark.png, fusionflow_report.json, fusionflow.png.
set -uo pipefail # no `set -e`: a failing step is recorded, the next one runs

usage() {
    cat <<'EOF'
usage: bash recipes/gpu_check.sh [--dry-run] [--plan] [--out DIR] [--wheels DIR] [--target DIR]

  --dry-run     run every step on the CPU with tiny sizes; CUDA-only parts are skipped
  --plan        print the steps, their time limits and commands, run nothing
  --out DIR     where the result files go (default: $OUT, else outputs/gpu_check)
  --wheels DIR  the wheels from recipes/gpu_wheels.sh (default: .whl)
  --target DIR  where those wheels are installed (default: a fresh temporary directory)

environment: PYTHON (interpreter, default python3), GPU_CHECK_BUDGET_S (seconds for all
steps, default 450; the dry run's limits are doubled for slow CPUs).
EOF
}

die() {
    echo "error: $*" >&2
    exit 2
}

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DRY=0
PLAN=0
DEST="${OUT:-$ROOT/outputs/gpu_check}"
WHEELS="$ROOT/.whl"
TARGET=""
while [ $# -gt 0 ]; do
    case "$1" in
    --dry-run) DRY=1 ;;
    --plan) PLAN=1 ;;
    --out | --wheels | --target)
        [ $# -ge 2 ] && [ -n "$2" ] || die "\`$1\` needs a directory, e.g. $1 /tmp/x"
        case "$1" in
        --out) DEST="$2" ;;
        --wheels) WHEELS="$2" ;;
        --target) TARGET="$2" ;;
        esac
        shift
        ;;
    -h | --help)
        usage
        exit 0
        ;;
    *) die "unknown option '$1'; allowed: --dry-run, --plan, --out DIR, --wheels DIR, --target DIR, --help" ;;
    esac
    shift
done
PY="${PYTHON:-python3}"
BUDGET="${GPU_CHECK_BUDGET_S:-450}"
case "$BUDGET" in '' | *[!0-9]*) die "GPU_CHECK_BUDGET_S must be whole seconds, got '$BUDGET'" ;; esac

if [ "$PLAN" = 1 ]; then
    WORK='<work dir>' # --plan creates nothing
else
    WORK="$(mktemp -d "${TMPDIR:-/tmp}/ff_gpu_check.XXXXXX")" || die "cannot create a work directory"
fi
TARGET="${TARGET:-$WORK/site}"
export FF_LIGHTNING_CACHE="$WORK/cache" # the generated dataset, shared by all runs below
export PYTHONPATH="$ROOT:$TARGET${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONDONTWRITEBYTECODE=1
export PYTHONUNBUFFERED=1 # every line reaches the logs in $DEST when it is printed
cd "$ROOT" || die "cannot enter $ROOT"

# Sizes: the real job, or tiny CPU ones for --dry-run (same configs, same code paths).
if [ "$DRY" = 1 ]; then
    JOB=(experiment=gpu_check trainer.accelerator=cpu trainer.precision=32-true
        model=simple_cnn "model.arch_kwargs={width: 4}" data.source_size=32 data.batch_size=4 data.num_workers=1
        data.source.train_per_class=4 data.source.val_per_class=2)
    BENCH=(benchmark.steps=3 benchmark.warmup_steps=1 benchmark.auto_every_n_steps=1
        benchmark.ceiling_batches=1)
    TRAIN=(trainer.max_epochs=1 trainer.limit_train_batches=3 trainer.limit_val_batches=1)
    AUG=(--device cpu --threads 1 --batch 4 --size 32 --iters 1 --warmup 0 --skip-pil
        --policy randaugment)
else
    JOB=(experiment=gpu_check)
    # 24 steps per mode (6 warm-up) keep the five modes within the benchmark step's limit.
    BENCH=(benchmark.steps=24 benchmark.warmup_steps=6 benchmark.auto_every_n_steps=4)
    TRAIN=(trainer.max_epochs=2 trainer.limit_val_batches=2 fusionflow.interval=steps
        fusionflow.every_n_steps=4)
    AUG=(--device cuda --threads 4 --batch 256 --size 224 --iters 10 --warmup 2 --skip-pil)
fi
# Only the test files that hold CUDA tests (the others may need packages this machine lacks).
CUDA_TESTS=()
for f in tests/test_*.py; do grep -q -E 'mark\.cuda' "$f" && CUDA_TESTS+=("$f"); done

# Time limits per step (seconds): they add up to 400, inside the 450 s budget. The dry run
# doubles them: a small CPU runs the same chain slower than the GPU machine.
SCALE=$([ "$DRY" = 1 ] && echo 2 || echo 1)
declare -A LIMIT=([env]=20 [wheels]=30 [imports]=30 [data]=60 [pytest]=60 [augment]=40
    [benchmark]=110 [report]=50)

# Logs and results are written to $DEST directly, as they are produced.
SUMMARY="$DEST/summary.txt"
SETUP="$DEST/setup.txt"
BENCH_LOG="$DEST/bench.txt"
DEADLINE=$((SECONDS + BUDGET))
FAILED=0

record() { # record NAME STATUS SECONDS NOTE
    printf '%-10s %-22s %5ss  %s\n' "$1" "$2" "$3" "$4" >>"$SUMMARY"
    printf '%-10s %-22s %5ss  %s\n' "$1" "$2" "$3" "$4"
}

step() { # step NAME LOGFILE CMD...: run CMD under its time limit, log it, record its exit code
    local name=$1 limit=$((${LIMIT[$1]} * SCALE)) logf=$2 t0 rc left
    shift 2
    if [ "$PLAN" = 1 ]; then
        local shown=() a
        for a in "$@"; do [[ "$a" == *$'\n'* ]] && shown+=("<inline code>") || shown+=("$a"); done
        printf '%-10s %4ss  %s\n' "$name" "$limit" "${shown[*]}"
        return 0
    fi
    left=$((DEADLINE - SECONDS))
    if [ "$left" -lt 10 ]; then
        record "$name" "skipped" 0 "the ${BUDGET}s budget is spent"
        FAILED=1
        return 0
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    echo "== $name (limit ${limit}s): $*" | tee -a "$logf"
    t0=$SECONDS
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$logf"
    rc=${PIPESTATUS[0]}
    if [ "$rc" = 0 ]; then
        record "$name" "ok" $((SECONDS - t0)) ""
    elif [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
        record "$name" "rc=$rc (timed out)" $((SECONDS - t0)) "limit ${limit}s; see $(basename "$logf")"
        FAILED=1
    else
        record "$name" "rc=$rc" $((SECONDS - t0)) "see $(basename "$logf")"
        FAILED=1
    fi
    return 0
}

skip() { # skip NAME REASON
    if [ "$PLAN" = 1 ]; then
        printf '%-10s %4s   skipped: %s\n' "$1" "-" "$2"
    else
        record "$1" "skipped" 0 "$2"
    fi
}

install_wheels() { # the carried wheels into $TARGET: no index, no dependencies
    if "$PY" -c 'import hydra, omegaconf, antlr4, kornia, kornia_rs' 2>/dev/null; then
        echo "hydra, omegaconf, antlr4, kornia and kornia_rs are already importable: nothing to install"
        return 0
    fi
    shopt -s nullglob
    local wheels=("$WHEELS"/*.whl)
    shopt -u nullglob
    if [ ${#wheels[@]} = 0 ]; then
        echo "error: no wheels in $WHEELS; run \`bash recipes/gpu_wheels.sh\` on a machine with the package index first"
        return 1
    fi
    mkdir -p "$TARGET"
    if "$PY" -m pip --version >/dev/null 2>&1; then
        "$PY" -m pip install --quiet --no-index --no-deps --disable-pip-version-check \
            --target "$TARGET" "${wheels[@]}" || return 1
    else
        # No pip: a wheel is a zip archive laid out for site-packages.
        echo "pip is not available for $PY: unpacking the wheels into $TARGET"
        for w in "${wheels[@]}"; do "$PY" -m zipfile -e "$w" "$TARGET" || return 1; done
    fi
    ls "$TARGET"
}

export -f install_wheels
export PY WHEELS TARGET

# The code of the Python steps (run with "$PY" -c so that they need no file of their own).
ENV_PY='
import importlib, platform, sys
print("python", sys.version.split()[0], platform.platform())
missing = []
for name in ("torch", "torchvision", "lightning", "rich", "pynvml", "pytest", "yaml", "numpy",
             "packaging", "PIL", "matplotlib"):
    try:
        mod = importlib.import_module(name)
        print(f"{name:12s}", getattr(mod, "__version__", "?"))
    except Exception as err:
        print(f"{name:12s} MISSING ({type(err).__name__}: {err})")
        missing.append(name)
import torch
print("cuda", torch.cuda.is_available(), torch.version.cuda,
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-")
print("cpus", len(__import__("os").sched_getaffinity(0)))
sys.exit(1 if [m for m in missing if m != "matplotlib"] else 0)
'
IMPORTS_PY='
import hydra, omegaconf, antlr4, kornia, kornia_rs
import ff_lightning, ff_lightning.report, ff_lightning.app.train
for m in (hydra, omegaconf, kornia):
    print(f"{m.__name__:10s} {m.__version__}  {m.__file__}")
'
DATA_PY='
import sys
from pathlib import Path
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
with initialize_config_dir(config_dir=str(Path("configs").resolve()), version_base="1.3"):
    bench = compose(config_name="benchmark", overrides=sys.argv[1:])
    cfg = compose(config_name="train", overrides=sys.argv[1:])
print("benchmark modes", list(bench.benchmark.modes), "steps", bench.benchmark.steps)
print("job", cfg.model.arch, cfg.data.source_size, "px, batch", cfg.data.batch_size,
      "workers", cfg.data.num_workers, cfg.trainer.accelerator, cfg.trainer.precision)
for split in ("train", "val"):
    print(split, len(instantiate(cfg.data.source, split=split)), "images")
'
FIGURES_PY='
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
b = out / "benchmark.json"
if b.exists():
    s = json.loads(b.read_text())
    print("device:", s.get("device"))
    for r in s.get("results", []):
        row = (str(r.get("mode")), str(r.get("ratio")), r.get("samples_per_sec") or 0.0)
        print("  %-12s ratio %-6s %9.1f samples/s" % row)
    for k in ("auto_vs_off", "auto_vs_torchvision", "off_vs_torchvision", "auto_vs_ceiling", "auto_vs_best_fixed"):
        if s.get(k) is not None:
            print(f"  {k}: {s[k]:.3f}")
else:
    print("no benchmark.json")
r = out / "fusionflow_report.json"
if r.exists():
    rep = json.loads(r.read_text())
    print("report:", rep.get("verdict"))
    if rep.get("gpu_util_pct"):
        print("  GPU utilisation mean", round(rep["gpu_util_pct"]["mean"]), "%")
else:
    print("no fusionflow_report.json")
'

if [ "$PLAN" = 0 ]; then
    mkdir -p "$DEST" || die "cannot create $DEST"
    : >"$SETUP"
    {
        echo "ff_lightning GPU check ($([ "$DRY" = 1 ] && echo dry run || echo real run)), $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
        echo "commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?'), python $PY, budget ${BUDGET}s, work dir $WORK"
        echo
        printf '%-10s %-22s %6s  %s\n' step status time note
    } | tee "$SUMMARY"
fi

collect() { # collect FILE...: copy the result files that exist into $DEST (as soon as made)
    local f
    for f in "$@"; do [ -f "$WORK/$f" ] && cp "$WORK/$f" "$DEST/$(basename "$f")"; done
    return 0
}

step env "$SETUP" "$PY" -c "$ENV_PY"
step wheels "$SETUP" bash -c install_wheels
step imports "$SETUP" "$PY" -c "$IMPORTS_PY"
step data "$SETUP" "$PY" -c "$DATA_PY" "${JOB[@]}"
# On the CPU (--dry-run) the CUDA tests collect and skip: imports and markers are checked.
step pytest "$DEST/pytest.txt" "$PY" -m pytest -m cuda -q -rs -p no:cacheprovider \
    --continue-on-collection-errors "${CUDA_TESTS[@]}"
[ "$DRY" = 1 ] && skip augment-cuda "dry run: the augmentation benchmark runs on the CPU, tiny"
step augment "$BENCH_LOG" "$PY" recipes/benchmark_augment.py "${AUG[@]}" \
    --out "$WORK/augment.json"
[ "$PLAN" = 0 ] && [ -f "$WORK/augment.json" ] && { echo "== augment.json" && cat "$WORK/augment.json"; } >>"$BENCH_LOG"
[ "$DRY" = 1 ] && skip train-cuda "dry run: the training runs below are tiny CPU runs (no bf16, no NVML)"
step benchmark "$BENCH_LOG" "$PY" recipes/benchmark.py "${JOB[@]}" "${BENCH[@]}" \
    "hydra.run.dir=$WORK/benchmark"
[ "$PLAN" = 0 ] && collect benchmark/benchmark.json benchmark/benchmark.png
step report "$BENCH_LOG" "$PY" recipes/train.py "${JOB[@]}" "${TRAIN[@]}" \
    trainer.enable_checkpointing=false progress_bar=none report=true "hydra.run.dir=$WORK/train"
[ "$PLAN" = 0 ] && collect train/fusionflow_report.json train/fusionflow.png

[ "$PLAN" = 1 ] && exit 0

{
    echo
    echo "== figures"
    "$PY" -c "$FIGURES_PY" "$DEST" 2>&1
    [ "$DRY" = 1 ] && echo "(dry run: tiny CPU sizes; these figures say nothing about speed)"
} >>"$SUMMARY"
echo
echo "results in $DEST: $(cd "$DEST" && ls | tr '\n' ' ')"
echo "gpu check $([ "$FAILED" = 0 ] && echo passed || echo 'finished with failures (see summary.txt)')"
exit "$FAILED"
