"""Tests for the memory probes and the memory guard, with injected probes and OOM errors."""

from __future__ import annotations

import logging
import types

import pytest
import torch

from ff_lightning.device.memory import MemoryGuard
from ff_lightning.device.probes import (
    MemoryProbe,
    NullProbe,
    NvmlProbe,
    TorchCudaProbe,
    make_probe,
)
from ff_lightning.testing.probes import FakeProbe

MB = 1 << 20


class FakeOOM(RuntimeError):
    """Stands in for torch.cuda.OutOfMemoryError on a machine without CUDA."""


class Params:
    """Per-sample parameters shaped like a policy's: index-tensor indexing and ``.to``."""

    def __init__(self, magnitude: torch.Tensor) -> None:
        self.magnitude = magnitude
        self.device = magnitude.device
        self.indexed: list[torch.Tensor] = []

    def __len__(self) -> int:
        return len(self.magnitude)

    def __getitem__(self, idx: torch.Tensor) -> Params:
        assert isinstance(idx, torch.Tensor) and idx.dtype == torch.long
        self.indexed.append(idx)
        return Params(self.magnitude[idx])

    def to(self, device: torch.device | str) -> Params:
        return Params(self.magnitude.to(device))


def augment(images: torch.Tensor, params: Params) -> torch.Tensor:
    """A per-sample op: brighten each image by its own magnitude."""
    assert len(params) == len(images)
    m = params.magnitude.view(-1, 1, 1, 1)
    return (images.float() + m).clamp(0, 255).to(torch.uint8)


def batch(n: int = 24) -> tuple[torch.Tensor, Params]:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8, generator=g)
    return images, Params(torch.arange(n, dtype=torch.float32) * 3)


def failing_above(k: int, calls: list[int] | None = None):
    def fn(images: torch.Tensor, params: Params) -> torch.Tensor:
        if calls is not None:
            calls.append(len(images))
        if len(images) > k:
            raise FakeOOM("CUDA out of memory. Tried to allocate 2.00 GiB")
        return augment(images, params)

    return fn


def never_called(images, params):  # pragma: no cover - the fallback must not run
    raise AssertionError("cpu_fallback called")


# ---------------------------------------------------------------------- budget
def test_budget_counts_free_plus_cached_minus_reserve():
    probe = FakeProbe(free=4096 * MB, reserved=2048 * MB, allocated=1536 * MB)
    guard = MemoryGuard(probe, reserve_mb=1024)
    assert guard.budget_bytes() == (4096 + 512 - 1024) * MB
    probe.free = 256 * MB
    assert guard.budget_bytes() == 0  # never negative
    assert MemoryGuard(NullProbe()).budget_bytes() is None


def test_chunk_size_from_estimate_then_measurement():
    probe = FakeProbe(free=1024 * MB + 100 * MB, reserved=0, allocated=0)
    guard = MemoryGuard(probe, reserve_mb=1024)
    # Before a measurement: 8 x the float32 bytes of one sample (hint: 1 MiB) -> 12 samples.
    assert guard.chunk_size(1000, 1 * MB) == 12
    guard.per_sample_bytes = 10 * MB
    assert guard.chunk_size(1000, 1 * MB) == 10
    assert guard.chunk_size(4, 1 * MB) == 4  # never more than n
    probe.free = 0
    assert guard.chunk_size(1000, 1 * MB) == 1  # at least min_chunk: try, then fall back
    assert MemoryGuard(probe, max_chunk=3, reserve_mb=0).chunk_size(10, 1) == 1
    assert MemoryGuard(FakeProbe(free=1 << 40), max_chunk=3).chunk_size(10, 1) == 3


def test_per_sample_memory_is_measured_from_the_peak():
    probe = FakeProbe(free=1024 * MB + 50 * MB, allocated=5 * MB)
    guard = MemoryGuard(probe, reserve_mb=1024)

    chunks: list[int] = []

    def fn(images, params):
        chunks.append(len(images))
        probe.peak = probe.allocated + len(images) * 2 * MB  # 2 MiB per sample at peak
        return augment(images, params)

    images, params = batch(40)
    out = guard.run(fn, images, params, never_called, sample_bytes_hint=1 * MB)
    assert torch.equal(out, augment(images, params))
    assert guard.per_sample_bytes == 2 * MB
    # First chunk from the estimate (50 MiB / 8 MiB), then from the measurement (50 / 2).
    assert chunks == [6, 25, 9] and guard.last_chunk == 9
    assert probe.resets >= 2


