"""recipes/benchmark.py's engine: modes side by side, benchmark.json's contract keys."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from ff_lightning.benchmark import _parse_mode, run_benchmark, summarise
from ff_lightning.errors import ConfigError

CONFIGS = str(Path(__file__).resolve().parent.parent / "configs")


def test_short_benchmark_writes_the_contract_json(tmp_path: Path) -> None:
    overrides = [
        f"data.source.root={tmp_path / 'data'}",
        "+data.source.train_per_class=8",
        "+data.source.val_per_class=2",
        "data.source_size=32",
        "data.batch_size=8",
        "data.num_workers=0",
        "model.arch_kwargs.width=4",
        "benchmark.modes=['off',0.5,auto,ceiling]",
        "benchmark.steps=7",
        "benchmark.warmup_steps=2",
        "benchmark.auto_every_n_steps=3",
        "benchmark.repeats=2",
        "benchmark.ceiling_batches=2",
        f"output_dir={tmp_path / 'run'}",
    ]
    with initialize_config_dir(config_dir=CONFIGS, version_base="1.3"):
        cfg = compose(config_name="benchmark", overrides=overrides)
    summary = run_benchmark(cfg)
    written = json.loads((tmp_path / "run" / "benchmark.json").read_text())
    for key in ("device", "results", "auto_vs_best_fixed", "auto_vs_off", "auto_vs_ceiling"):
        assert key in written
    modes = [r["mode"] for r in written["results"]]
    assert modes == ["off", "fixed:0.5", "auto", "ceiling"]
    for r in written["results"]:
        assert r["samples_per_sec"] > 0 and len(r["rounds"]) == 2 and r["steps"] == 7
    by = {r["mode"]: r["samples_per_sec"] for r in written["results"]}
    assert written["auto_vs_off"] == pytest.approx(by["auto"] / by["off"])
    assert written["auto_vs_best_fixed"] == pytest.approx(
        by["auto"] / max(by["off"], by["fixed:0.5"])
    )
    assert written["auto_vs_ceiling"] == pytest.approx(by["auto"] / by["ceiling"])
    assert summary["auto_vs_off"] == written["auto_vs_off"]


def test_summary_ratios_and_mode_parsing() -> None:
    results = [
        {"mode": "off", "samples_per_sec": 100.0},
        {"mode": "fixed:0.5", "samples_per_sec": 125.0},
        {"mode": "auto", "samples_per_sec": 120.0},
        {"mode": "ceiling", "samples_per_sec": 200.0},
    ]
    s = summarise(results, "cpu")
    assert s["auto_vs_best_fixed"] == pytest.approx(0.96)
    assert s["auto_vs_off"] == pytest.approx(1.2)
    assert s["auto_vs_ceiling"] == pytest.approx(0.6)
    assert _parse_mode(False) == ("off", None)  # YAML's unquoted off
    assert _parse_mode(0.25) == ("fixed", 0.25)
    with pytest.raises(ConfigError, match=r"`benchmark.modes` entries must be"):
        _parse_mode("turbo")
    with pytest.raises(ConfigError, match=r"must be in \[0, 1\]"):
        _parse_mode(1.5)
