"""recipes/benchmark.py's engine: modes side by side, benchmark.json's contract keys."""

from __future__ import annotations

import importlib.util
import io
import json
import logging
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from ff_lightning.app.bench import environment, parse_mode, run_benchmark, summarise
from ff_lightning.errors import ConfigError

CONFIGS = str(Path(__file__).resolve().parent.parent / "configs")
HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None


def tiny_overrides(tmp_path: Path) -> list[str]:
    """A job small enough for CI: 32 px, batch 8, no worker processes, a width-4 CNN."""
    return [
        f"data.source.root={tmp_path / 'data'}",
        "+data.source.train_per_class=8",
        "+data.source.val_per_class=2",
        "data.source_size=32",
        "data.batch_size=8",
        "data.num_workers=0",
        "model.arch_kwargs.width=4",
        f"output_dir={tmp_path / 'run'}",
    ]


def compose_benchmark(overrides: list[str]):  # noqa: ANN201
    with initialize_config_dir(config_dir=CONFIGS, version_base="1.3"):
        return compose(config_name="benchmark", overrides=overrides)


def test_short_benchmark_writes_the_contract_json(tmp_path: Path) -> None:
    overrides = [
        *tiny_overrides(tmp_path),
        "benchmark.modes=[torchvision,'off',0.5,auto,ceiling]",
        "benchmark.steps=7",
        "benchmark.warmup_steps=2",
        "benchmark.auto_every_n_steps=3",
        "benchmark.repeats=2",
        "benchmark.ceiling_batches=2",
    ]
    summary = run_benchmark(compose_benchmark(overrides))
    written = json.loads((tmp_path / "run" / "benchmark.json").read_text())
    for key in (
        "device",
        "results",
        "auto_vs_best_fixed",
        "auto_vs_off",
        "auto_vs_ceiling",
        "auto_vs_torchvision",
        "off_vs_torchvision",
    ):
        assert key in written
    modes = [r["mode"] for r in written["results"]]
    assert modes == ["torchvision", "off", "fixed:0.5", "auto", "ceiling"]
    for r in written["results"]:
        assert r["samples_per_sec"] > 0 and len(r["rounds"]) == 2 and r["steps"] == 7
    by = {r["mode"]: r["samples_per_sec"] for r in written["results"]}
    assert written["auto_vs_off"] == pytest.approx(by["auto"] / by["off"])
    assert written["auto_vs_best_fixed"] == pytest.approx(
        by["auto"] / max(by["off"], by["fixed:0.5"])
    )
    assert written["auto_vs_ceiling"] == pytest.approx(by["auto"] / by["ceiling"])
    assert written["auto_vs_torchvision"] == pytest.approx(by["auto"] / by["torchvision"])
    assert written["off_vs_torchvision"] == pytest.approx(by["off"] / by["torchvision"])
    assert summary["auto_vs_off"] == written["auto_vs_off"]
    assert written["results"][0]["ratio"] is None  # the stock pipeline routes nothing

    env = written["environment"]
    for key in ("torch", "torchvision", "lightning", "kornia", "ff_lightning"):
        assert env["packages"][key]
    for key in ("device", "cpu_count", "num_workers", "torch_threads", "argv"):
        assert key in env
    assert env["num_workers"] == 0 and env["cpu_count"] >= 1 and isinstance(env["argv"], list)
    assert (tmp_path / "run" / "benchmark.png").is_file() == HAS_MATPLOTLIB


def test_summary_ratios_and_mode_parsing() -> None:
    results = [
        {"mode": "torchvision", "samples_per_sec": 80.0},
        {"mode": "off", "samples_per_sec": 100.0},
        {"mode": "fixed:0.5", "samples_per_sec": 125.0},
        {"mode": "auto", "samples_per_sec": 120.0},
        {"mode": "ceiling", "samples_per_sec": 200.0},
    ]
    s = summarise(results, "cpu")
    assert s["best_fixed"] == 125.0  # the stock pipeline is not one of our fixed splits
    assert s["auto_vs_best_fixed"] == pytest.approx(0.96)
    assert s["auto_vs_off"] == pytest.approx(1.2)
    assert s["auto_vs_ceiling"] == pytest.approx(0.6)
    assert s["auto_vs_torchvision"] == pytest.approx(1.5)
    assert s["off_vs_torchvision"] == pytest.approx(1.25)
    missing = summarise(results[1:], "cpu")
    assert missing["auto_vs_torchvision"] is None and missing["off_vs_torchvision"] is None
    assert summarise(results[:2], "cpu")["auto_vs_torchvision"] is None
    assert parse_mode(False) == ("off", None)  # YAML's unquoted off
    assert parse_mode(0.25) == ("fixed", 0.25)
    assert parse_mode("torchvision") == ("torchvision", None)
    with pytest.raises(ConfigError, match=r"`benchmark.modes` entries must be"):
        parse_mode("turbo")
    with pytest.raises(ConfigError, match=r"must be in \[0, 1\]"):
        parse_mode(1.5)


def test_default_regime_and_experiments_compose() -> None:
    cfg = compose_benchmark([])
    assert list(cfg.benchmark.modes)[0] == "torchvision"
    assert cfg.data.num_workers == 1 and cfg.augment.kwargs.num_ops == 4
    assert cfg.model.arch_kwargs.width == 4 and cfg.benchmark.torch_threads == 1
    light = compose_benchmark(["experiment=bench_light"])
    assert light.benchmark.steps == 200 and light.benchmark.repeats == 3
    assert light.data.num_workers == 1 and light.model.arch_kwargs.width == 4
    big = compose_benchmark(["experiment=bench_224"])
    assert big.data.source_size == 224 and big.data.image_size == 224
    assert big.data.batch_size == 32 and big.augment.kwargs.num_ops == 2
    assert big.benchmark.steps == 200 and big.model.arch_kwargs.width == 4
    heavy = compose_benchmark(["experiment=bench_heavy"])
    assert heavy.model.arch == "resnet18" and "torchvision" in list(heavy.benchmark.modes)


