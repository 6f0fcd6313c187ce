"""Tests for the memory probes and the memory guard, with injected probes and OOM errors."""

from __future__ import annotations

import dataclasses
import logging

import pytest
import torch

from ff_lightning.pipeline.device import memory as memory_module
from ff_lightning.pipeline.device.memory import MemoryGuard
from ff_lightning.pipeline.device.probes import NullProbe, NvmlProbe, make_probe
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
        probe.touch(len(images) * 2 * MB)  # 2 MiB per sample at peak
        return augment(images, params)

    images, params = batch(40)
    out = guard.run(fn, images, params, never_called, sample_bytes_hint=1 * MB)
    assert torch.equal(out, augment(images, params))
    assert guard.per_sample_bytes == 2 * MB and guard.per_sample_exact
    # First chunk from the estimate (50 MiB / 8 MiB), then from the measurement (50 / 2).
    assert chunks == [6, 25, 9] and guard.last_chunk == 9
    assert probe.resets == 0  # the user's peak statistics are never reset
    assert probe.peak == 5 * MB + 25 * 2 * MB  # the highest peak stays, as the user would see it


def test_a_higher_user_peak_falls_back_to_the_estimate():
    # Training already peaked at 3 GiB: augmentation's own peak is hidden below it.
    probe = FakeProbe(free=1024 * MB + 80 * MB, allocated=1024 * MB, peak=3072 * MB)
    guard = MemoryGuard(probe, reserve_mb=1024)

    def fn(images, params):
        probe.touch(len(images) * 2 * MB)
        return augment(images, params)

    images, params = batch(40)
    guard.run(fn, images, params, never_called, sample_bytes_hint=1 * MB)
    # The bound (3072 - 1024) MiB / 10 samples is far above the 8 MiB estimate: keep the
    # estimate, which is conservative; nothing is reset to find the real figure.
    assert guard.per_sample_bytes == 8 * MB and not guard.per_sample_exact
    assert probe.resets == 0 and probe.peak == 3072 * MB


def test_a_tight_bound_beats_the_estimate_and_an_exact_reading_replaces_it():
    probe = FakeProbe(free=1 << 40, allocated=100 * MB, peak=110 * MB)
    guard = MemoryGuard(probe, reserve_mb=0, max_chunk=10)
    seen = []

    def fn(images, params):
        probe.touch(len(images) * 3 * MB)
        seen.append(guard.per_sample_bytes)
        return augment(images, params)

    images, params = batch(20)
    guard.run(fn, images, params, never_called, sample_bytes_hint=1 * MB)
    # Chunk 1: the peak rose (100 + 30 > 110) -> exact 3 MiB; chunk 2 reaches the same peak
    # (no rise): its bound is ignored once an exact reading exists.
    assert guard.per_sample_bytes == 3 * MB and guard.per_sample_exact
    guard2 = MemoryGuard(FakeProbe(free=1 << 40, allocated=100 * MB, peak=110 * MB))
    guard2.run(augment, *batch(5), never_called, sample_bytes_hint=1 * MB)
    assert guard2.per_sample_bytes == 2 * MB  # the bound (10 MiB / 5) is below the estimate


def test_only_the_first_chunks_are_measured():
    class CountingProbe(FakeProbe):
        reads = 0

        def peak_allocated_bytes(self) -> int:
            CountingProbe.reads += 1
            return super().peak_allocated_bytes()

    probe = CountingProbe(free=1 << 40)
    guard = MemoryGuard(probe, max_chunk=2, measure_chunks=3)
    images, params = batch(12)
    for _ in range(3):
        guard.run(augment, images, params, never_called)
    assert guard.measured_chunks == 3 and CountingProbe.reads == 6  # before and after, 3 chunks


# ---------------------------------------------------------------------- OOM handling
def test_oom_halves_the_chunk_until_it_fits_and_keeps_order(caplog):
    images, params = batch(24)
    calls: list[int] = []
    probe = FakeProbe(free=1 << 40)
    guard = MemoryGuard(probe, oom_errors=(FakeOOM,), empty_cache=lambda: None)
    with caplog.at_level(logging.WARNING, logger="ff_lightning"):
        out = guard.run(failing_above(5, calls), images, params, never_called)
    assert torch.equal(out, augment(images, params))  # same as unchunked, same order
    assert calls[:3] == [24, 12, 6] and max(calls[3:]) <= 5
    assert guard.oom_events == 3 and guard.last_chunk == 3 and guard.cpu_fallback_samples == 0
    assert guard.cache_flushes == 2 and probe.resets == 0
    assert guard.ratio_cap is None
    assert sum(1 for r in caplog.records if "out of memory" in r.getMessage()) == 3
    # The size that fitted is remembered for the next batch: no OOM this time.
    out = guard.run(failing_above(5), images, params, never_called)
    assert torch.equal(out, augment(images, params)) and guard.oom_events == 3


