"""recipes/plan.py's engine: the worker table, measured on a tiny job, and its recommendation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from ff_lightning.app.plan import format_table, plan_table, recommend, run_plan, worker_counts
from ff_lightning.errors import ConfigError

CONFIGS = str(Path(__file__).resolve().parent.parent / "configs")


def compose_plan(overrides: list[str]):  # noqa: ANN201
    with initialize_config_dir(config_dir=CONFIGS, version_base="1.3"):
        return compose(config_name="plan", overrides=overrides)


def tiny(tmp_path: Path) -> list[str]:
    """A job small enough for CI: 32 px, batch 8, a width-4 CNN, a few steps per run."""
    return [
        f"data.source.root={tmp_path / 'data'}",
        "+data.source.train_per_class=8",
        "+data.source.val_per_class=2",
        "data.source_size=32",
        "data.batch_size=8",
        "model.arch_kwargs.width=4",
        f"output_dir={tmp_path / 'run'}",
        "plan.steps=8",
        "plan.warmup_steps=2",
        "plan.auto_every_n_steps=3",
        "plan.auto_settle_steps=3",
        "plan.repeats=1",
        "plan.progress=false",
    ]


def test_tiny_plan_table_is_the_measured_runs(tmp_path: Path, capsys) -> None:
    plan = run_plan(compose_plan([*tiny(tmp_path), "plan.workers=[0,1]"]))
    written = json.loads((tmp_path / "run" / "plan.json").read_text())
    assert written["rows"] == plan["rows"] and written["workers"] == [0, 1]
    runs = plan["runs"]
    assert [(r["workers"], r["mode"]) for r in runs] == [
        (0, "off"),
        (0, "auto"),
        (1, "off"),
        (1, "auto"),
    ]
    assert all(r["samples_per_sec"] > 0 for r in runs)
    # auto settles first for 3 steps, left out of its throughput with the warm-up.
    assert [r["steps"] for r in runs] == [8, 11, 8, 11]
    # Every cell of the table is a measured run: samples/s per mode, auto's final share.
    for row in plan["rows"]:
        mine = {r["mode"]: r for r in runs if r["workers"] == row["workers"]}
        assert row["off_samples_per_sec"] == mine["off"]["samples_per_sec"]
        assert row["auto_samples_per_sec"] == mine["auto"]["samples_per_sec"]
        assert row["share"] == mine["auto"]["ratio"]
        assert row["auto_vs_off"] == pytest.approx(
            mine["auto"]["samples_per_sec"] / mine["off"]["samples_per_sec"]
        )
    # The recommendation is computed from those numbers, and printed under the table.
    assert plan["recommendation"] == recommend(plan["rows"], 0.03)
    assert plan["recommendation"]["reference_workers"] == 1
    out = capsys.readouterr().out
    assert "ff_lightning worker plan" in out and plan["recommendation"]["text"][:40] in out
    for cells in format_table(plan["rows"]):
        assert cells[1] in out and cells[2] in out
    assert written["environment"]["load_average_start"] is not None


def _rows(off: dict[int, float], auto: dict[int, float]) -> list[dict]:
    runs = [
        {"workers": w, "mode": "off", "samples_per_sec": x, "ratio": 0.0} for w, x in off.items()
    ]
    runs += [
        {"workers": w, "mode": "auto", "samples_per_sec": x, "ratio": 0.5} for w, x in auto.items()
    ]
    return plan_table(runs)


def test_recommendation_in_plain_words() -> None:
    rows = _rows({1: 200.0, 2: 400.0, 4: 700.0}, {1: 300.0, 2: 690.0, 4: 760.0})
    rec = recommend(rows, 0.03)
    assert rec["fewest_auto_workers"] == 2 and rec["saved"] == 2 and rec["saved_pct"] == 50.0
    assert rec["text"] == (
        "auto with 2 workers matches CPU-only with 4 workers (690 vs 700 samples/s, -1.4%): "
        "2 CPUs (50%) saved"
    )
    rec = recommend(_rows({1: 400.0, 2: 405.0}, {1: 410.0, 2: 420.0}), 0.03)
    assert rec["text"] == (
        "auto with 1 worker matches CPU-only with 2 workers (410 vs 405 samples/s, +1.2%): "
        "1 CPU (50%) saved; CPU-only with 1 worker reaches it too (more workers do not pay on "
        "this machine)"
    )
    rec = recommend(_rows({1: 200.0, 2: 400.0}, {1: 300.0, 2: 500.0}), 0.03)
    assert rec["saved"] == 0 and rec["text"].startswith("auto needs all 2 workers")
    rec = recommend(_rows({1: 200.0, 2: 400.0}, {1: 300.0, 2: 350.0}), 0.03)
    assert rec["fewest_auto_workers"] is None and rec["text"].endswith("keep 2 workers")


def test_rows_average_rounds() -> None:
    rows = _rows({1: 100.0}, {1: 150.0})
    rows2 = plan_table(
        [
            {"workers": 1, "mode": "off", "samples_per_sec": 100.0, "ratio": 0.0},
            {"workers": 1, "mode": "off", "samples_per_sec": 120.0, "ratio": 0.0},
            {"workers": 1, "mode": "auto", "samples_per_sec": 150.0, "ratio": 0.4},
        ]
    )
    assert rows[0]["off_rounds"] == [100.0]
    assert rows2[0]["off_samples_per_sec"] == 110.0 and rows2[0]["off_rounds"] == [100.0, 120.0]
    assert rows2[0]["share"] == 0.4


def test_worker_counts_and_bad_settings(tmp_path: Path) -> None:
    assert worker_counts(None, 2) == [1, 2]
    assert worker_counts([4, 1, 2, 2], 2) == [1, 2, 4]
    with pytest.raises(ConfigError, match="`plan.workers` must be an integer >= 0"):
        worker_counts([-1], 2)
    with pytest.raises(ConfigError, match="`plan.steps` must exceed"):
        run_plan(compose_plan([*tiny(tmp_path), "plan.steps=3"]))
    with pytest.raises(ConfigError, match="`plan.modes` entries must be among"):
        run_plan(compose_plan([*tiny(tmp_path), "plan.modes=[gpu]"]))


def test_default_plan_composes_on_the_benchmark_job() -> None:
    cfg = compose_plan([])
    assert cfg.plan.workers is None and list(cfg.plan.modes) == ["off", "auto"]
    assert cfg.augment.kwargs.num_ops == 4 and cfg.data.image_size == 96  # bench_light's job
    assert cfg.fusionflow.objective == "throughput" and cfg.fusionflow.tolerance == 0.03
