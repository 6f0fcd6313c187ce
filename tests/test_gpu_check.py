"""recipes/gpu_check.sh and recipes/gpu_wheels.sh: arguments, the plan of steps, pinned wheels,
and (slow) a whole dry run on the CPU."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "recipes" / "gpu_check.sh"
STEPS = ["env", "wheels", "imports", "data", "pytest", "augment", "benchmark", "report"]
RESULT_FILES = {
    "summary.txt",
    "setup.txt",
    "pytest.txt",
    "bench.txt",
    "benchmark.json",
    "benchmark.png",
    "fusionflow_report.json",
    "fusionflow.png",
}


def _run(*args: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **env},
    )


def _plan(*args: str) -> list[list[str]]:
    proc = _run(*args, "--plan")
    assert proc.returncode == 0, proc.stderr
    return [line.split() for line in proc.stdout.splitlines()]


def test_real_plan_runs_every_step_on_cuda_with_the_gpu_check_job() -> None:
    plan = _plan()
    assert [row[0] for row in plan] == STEPS
    steps = {row[0]: row for row in plan}
    assert "--device" in steps["augment"] and "cuda" in steps["augment"]
    assert "experiment=gpu_check" in steps["benchmark"]
    assert not any(a.startswith("trainer.accelerator=") for a in steps["benchmark"])
    assert "-m" in steps["pytest"] and "cuda" in steps["pytest"]
    assert "report=true" in steps["report"]
    # Every step has a time limit; they add up to well inside the default budget, which
    # leaves room in one 600 s call on the GPU machine (the machine's start is not counted).
    assert all(re.fullmatch(r"\d+s", row[1]) for row in plan)
    total = sum(int(row[1][:-1]) for row in plan)
    budget = int(re.search(r"GPU_CHECK_BUDGET_S:-(\d+)", SCRIPT.read_text()).group(1))
    assert total <= budget - 30 and budget <= 600 - 120, (total, budget)


def test_logs_stream_into_out_unbuffered() -> None:
    """Finding 10: every log is written into the result folder as it is produced (no copy at
    the end that a cut-short run never reaches), and Python runs unbuffered."""
    text = SCRIPT.read_text()
    assert "export PYTHONUNBUFFERED=1" in text
    assert 'SUMMARY="$DEST/summary.txt"' in text and 'SETUP="$DEST/setup.txt"' in text
    assert '"$DEST/pytest.txt"' in text and 'BENCH_LOG="$DEST/bench.txt"' in text
    assert "$WORK/pytest.txt" not in text and 'cp "$SUMMARY"' not in text


def test_dry_run_plan_is_tiny_and_on_the_cpu() -> None:
    plan = _plan("--dry-run")
    names = [row[0] for row in plan]
    assert [n for n in names if not n.endswith("-cuda")] == STEPS
    assert {"augment-cuda", "train-cuda"} <= set(names)
    skipped = [" ".join(row) for row in plan if row[0].endswith("-cuda")]
    assert all("skipped: dry run" in line for line in skipped)
    steps = {row[0]: row for row in plan}
    assert "trainer.accelerator=cpu" in steps["benchmark"]
    assert "benchmark.steps=3" in steps["benchmark"]
    assert "cpu" in steps["augment"] and "cuda" not in steps["augment"]


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--fast"], {}, "error: unknown option '--fast'; allowed: --dry-run, --plan"),
        (["--out"], {}, "error: `--out` needs a directory"),
        (["--wheels", ""], {}, "error: `--wheels` needs a directory"),
        (
            ["--plan"],
            {"GPU_CHECK_BUDGET_S": "8m"},
            "error: GPU_CHECK_BUDGET_S must be whole seconds",
        ),
    ],
)
def test_bad_arguments_exit_2_with_one_line(args: list[str], env: dict, message: str) -> None:
    proc = _run(*args, **env)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith(message) and len(proc.stderr.strip().splitlines()) == 1


def test_help() -> None:
    proc = _run("--help")
    assert proc.returncode == 0 and proc.stdout.startswith("usage: bash recipes/gpu_check.sh")


def test_carried_wheels_are_pinned_within_the_project_constraints() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    text = (ROOT / "recipes" / "gpu_wheels.sh").read_text()
    pins = dict(re.findall(r"([A-Za-z0-9_-]+)==([0-9.]+)", text))
    assert set(pins) == {"hydra-core", "omegaconf", "kornia", "kornia_rs", "antlr4-python3-runtime"}
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for dep in map(Requirement, deps):
        if dep.name in pins:
            assert dep.specifier.contains(pins[dep.name]), (dep, pins[dep.name])


@pytest.mark.slow
def test_dry_run_runs_the_whole_chain_on_the_cpu(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = _run(
        "--dry-run",
        timeout=900,
        OUT=str(out),
        PYTHON=sys.executable,
        TMPDIR=str(tmp_path),
        GPU_CHECK_BUDGET_S="840",
    )
    summary = (out / "summary.txt").read_text()
    assert proc.returncode == 0, summary
    for step in STEPS:
        assert re.search(rf"^{step}\s+ok\s", summary, re.M), (step, summary)
    assert re.search(r"^augment-cuda\s+skipped\s+0s\s+dry run", summary, re.M)
    files = {p.name for p in out.iterdir()}
    assert len(files) <= 8 and files <= RESULT_FILES
    assert {"summary.txt", "pytest.txt", "benchmark.json", "fusionflow_report.json"} <= files
    assert "report: " in summary and "(dry run: tiny CPU sizes" in summary