def test_empty_cache_only_when_the_halved_retry_also_fails():
    images, params = batch(24)
    calls: list[int] = []
    flushed_after: list[list[int]] = []  # the chunk sizes tried before each empty_cache

    guard = MemoryGuard(
        FakeProbe(free=1 << 40),
        oom_errors=(FakeOOM,),
        empty_cache=lambda: flushed_after.append(list(calls)),
    )
    guard.run(failing_above(12, calls), images, params, never_called)
    assert calls == [24, 12, 12] and flushed_after == []  # one OOM: training's cache kept
    calls.clear()
    guard = MemoryGuard(
        FakeProbe(free=1 << 40),
        oom_errors=(FakeOOM,),
        empty_cache=lambda: flushed_after.append(list(calls)),
    )
    guard.run(failing_above(5, calls), images, params, never_called)
    # 24 fails: retry at 12 with the cache intact; 12 fails too: flush; 6 fails: flush again.
    assert flushed_after == [[24, 12], [24, 12, 6]] and guard.cache_flushes == 2
    calls.clear()
    guard.run(failing_above(5, calls), images, params, never_called)
    assert len(flushed_after) == 2  # the next call starts at the ceiling: no OOM, no flush


def test_the_default_empty_cache_is_torchs_and_waits_for_the_second_failure(monkeypatch):
    flushes: list[int] = []
    monkeypatch.setattr(memory_module, "_cuda_empty_cache", lambda: flushes.append(1))
    images, params = batch(8)
    guard = MemoryGuard(FakeProbe(free=1 << 40), oom_errors=(FakeOOM,))
    guard.run(failing_above(4), images, params, never_called)
    assert flushes == []
    guard = MemoryGuard(FakeProbe(free=1 << 40), oom_errors=(FakeOOM,))
    guard.run(failing_above(2), images, params, never_called)
    assert flushes == [1]


def first_chunks(guard: MemoryGuard, fn, calls: int, n: int = 24) -> list[int]:
    """The first chunk size the guard tries in each of ``calls`` calls."""
    images, params = batch(n)
    firsts = []
    for _ in range(calls):
        sizes: list[int] = []

        def recording(imgs, prm, sizes=sizes):
            sizes.append(len(imgs))
            return fn(imgs, prm)

        out = guard.run(recording, images, params, never_called)
        assert torch.equal(out, augment(images, params))
        firsts.append(sizes[0])
    return firsts


def test_the_ceiling_recovers_after_calls_without_oom(caplog):
    transient = {"left": 1}  # one OOM burst on the first call, then memory is back

    def fn(imgs, prm):
        if transient["left"] and len(imgs) > 5:
            raise FakeOOM("out of memory")
        return augment(imgs, prm)

    guard = MemoryGuard(FakeProbe(free=1 << 40), oom_errors=(FakeOOM,), recover_after=3)
    with caplog.at_level(logging.INFO, logger="ff_lightning"):
        assert first_chunks(guard, fn, 1) == [24]
        transient["left"] = 0
        assert guard.ceiling == 3
        # 3 clean calls at each ceiling, doubling: 3 -> 6 -> 12 -> no ceiling (the batch).
        assert first_chunks(guard, fn, 10) == [3, 3, 3, 6, 6, 6, 12, 12, 12, 24]
    assert guard.ceiling is None and guard.oom_events == 3
    assert [e["kind"] for e in guard.events].count("grow") == 3
    assert any("raising the chunk ceiling from 3 to 6" in r.getMessage() for r in caplog.records)


def test_the_ceiling_also_recovers_under_max_chunk():
    transient = {"left": 1}

    def fn(imgs, prm):
        if transient["left"] and len(imgs) > 2:
            raise FakeOOM("out of memory")
        return augment(imgs, prm)

    guard = MemoryGuard(
        FakeProbe(free=1 << 40), max_chunk=8, oom_errors=(FakeOOM,), recover_after=1
    )
    assert first_chunks(guard, fn, 1) == [8]
    transient["left"] = 0
    assert first_chunks(guard, fn, 4) == [2, 4, 8, 8] and guard.ceiling is None


def test_a_regrown_ceiling_that_fails_again_waits_twice_as_long():
    guard = MemoryGuard(FakeProbe(free=1 << 40), oom_errors=(FakeOOM,), recover_after=2)
    # Memory for 5 samples only, always: 24 -> 12 -> 6 -> 3 on the first call.
    firsts = first_chunks(guard, failing_above(5), 13)
    # Grows to 6 after 2 clean calls and fails; then after 4; then after 8.
    assert firsts == [24, 3, 3, 6, 3, 3, 3, 3, 6, 3, 3, 3, 3]
    assert guard.cpu_fallback_samples == 0 and guard.ceiling == 3


