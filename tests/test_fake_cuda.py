"""The fake-CUDA harness itself: what it fakes, what it runs for real, what it counts and what
it refuses (``ff_lightning.testing.fake_cuda``)."""

from __future__ import annotations

import pytest
import torch

from ff_lightning.augment import _device
from ff_lightning.augment._gather import DEVICE_INDEX_CACHE
from ff_lightning.testing.fake_cuda import FakeCuda, FakeStream, unavailable_reason

pytestmark = pytest.mark.skipif(unavailable_reason() is not None, reason=str(unavailable_reason()))


def test_device_tensors_are_fake_and_host_work_is_real() -> None:
    with FakeCuda() as cuda:
        x = torch.empty(4, 3, 8, 8, dtype=torch.uint8, device="cuda")
        host = torch.arange(6).view(2, 3)
        assert host.sum().item() == 15  # a real host read is fine
        y = (x.float() * 2).to(torch.bfloat16)
        assert y.device == torch.device("cuda", 0) and y.dtype == torch.bfloat16
        assert type(host) is torch.Tensor and type(y) is not torch.Tensor
    assert cuda.counts.device_ops == 3  # _to_copy, mul, _to_copy; the allocation is apart
    assert cuda.counts.allocations == 1 and cuda.counts.by_op["mul"] == 1
    assert cuda.violations == []


@pytest.mark.parametrize(
    ("read", "kind", "error"),
    [
        (lambda t: t.sum().item(), "host_read", "DataDependentOutputException"),
        (lambda t: t.tolist(), "host_read", "DataDependentOutputException"),
        (lambda t: bool(t.any()), "host_read", "DataDependentOutputException"),
        (lambda t: t.nonzero(), "dynamic_shape", "DynamicOutputShapeException"),
        (lambda t: t[t > 0], "dynamic_shape", "DynamicOutputShapeException"),
        (lambda t: t.unique(), "dynamic_shape", "DynamicOutputShapeException"),
        (lambda t: t + torch.ones(3), "device_mix", "FakeTensorDeviceMismatchError"),
    ],
    ids=["item", "tolist", "bool", "nonzero", "mask", "unique", "mix"],
)
def test_host_reads_and_device_mixes_raise_and_are_recorded(read, kind: str, error: str) -> None:
    with FakeCuda() as cuda:
        t = torch.zeros(3, device="cuda")
        with pytest.raises(Exception) as info:
            try:
                read(t)
            except Exception:
                raise
        assert type(info.value).__name__ == error
    assert [v.kind for v in cuda.violations] == [kind]
    assert "test_fake_cuda.py" in cuda.violations[0].where


def test_a_swallowed_host_read_is_still_recorded() -> None:
    with FakeCuda() as cuda:
        t = torch.zeros(3, device="cuda")
        try:
            int(t.max())
        except Exception:  # code that catches everything cannot hide it
            pass
    assert len(cuda.violations) == 1 and cuda.violations[0].op.endswith(
        "_local_scalar_dense.default"
    )


def test_copies_are_counted_and_pageable_ones_are_told_apart() -> None:
    with FakeCuda() as cuda:
        host = torch.arange(4)
        pinned = host.pin_memory()
        assert pinned.is_pinned() and not host.is_pinned()
        pinned.to("cuda", non_blocking=True)  # asynchronous
        host.to("cuda", non_blocking=True)  # pageable: synchronises
        pinned.to("cuda")  # blocking
        dev = torch.empty(4, dtype=torch.int64, device="cuda")
        dev.copy_(pinned, non_blocking=True)
        dev.cpu()
        torch.tensor([1.0, 2.0], device="cuda")  # a host tensor copied: pageable
    c = cuda.counts
    assert (c.h2d, c.h2d_sync, c.d2h) == (5, 3, 1)


def test_streams_and_events_are_stubbed_and_remember_what_was_done() -> None:
    with FakeCuda(device_count=2) as cuda:
        assert torch.cuda.device_count() == 2
        main = torch.cuda.current_stream()
        side = torch.cuda.Stream(device="cuda:0")
        with torch.cuda.stream(side):
            assert torch.cuda.current_stream() is side
            out = torch.empty(3, device="cuda")
        main.wait_stream(side)
        out.record_stream(main)
        ev = torch.cuda.Event(enable_timing=True)
        ev.record(torch.cuda.current_stream("cuda:1"))
        assert ev.query() and ev.elapsed_time(ev) == 0.0
        assert ev.stream.device == torch.device("cuda", 1)
        assert isinstance(main, FakeStream) and main.waited_on == [side]
        assert cuda.counts.drains == 0
        main.synchronize()
        torch.cuda.synchronize()
    assert cuda.counts.drains == 2 and len(cuda.drains) == 2
    assert cuda.recorded_streams == [((3,), main)]
    assert cuda.events == [ev]


def test_counts_reset_and_uncounted_setup() -> None:
    with FakeCuda(trace=True) as cuda:
        with cuda.uncounted():
            x = torch.zeros(8, device="cuda")
        assert cuda.counts.device_ops == 0
        x.add_(1)
        assert cuda.counts.device_ops == 1
        assert any("test_fake_cuda.py" in site for site in cuda.counts.by_site)
        cuda.reset()
        assert cuda.counts.device_ops == 0


def test_views_and_metadata_are_not_device_ops() -> None:
    with FakeCuda() as cuda:
        x = torch.empty(4, 6, device="cuda")
        cuda.reset()
        x.view(6, 4).t()[1:].unsqueeze(0).expand(2, -1, -1)
        assert x.device.type == "cuda" and x.shape == (4, 6)
    assert cuda.counts.device_ops == 0


def test_device_caches_are_emptied_on_entry_and_exit() -> None:
    calls: list[int] = []
    _device.device_cache(lambda: calls.append(1))
    with FakeCuda():
        DEVICE_INDEX_CACHE.rows(
            [1],
            torch.device("cuda"),
            lambda pos: torch.zeros(1, 4, dtype=torch.long, device="cuda"),
        )
        assert DEVICE_INDEX_CACHE._entries
    assert not DEVICE_INDEX_CACHE._entries and len(calls) == 2
    _device._CACHES.pop()


def test_patches_are_undone() -> None:
    before = (torch.cuda.current_stream, torch.Tensor.pin_memory, torch.cuda.Event)
    with FakeCuda():
        assert torch.cuda.current_stream is not before[0]
    assert (torch.cuda.current_stream, torch.Tensor.pin_memory, torch.cuda.Event) == before