# ---------------------------------------------------------------------- OOM handling
def test_oom_halves_the_chunk_until_it_fits_and_keeps_order(caplog):
    images, params = batch(24)
    calls: list[int] = []
    guard = MemoryGuard(FakeProbe(free=1 << 40), oom_errors=(FakeOOM,))
    with caplog.at_level(logging.WARNING, logger="ff_lightning"):
        out = guard.run(failing_above(5, calls), images, params, never_called)
    assert torch.equal(out, augment(images, params))  # same as unchunked, same order
    assert calls[:3] == [24, 12, 6] and max(calls[3:]) <= 5
    assert guard.oom_events == 3 and guard.last_chunk == 3 and guard.cpu_fallback_samples == 0
    assert guard.ratio_cap is None
    assert sum(1 for r in caplog.records if "out of memory" in r.getMessage()) == 3
    # The size that fitted is remembered for the next batch: no OOM this time.
    out = guard.run(failing_above(5), images, params, never_called)
    assert torch.equal(out, augment(images, params)) and guard.oom_events == 3


def test_real_oom_error_class_is_caught_by_default():
    images, params = batch(8)

    def fn(images, params):
        if len(images) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory.")
        return augment(images, params)

    guard = MemoryGuard(FakeProbe(free=1 << 40))
    assert torch.equal(guard.run(fn, images, params, never_called), augment(images, params))
    assert guard.oom_events == 2


def test_when_nothing_fits_everything_goes_to_the_cpu(caplog):
    images, params = batch(10)
    seen = {}

    def cpu_fallback(imgs, prm):
        seen["device"], seen["n"] = imgs.device, len(imgs)
        return augment(imgs, prm)

    guard = MemoryGuard(FakeProbe(free=1 << 40), oom_errors=(FakeOOM,))
    with caplog.at_level(logging.WARNING, logger="ff_lightning"):
        out = guard.run(failing_above(0), images, params, cpu_fallback, total=40)
    assert torch.equal(out, augment(images, params))
    assert seen == {"device": torch.device("cpu"), "n": 10}
    assert guard.cpu_fallback_samples == 10 and guard.ratio_cap == 0.0
    assert guard.events[-1]["kind"] == "cpu_fallback"
    msgs = [r.getMessage() for r in caplog.records if r.name == "ff_lightning"]
    assert any("augmented 10 of 10 samples on the CPU" in m for m in msgs)


def test_partial_fallback_caps_the_ratio_by_what_fitted():
    images, params = batch(16)
    budget = {"left": 6}  # memory fills up: the device takes 6 samples, then nothing fits

    def fn(imgs, prm):
        if len(imgs) > budget["left"]:
            raise FakeOOM("out of memory")
        budget["left"] -= len(imgs)
        return augment(imgs, prm)

    guard = MemoryGuard(FakeProbe(free=1 << 40), oom_errors=(FakeOOM,))
    out = guard.run(fn, images, params, augment, total=64)
    assert torch.equal(out, augment(images, params))
    assert guard.cpu_fallback_samples == 10
    assert guard.ratio_cap == pytest.approx(6 / 64)  # a share of the whole batch
    assert guard.state()["ratio_cap"] == guard.ratio_cap


def test_min_chunk_and_in_place_output():
    images, params = batch(12)
    expected = augment(images, params)
    guard = MemoryGuard(FakeProbe(free=1 << 40), min_chunk=4, oom_errors=(FakeOOM,))
    out = guard.run(failing_above(3), images, params, augment, out=images)
    assert out is images and torch.equal(out, expected)
    assert guard.cpu_fallback_samples == 12  # halving 12 -> 6 -> 3 would go below min_chunk