def test_an_output_that_does_not_fit_is_written_over_the_input(monkeypatch, caplog):
    images, params = batch(6)
    expected = augment(images, params)

    def no_memory(*args, **kwargs):
        raise FakeOOM("out of memory")

    monkeypatch.setattr(memory_module.torch, "empty_like", no_memory)
    # Chunks of 2: the output buffer is needed (one chunk returns fn's own result).
    guard = MemoryGuard(FakeProbe(free=1 << 40), max_chunk=2, oom_errors=(FakeOOM,))
    with caplog.at_level(logging.WARNING, logger="ff_lightning"):
        out = guard.run(augment, images, params, never_called)
    assert out is images and torch.equal(out, expected)
    assert guard.oom_events == 1 and guard.events[0]["kind"] == "oom_output"
    assert any("writing the result over" in r.getMessage() for r in caplog.records)


def test_one_chunk_returns_the_result_without_a_second_buffer(monkeypatch):
    """Finding 6: a batch that fits in one chunk (the usual case) allocates no output buffer
    and copies nothing into one; chunked batches still fill one buffer."""
    images, params = batch(6)
    results: list[torch.Tensor] = []

    def kept(images: torch.Tensor, params: Params) -> torch.Tensor:
        results.append(augment(images, params))
        return results[-1]

    allocations: list[tuple] = []
    real = memory_module.torch.empty_like
    monkeypatch.setattr(
        memory_module.torch, "empty_like", lambda t, **kw: allocations.append(t.shape) or real(t)
    )
    out = MemoryGuard(FakeProbe(free=1 << 40)).run(kept, images, params, never_called)
    assert out is results[0] and allocations == []
    chunked = MemoryGuard(FakeProbe(free=1 << 40), max_chunk=4)
    out = chunked.run(kept, images, params, never_called)
    assert allocations == [images.shape] and torch.equal(out, augment(images, params))
    given = torch.empty_like(images)
    assert MemoryGuard(FakeProbe()).run(kept, images, params, never_called, out=given) is given


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
    # The guard keeps working: once memory is back, the next call runs on the device.
    out = guard.run(augment, images, params, never_called, total=40)
    assert torch.equal(out, augment(images, params)) and guard.cpu_fallback_samples == 10


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
        ({"measure_chunks": -1}, "`measure_chunks` must be a non-negative int, got -1"),
        ({"recover_after": 0}, "`recover_after` must be a positive int, got 0"),
    ],
)
def test_guard_argument_validation(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        MemoryGuard(NullProbe(), **kwargs)


@pytest.mark.cuda
def test_nvml_probe_and_guard_on_a_real_gpu():
    probe, note = make_probe("cuda:0")
    assert isinstance(probe, NvmlProbe) or "MIG" in note, note
    total, free = probe.total_bytes(), probe.free_bytes()
    assert total is not None and free is not None and 0 < free <= total
    images = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8, device="cuda")
    params = Params(torch.arange(64, dtype=torch.float32, device="cuda"))
    guard = MemoryGuard(probe, reserve_mb=512)
    out = guard.run(augment, images, params, augment)
    assert torch.equal(out, augment(images, params))
    assert guard.per_sample_bytes is not None and guard.per_sample_bytes > 0
    assert probe.allocated_bytes() <= probe.reserved_bytes()


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    """Per sample: mean abs diff <= 1 level and <= 2% of values off by more than 2 levels (the
    CPU/GPU tolerance of tests/test_policies.py; a misplaced sample is far outside it)."""
    d = (a.int() - b.int()).abs().flatten(1).float()
    assert (d.mean(1) <= 1.0).all(), d.mean(1)
    assert ((d > 2).float().mean(1) <= 0.02).all(), (d > 2).float().mean(1)


