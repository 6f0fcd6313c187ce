"""The end-of-fit report: the pure FitReport on hand-made records, its text, JSON and plot."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from ff_lightning.control.controller import Decision
from ff_lightning.report import (
    FitRecorder,
    FitReport,
    format_report,
    plot_report,
    probe_sample,
    step_record,
    write_report,
)


def _rec(wait: float, step: float, *, b: int = 10, n_dev: int = 0, **kw: Any) -> SimpleNamespace:
    fields: dict[str, Any] = dict(
        batch_size=b,
        n_device=n_dev,
        data_wait_s=wait,
        step_s=step,
        device_aug_s=0.0,
        cpu_aug_s=None,
        n_cpu=None,
        h2d_s=None,
        prep_s=None,
        ratio=n_dev / b,
    )
    fields.update(kw)
    return SimpleNamespace(**fields)


def _loader_bound_report() -> dict[str, Any]:
    rep = FitReport(mode="auto", device="cpu", num_workers=2)
    rep.update(None)  # the first step after the clock reset is not measured
    for _ in range(3):
        rep.update(_rec(0.06, 0.1, n_dev=4, device_aug_s=0.008, cpu_aug_s=0.012, h2d_s=0.001))
    rep.update(_rec(0.0, 0.1, n_dev=4, device_aug_s=0.008, cpu_aug_s=0.012, h2d_s=0.001))
    history = [
        Decision(0.0, "init: measuring the CPU-only baseline at r=0.00", "init"),
        Decision(
            0.4,
            "model: loader and device meet at r=0.40",
            "model",
            index=1,
            prev_ratio=0.0,
            throughput=80.0,
            baseline_throughput=80.0,
        ),  # fmt: skip
    ]
    return rep.compute(history, final_ratio=0.4)


def test_loader_bound_numbers_and_verdict() -> None:
    r = _loader_bound_report()
    assert r["steps"] == 5 and r["measured_steps"] == 4 and r["samples"] == 40
    assert r["samples_per_sec"] == pytest.approx(100.0)
    assert r["data_wait_share"] == pytest.approx(0.18 / 0.4)
    assert r["loader_bound_share"] == pytest.approx(0.75)
    assert r["data_wait_ms"] == pytest.approx(45.0)
    assert r["step_ms"] == pytest.approx(100.0)
    assert r["h2d_ms"] == pytest.approx(1.0)
    assert r["worker_cpu_ms_per_sample"] == pytest.approx(2.0)  # 12 ms over 6 CPU samples
    assert r["device_aug_ms_per_sample"] == pytest.approx(2.0)  # 8 ms over 4 device samples
    assert r["share"] == {"start": 0.0, "decisions": [0.4], "final": 0.4, "device_samples": 0.4}
    assert r["speedup_vs_baseline"] == pytest.approx(1.25)
    assert r["gpu_util_pct"] is None and r["memory"] is None
    assert [d["kind"] for d in r["decisions"]] == ["model"]
    assert r["verdict"] == (
        "loader-bound 75% of the time: the device took 40% of the augmentation and training "
        "ran 1.25x the CPU-only speed measured at the start"
    )


def test_device_bound_verdict_without_baseline() -> None:
    rep = FitReport(mode="off")
    for _ in range(4):
        rep.update(_rec(0.001, 0.1))
    r = rep.compute([Decision(0.0, "init: mode 'off', r=0.00", "init")])
    assert r["loader_bound_share"] == 0.0 and r["baseline_samples_per_sec"] is None
    assert r["device_aug_ms_per_sample"] is None
    assert r["verdict"] == (
        "device-bound 100% of the time: the device took 0% of the augmentation; "
        "the CPU-only speed was not measured (mode 'off')"
    )


def test_no_measured_step() -> None:
    rep = FitReport()
    rep.update(None)
    r = rep.compute()
    assert r["verdict"] == "no training step was measured"
    assert r["samples_per_sec"] is None
    assert "verdict: no training step was measured" in format_report(r)


def test_gpu_samples_and_memory_are_summarised() -> None:
    rep = FitReport(device="cuda:0")
    mib = 1024 * 1024
    for util, free in ((50.0, 900), (70.0, 800), (90.0, 1000)):
        rep.update(
            _rec(0.0, 0.1),
            gpu_util=util,
            free_bytes=free * mib,
            reserved_bytes=(2000 - free) * mib,
            peak_bytes=300 * mib,
        )
    r = rep.compute()
    assert r["gpu_util_pct"] == {"mean": pytest.approx(70.0), "min": 50.0, "max": 90.0}
    assert r["memory"] == {
        "gpu_free_mb_min": 800.0,
        "reserved_mb_max": 1200.0,
        "peak_allocated_mb_max": 300.0,
    }
    text = format_report(r)
    assert "GPU utilisation      70% mean (min 50%, max 90%, NVML)" in text
    assert "free >= 800 MiB (NVML), reserved <= 1200 MiB, peak allocated 300 MiB" in text


def test_text_lists_share_path_decisions_and_verdict() -> None:
    text = format_report(_loader_bound_report())
    assert text.splitlines()[0] == "FusionFlow report: mode auto on cpu, 2 workers"
    assert "device share         0.00 -> 0.40; final 0.40" in text
    assert "1 model    0.00 -> 0.40  model: loader and device meet at r=0.40" in text
    assert "CPU-only baseline    80.0 samples/s" in text
    assert text.splitlines()[-1].startswith("  verdict: loader-bound 75% of the time")


def test_old_tuple_from_end_step_is_merged() -> None:
    batch = SimpleNamespace(
        batch_size=8, n_device=2, cpu_aug_s=0.01, h2d_s=0.0, prep_s=0.02, ratio=0.25
    )
    rec = step_record((0.5, 1.0, 0.03, batch))
    assert (rec.data_wait_s, rec.step_s, rec.device_aug_s, rec.batch_size, rec.n_device) == (
        0.5,
        1.0,
        0.03,
        8,
        2,
    )
    assert step_record(None) is None
    assert step_record(batch) is batch


def test_series_are_decimated_but_sums_stay_exact() -> None:
    rep = FitReport(max_points=8)
    for i in range(100):
        rep.update(_rec(0.0, 0.1, n_dev=i % 2, b=2))
    r = rep.compute()
    assert r["samples"] == 200 and r["share"]["device_samples"] == pytest.approx(0.25)
    assert len(rep.series["step"]) < 8
    assert rep.series["step"] == sorted(rep.series["step"])
    with pytest.raises(ValueError, match=r"`max_points` must be an integer >= 2, got 1"):
        FitReport(max_points=1)


def test_json_round_trip(tmp_path: Path) -> None:
    r = _loader_bound_report()
    path = write_report(r, tmp_path / "run")
    assert path.name == "fusionflow_report.json"
    assert json.loads(path.read_text()) == json.loads(json.dumps(r))


def test_plot_is_written_or_skipped_with_a_note(tmp_path: Path) -> None:
    rep = FitReport()
    for i in range(20):
        rep.update(_rec(0.01 * (i % 3), 0.1, n_dev=i % 4, b=4))
    note = plot_report(rep.series, tmp_path / "fusionflow.png")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert note.startswith("plot: skipped, matplotlib is not installed")
        return
    assert note == f"plot: {tmp_path / 'fusionflow.png'}"
    assert (tmp_path / "fusionflow.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot_report(FitReport().series, tmp_path / "x.png").startswith("plot: no measured")


def test_probe_sample_reads_utilisation_and_memory() -> None:
    from ff_lightning.testing.probes import FakeProbe

    probe = FakeProbe(free=900 << 20, reserved=300 << 20)
    probe.utilization = 55.0
    sample = probe_sample(probe)
    assert sample["gpu_util"] == 55.0
    assert sample["free_bytes"] == probe.free_bytes()
    assert sample["reserved_bytes"] == probe.reserved_bytes()
    assert probe_sample(None) == dict.fromkeys(
        ("gpu_util", "free_bytes", "reserved_bytes", "peak_bytes")
    )


def test_recorder_writes_json_and_plot_and_prints(tmp_path: Path) -> None:
    from rich.console import Console

    rec = FitRecorder(mode="fixed", device="cpu", num_workers=0)
    rec.step(None)
    for _ in range(3):
        rec.step(_rec(0.02, 0.1, n_dev=5))
    console = Console(record=True, width=200)
    rep = rec.finish(
        tmp_path, [Decision(0.5, "init: mode 'fixed', r=0.50", "init")], 0.5, console=console
    )
    out = console.export_text()
    assert "FusionFlow report: mode fixed on cpu, 0 workers" in out
    assert f"verdict: {rep['verdict']}" in out
    assert json.loads((tmp_path / "fusionflow_report.json").read_text())["steps"] == 4


def _csv_rows(path: Path) -> list[dict[str, str]]:
    import csv

    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _col(rows: list[dict[str, str]], key: str) -> list[float]:
    return [float(r[key]) for r in rows if r.get(key) not in (None, "")]


def test_fit_report_agrees_with_the_logged_metrics(tmp_path: Path) -> None:
    """A real fit with FusionFlow(report=True): the report's numbers against metrics.csv."""
    import lightning as L
    from lightning.pytorch.loggers import CSVLogger

    from ff_lightning import FusionDataModule, FusionFlow

    from .test_datamodule import TensorImages, TinyNet

    dm = FusionDataModule(
        TensorImages(32), TensorImages(8, seed=1), image_size=32, batch_size=8, num_workers=0
    )
    cb = FusionFlow(mode="auto", log_every_n_steps=1, warmup_steps=0, report=True)
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=3,
        callbacks=[cb],
        logger=CSVLogger(str(tmp_path), name="logs"),
        log_every_n_steps=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        limit_val_batches=0,
        default_root_dir=str(tmp_path),
    )
    trainer.fit(TinyNet(), datamodule=dm)

    log_dir = Path(trainer.log_dir)
    report = json.loads((log_dir / "fusionflow_report.json").read_text())
    rows = _csv_rows(log_dir / "metrics.csv")
    steps = [r for r in rows if r.get("fusionflow/step_ms")]
    wait, step = _col(steps, "fusionflow/data_wait_ms"), _col(steps, "fusionflow/step_ms")

    assert report["steps"] == trainer.global_step == 12
    assert report["measured_steps"] == len(steps) == 12 - 3  # the first step of each epoch
    assert report["data_wait_ms"] == pytest.approx(sum(wait) / len(wait), rel=1e-6)
    assert report["step_ms"] == pytest.approx(sum(step) / len(step), rel=1e-6)
    assert report["data_wait_share"] == pytest.approx(sum(wait) / sum(step), rel=1e-6)
    bound = sum(s for w, s in zip(wait, step, strict=True) if w > 0.05 * s)
    assert report["loader_bound_share"] == pytest.approx(bound / sum(step), rel=1e-6)
    device = _col(steps, "fusionflow/device_samples")
    assert report["share"]["device_samples"] == pytest.approx(sum(device) / (8 * len(device)))
    # One decision per epoch, logged as the epoch's fusionflow/decided_ratio.
    assert report["share"]["decisions"] == pytest.approx(_col(rows, "fusionflow/decided_ratio"))
    assert report["share"]["final"] == cb.ratio
    assert [d["reason"] for d in report["decisions"]] == [d.reason for d in cb.history[1:]]
    assert report["verdict"].split(":")[0] in (
        f"loader-bound {100 * report['loader_bound_share']:.0f}% of the time",
        f"device-bound {100 * (1 - report['loader_bound_share']):.0f}% of the time",
    )
    png = log_dir / "fusionflow.png"
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert not png.exists()
    else:
        assert png.read_bytes()[:4] == b"\x89PNG"