def test_params_are_sliced_with_index_tensors():
    images, params = batch(10)
    guard = MemoryGuard(FakeProbe(free=1 << 40), max_chunk=4)
    guard.run(augment, images, params, never_called)
    assert [idx.tolist() for idx in params.indexed] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_null_probe_runs_one_chunk_on_cpu():
    images, params = batch(30)
    calls: list[int] = []
    guard = MemoryGuard(NullProbe())
    out = guard.run(failing_above(100, calls), images, params, never_called)
    assert torch.equal(out, augment(images, params)) and calls == [30]
    calls.clear()
    MemoryGuard(NullProbe(), max_chunk=8).run(failing_above(100, calls), images, params, augment)
    assert calls == [8, 8, 8, 6]
    assert MemoryGuard(NullProbe()).run(augment, images[:0], params, augment).shape[0] == 0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"reserve_mb": -1}, "`reserve_mb` must be non-negative, got -1"),
        ({"min_chunk": 0}, "`min_chunk` must be a positive int, got 0"),
        ({"min_chunk": 4, "max_chunk": 2}, "`max_chunk` must be None or an int >= min_chunk=4"),
        ({"oom_errors": ()}, "`oom_errors` must name at least one exception class"),
    ],
)
def test_guard_argument_validation(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        MemoryGuard(NullProbe(), **kwargs)


# ---------------------------------------------------------------------- probes
class _MemInfo:
    def __init__(self, total: int, free: int) -> None:
        self.total, self.free, self.used = total, free, total - free


def fake_nvml(*, fail: bool = False) -> types.SimpleNamespace:
    class NVMLError(Exception):
        pass

    calls: dict[str, list] = {"handle": []}

    def init():
        if fail:
            raise NVMLError("Driver Not Loaded")

    def handle(index):
        calls["handle"].append(index)
        return f"gpu{index}"

    return types.SimpleNamespace(
        NVMLError=NVMLError,
        nvmlInit=init,
        nvmlDeviceGetHandleByIndex=handle,
        nvmlDeviceGetMemoryInfo=lambda h: _MemInfo(80 << 30, 30 << 30),
        calls=calls,
    )


def test_make_probe_on_cpu_is_a_null_probe():
    probe, note = make_probe("cpu")
    assert isinstance(probe, NullProbe) and not probe.available
    assert probe.free_bytes() is None and probe.peak_allocated_bytes() == 0
    assert "cpu" in note


def test_make_probe_uses_a_working_nvml(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    nvml = fake_nvml()
    probe, note = make_probe("cuda:1", nvml_module=nvml)
    assert isinstance(probe, NvmlProbe) and probe.available and probe.name == "nvml"
    assert nvml.calls["handle"] == [5]  # NVML numbers GPUs ignoring CUDA_VISIBLE_DEVICES
    assert probe.total_bytes() == 80 << 30 and probe.free_bytes() == 30 << 30
    assert "NVML" in note
    guard = MemoryGuard(probe, reserve_mb=1024)
    assert guard.budget_bytes() == (30 << 30) + probe.reserved_bytes() - probe.allocated_bytes() - (
        1 << 30
    )


def test_make_probe_falls_back_when_nvml_fails(caplog):
    with caplog.at_level(logging.WARNING, logger="ff_lightning"):
        probe, note = make_probe(torch.device("cuda", 0), nvml_module=fake_nvml(fail=True))
    assert isinstance(probe, TorchCudaProbe)
    assert "NVML unavailable" in note and "Driver Not Loaded" in note
    assert "falling back to torch.cuda.mem_get_info" in note
    assert any(
        r.levelno == logging.WARNING and "NVML unavailable" in r.getMessage()
        for r in caplog.records
    )
    if not torch.cuda.is_available():
        assert probe.free_bytes() is None and MemoryGuard(probe).budget_bytes() is None


def test_make_probe_without_injection_never_raises():
    probe, note = make_probe("cuda")  # real pynvml: works on a GPU box, falls back here
    assert isinstance(probe, NvmlProbe | TorchCudaProbe) and note


def test_probes_satisfy_the_protocol():
    for probe in (NullProbe(), FakeProbe(), TorchCudaProbe(0)):
        assert isinstance(probe, MemoryProbe)
    fake = FakeProbe(allocated=7, peak=100)
    fake.reset_peak()
    assert fake.peak_allocated_bytes() == 7


@pytest.mark.cuda
def test_nvml_probe_and_guard_on_a_real_gpu():
    probe, note = make_probe("cuda:0")
    assert isinstance(probe, NvmlProbe), note
    total, free = probe.total_bytes(), probe.free_bytes()
    assert total is not None and free is not None and 0 < free <= total
    images = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8, device="cuda")
    params = Params(torch.arange(64, dtype=torch.float32, device="cuda"))
    guard = MemoryGuard(probe, reserve_mb=512)
    out = guard.run(augment, images, params, augment)
    assert torch.equal(out, augment(images, params))
    assert guard.per_sample_bytes is not None and guard.per_sample_bytes > 0
    assert probe.allocated_bytes() <= probe.reserved_bytes()