@pytest.mark.cuda
@pytest.mark.slow
def test_a_real_oom_halves_the_chunk_then_falls_back_to_the_cpu_route():
    from ff_lightning.augment import build_policy

    dev = torch.device("cuda", torch.cuda.current_device())
    policy = build_policy("randaugment")
    n, side = 16, 1024
    g = torch.Generator().manual_seed(0)
    host = torch.randint(0, 256, (n, 3, side, side), dtype=torch.uint8, generator=g)
    params = policy.sample(torch.arange(n), 0, 0)
    # Every sample rotates in every slot, so working memory grows with the chunk and halving
    # a chunk really halves it (RandAugment's own draw would group ops unevenly).
    rotate = policy.op_names.index("Rotate")
    params = dataclasses.replace(
        params,
        op_ids=torch.full_like(params.op_ids, rotate),
        applied=torch.ones_like(params.applied),
    )
    cpu_route = policy.apply_batch(host, params)  # what the CPU route computes
    images = host.to(dev)
    out_bytes = images.numel()  # the guard's output buffer, a whole number of 2 MiB pages
    policy.apply_batch(images[:2], params[torch.arange(2)])  # warm-up: kernels, workspaces
    torch.cuda.synchronize(dev)

    def needs(x: torch.Tensor, p) -> tuple[torch.Tensor, int, int]:
        """apply_batch(x, p) from an empty cache: its result, and the peak allocated and
        reserved bytes it added (this test's own measurement; the guard never resets)."""
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)
        alloc0, res0 = torch.cuda.memory_allocated(dev), torch.cuda.memory_reserved(dev)
        y = policy.apply_batch(x, p)
        return (
            y,
            torch.cuda.max_memory_allocated(dev) - alloc0,
            torch.cuda.max_memory_reserved(dev) - res0,
        )

    unchunked, alloc_all, _ = needs(images, params)
    unchunked = unchunked.cpu()
    ones = [needs(images[i : i + 1], params[torch.arange(i, i + 1)])[1:] for i in range(n)]
    alloc_one_min = min(a for a, _ in ones)
    res_one_max = max(r for _, r in ones)
    assert alloc_all > 2 * res_one_max, (alloc_all, res_one_max)  # precondition of the test
    _close(unchunked, cpu_route)

    # The user's peak: higher than anything augmentation reaches below. A reset would lower it.
    big = torch.empty(2 * alloc_all, dtype=torch.uint8, device=dev)
    del big
    user_peak = torch.cuda.max_memory_allocated(dev)

    total = torch.cuda.mem_get_info(dev)[1]
    getter = getattr(torch.cuda, "get_per_process_memory_fraction", None)
    old_fraction = getter(dev) if getter is not None else 1.0

    def limit(extra: int) -> tuple[int, int]:
        """Cap this process's allocator at what it holds now + ``extra`` bytes; returns the
        slack (reserved but unallocated bytes) that comes on top."""
        torch.cuda.empty_cache()
        reserved = torch.cuda.memory_reserved(dev)
        torch.cuda.set_per_process_memory_fraction(min(1.0, (reserved + extra) / total), dev)
        return reserved - torch.cuda.memory_allocated(dev), reserved

    probe, note = make_probe(dev)
    guard = MemoryGuard(probe, reserve_mb=0, recover_after=1)
    try:
        # 1. Room for the output and about half the whole batch's working memory: the full
        #    chunk cannot run, a single sample surely can (r_one_max), so the chunk halves.
        room = (1 << 20) + (alloc_all + res_one_max) // 2
        slack, _ = limit(out_bytes + room)
        assert alloc_all > room + slack, (alloc_all, room, slack)  # precondition: 16 cannot fit
        out = guard.run(policy.apply_batch, images, params, policy.apply_batch, total=2 * n)
        got = out.cpu()
        del out
        assert guard.events[0] == {"kind": "oom", "chunk": n, "retry": n // 2, "at": 0}, note
        assert guard.cpu_fallback_samples == 0 and guard.ratio_cap is None, guard.events
        assert 1 <= guard.last_chunk < n
        _close(got, unchunked)  # same samples, same order, chunked
        _close(got, cpu_route)
        assert torch.cuda.max_memory_allocated(dev) >= user_peak  # the peak was not reset

        # 2. Room for the output only: not even one sample fits, so the CPU route takes the
        #    whole share and the ratio is capped at what fitted (nothing).
        slack, _ = limit(out_bytes + (1 << 20) + alloc_one_min // 4)
        assert slack + (1 << 20) + alloc_one_min // 4 < alloc_one_min, (slack, alloc_one_min)
        events_before = guard.oom_events
        out = guard.run(policy.apply_batch, images, params, policy.apply_batch, total=2 * n)
        assert guard.oom_events > events_before and guard.events[-1]["kind"] == "cpu_fallback"
        assert guard.cpu_fallback_samples == n and guard.ratio_cap == 0.0
        assert torch.equal(out.cpu(), cpu_route)  # it is the CPU route
        del out
    finally:
        torch.cuda.set_per_process_memory_fraction(old_fraction, dev)
        torch.cuda.empty_cache()

    # 3. Memory is back: the guard keeps working on the device, and its ceiling (1 after the
    #    fallback) doubles after each clean call (recover_after=1) back to the whole batch.
    ooms = guard.oom_events
    chunks = []
    for _ in range(5):
        out = guard.run(policy.apply_batch, images, params, policy.apply_batch, total=2 * n)
        chunks.append(guard.last_chunk)
    assert chunks == [1, 2, 4, 8, 16] and guard.oom_events == ooms
    assert guard.cpu_fallback_samples == n  # nothing more went to the CPU
    _close(out.cpu(), cpu_route)