def test_environment_record_keys(tmp_path: Path) -> None:
    env = environment(compose_benchmark(tiny_overrides(tmp_path)))
    assert set(env["packages"]) == {"torch", "torchvision", "lightning", "kornia", "ff_lightning"}
    for key in (
        "device",
        "cuda_device",
        "cpu_count",
        "num_workers",
        "torch_threads",
        "argv",
        "overrides",
    ):
        assert key in env


def test_progress_bar_draws_on_a_terminal_and_restores_logging() -> None:
    from rich.console import Console

    from ff_lightning.app.bench.progress import BenchProgress

    out = io.StringIO()
    handler = logging.StreamHandler()  # writes to sys.stderr as it is now
    stream = handler.stream
    logging.getLogger("ff_lightning.test_progress").addHandler(handler)
    try:
        with BenchProgress(2, console=Console(file=out, force_terminal=True, width=120)) as p:
            for name in ("torchvision", "auto"):
                (cb,) = p.start_run(f"run {name}", 3)
                for _ in range(3):
                    cb.on_train_batch_end(None, None, None, None, 0)
                p.end_run(f"{name}: 10 samples/s")
            assert p.progress.tasks[0].completed == 2
    finally:
        logging.getLogger("ff_lightning.test_progress").removeHandler(handler)
    assert handler.stream is stream
    text = out.getvalue()
    assert "run auto" in text and "auto: 10 samples/s" in text
    with BenchProgress(1, enabled=False) as off:
        assert off.start_run("x", 3) == []
        off.end_run("done")


@pytest.mark.skipif(not HAS_MATPLOTLIB, reason="matplotlib is not installed")
def test_chart_is_written(tmp_path: Path) -> None:
    from ff_lightning.app.bench.report import write_chart

    results = [
        {"mode": "torchvision", "samples_per_sec": 80.0, "rounds": [78.0, 82.0]},
        {"mode": "auto", "samples_per_sec": 120.0, "rounds": [119.0, 121.0]},
    ]
    path = write_chart(summarise(results, "cpu"), tmp_path / "benchmark.png", "tiny")
    assert path == tmp_path / "benchmark.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_chart_is_skipped_without_matplotlib(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import sys

    from ff_lightning.app.bench.report import write_chart

    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # import now raises ImportError
    results = [{"mode": "off", "samples_per_sec": 1.0, "rounds": [1.0]}]
    with caplog.at_level(logging.INFO, logger="ff_lightning"):
        assert write_chart(summarise(results, "cpu"), tmp_path / "benchmark.png") is None
    assert not (tmp_path / "benchmark.png").exists()
    assert "matplotlib is not installed" in caplog.text


def test_decode_variants_parse_and_summarise() -> None:
    from ff_lightning.app.bench.modes import split_variant

    assert parse_mode("auto+decode") == ("auto+decode", None)
    assert split_variant("auto+decode") == ("auto", True)
    assert split_variant("off-decode") == ("off", False)
    assert split_variant("auto") == ("auto", None)
    with pytest.raises(ConfigError, match="benchmark.modes"):
        parse_mode("ceiling+decode")
    results = [
        {"mode": "torchvision", "samples_per_sec": 100.0},
        {"mode": "auto", "samples_per_sec": 120.0},
        {"mode": "auto+decode", "samples_per_sec": 150.0},
    ]
    out = summarise(results, "cpu")
    assert out["auto_decode_vs_auto"] == 150.0 / 120.0
    assert out["auto_decode_vs_torchvision"] == 1.5


def test_rounds_report_the_median_and_spread_and_flag_a_mode_above_the_ceiling() -> None:
    from ff_lightning.app.bench.runner import _merge_rounds

    runs = {
        "off": [{"mode": "off", "samples_per_sec": v, "ratio": 0.0} for v in (90.0, 100.0, 130.0)],
        "auto": [{"mode": "auto", "samples_per_sec": v, "ratio": 0.0} for v in (150, 160, 155)],
        "ceiling": [
            {"mode": "ceiling", "samples_per_sec": v, "ratio": 1.0} for v in (140, 138, 142)
        ],
    }
    merged = {r["mode"]: r for r in _merge_rounds(runs)}
    assert merged["off"]["samples_per_sec"] == 100.0  # the median, not the mean (106.7)
    assert merged["off"]["spread"] == pytest.approx(0.4)
    assert merged["off"]["rounds"] == [90.0, 100.0, 130.0]
    summary = summarise(list(merged.values()), "cpu")
    assert summary["auto_vs_ceiling"] == pytest.approx(155 / 140)
    (flag,) = summary["flags"]  # auto beats the ceiling by 11%, beyond both spreads (6%, 3%)
    assert flag["mode"] == "auto" and "beyond the rounds' spread" in flag["note"]
    # Within the spread, or below the ceiling: no flag.
    runs["auto"] = [{"mode": "auto", "samples_per_sec": v, "ratio": 0.0} for v in (120, 150, 145)]
    assert summarise(_merge_rounds(runs), "cpu")["flags"] == []