def test_accelerate_adapter_finish_reports_what_it_logged(tmp_path: Path) -> None:
    """A plain loop through FusionAccelerate(report=True): finish() against its log_fn calls."""
    from ff_lightning import FusionDataModule
    from ff_lightning.frontends.accelerate import FusionAccelerate

    from .test_datamodule import TensorImages

    dm = FusionDataModule(TensorImages(24), image_size=32, batch_size=8, num_workers=0)
    logged: list[dict[str, float]] = []
    fusion = FusionAccelerate(
        dm,
        mode="fixed",
        ratio=0.25,
        log_fn=lambda m, step: logged.append(dict(m)),
        log_every_n_steps=1,
        report=True,
        report_dir=str(tmp_path),
    )
    for epoch in range(2):
        for images, _ in fusion.train_epoch(epoch):
            images.mul(2).sum()  # the "training step"
    rep = fusion.finish()
    steps = [m for m in logged if "fusionflow/step_ms" in m]
    assert rep is not None and rep["steps"] == fusion.global_step == 6
    assert rep["measured_steps"] == len(steps) == 4  # the first step of each epoch is not
    wait = [m["fusionflow/data_wait_ms"] for m in steps]
    assert rep["data_wait_ms"] == pytest.approx(sum(wait) / len(wait), rel=1e-6)
    assert rep["share"]["device_samples"] == pytest.approx(0.25)
    assert json.loads((tmp_path / "fusionflow_report.json").read_text())["steps"] == 6
    assert FusionAccelerate(dm, mode="off").finish() is None  # report=False: nothing
