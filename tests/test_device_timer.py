"""DeviceTimer: wall clock on CPU, pooled CUDA events read without synchronising."""

from __future__ import annotations

import time

import pytest
import torch

from ff_lightning.pipeline.device import timer as timer_module
from ff_lightning.pipeline.device.timer import DeviceTimer

CUDA = torch.device("cuda")  # only a tag here: the fake events never touch a GPU


class FakeStream:
    """Completes recorded events when told to, each at a given time (seconds)."""

    def __init__(self) -> None:
        self.queue: list[FakeEvent] = []

    def run(self, *times: float) -> None:
        """The stream reaches its oldest recorded events, at these times."""
        for t in times:
            ev = self.queue.pop(0)
            ev.state, ev.at = "done", t


class FakeEvent:
    """A timing event that refuses to be recorded again before its reading was taken."""

    def __init__(self, stream: FakeStream) -> None:
        self.stream = stream
        self.state = "idle"  # idle -> recorded -> done
        self.at: float | None = None
        self.read = True

    def record(self, stream: FakeStream | None = None) -> None:
        assert stream is self.stream, "recorded on another stream than the images'"
        assert self.state != "recorded", "re-recorded while the stream has not reached it"
        assert self.read, "re-recorded before its elapsed time was read"
        self.state, self.at, self.read = "recorded", None, False
        self.stream.queue.append(self)

    def query(self) -> bool:
        return self.state == "done"

    def elapsed_time(self, end: FakeEvent) -> float:
        assert self.state == end.state == "done"
        self.read = end.read = True
        return (end.at - self.at) * 1000.0  # milliseconds, as torch.cuda.Event reports


def fake_timer(**kwargs) -> tuple[DeviceTimer, FakeStream]:
    stream = FakeStream()
    timer = DeviceTimer(
        event_factory=lambda: FakeEvent(stream), stream_of=lambda device: stream, **kwargs
    )
    return timer, stream


def test_cpu_regions_use_the_wall_clock(monkeypatch):
    readings = iter([10.0, 10.25, 11.0, 11.5])
    monkeypatch.setattr(timer_module.time, "perf_counter", lambda: next(readings))
    timer = DeviceTimer(event_factory=lambda: pytest.fail("no events on CPU"))
    timer.start(torch.device("cpu"))
    timer.stop()
    timer.start(torch.device("cpu"))
    timer.stop()
    assert timer.collect() == [0.25, 0.5] and timer.collect() == []
    assert timer.events_created == 0


def test_steady_steps_reuse_two_events():
    timer, stream = fake_timer()
    for step in range(50):
        timer.start(CUDA)
        timer.stop()
        stream.run(step, step + 0.125)
        assert timer.collect() == [0.125]
    assert timer.events_created == 2


def test_regions_read_one_step_late_need_four_events():
    timer, stream = fake_timer()
    got: list[float] = []
    for step in range(20):
        timer.start(CUDA)
        timer.stop()
        got += timer.collect()  # this step's region is still running: nothing blocks
        stream.run(step, step + 0.01 * (step + 1))  # the stream finishes it afterwards
    got += timer.collect()
    assert got == pytest.approx([0.01 * (i + 1) for i in range(20)])
    assert timer.events_created == 4  # two regions in flight, never two new events per step


def test_unfinished_events_are_not_reused():
    timer, stream = fake_timer()
    for _ in range(5):
        timer.start(CUDA)
        timer.stop()
        assert timer.collect() == []
    assert timer.events_created == 10
    stream.run(0, 1, 2, 3)  # the first two regions finish, in order
    assert timer.collect() == [1.0, 1.0]
    timer.start(CUDA)
    timer.stop()
    assert timer.events_created == 10  # the two read regions' events came back


def test_the_pool_is_bounded():
    timer, stream = fake_timer(pool_size=3)
    for _ in range(4):
        timer.start(CUDA)
        timer.stop()
    stream.run(*range(8))
    assert timer.collect() == [1.0] * 4
    for _ in range(2):  # 3 pooled events, then new ones
        timer.start(CUDA)
        timer.stop()
    assert timer.events_created == 8 + 1


def test_stop_without_start_and_start_twice():
    timer, stream = fake_timer()
    timer.stop()
    assert timer.collect() == []
    timer.start(CUDA)
    timer.start(CUDA)  # the first start is dropped; its event is still pending: not pooled
    timer.stop()
    stream.run(4.0, 5.0, 5.5)
    assert timer.collect() == [0.5] and timer.events_created == 3
    timer.start(CUDA)
    timer.stop()
    assert timer.events_created == 3


def test_pool_size_validation():
    with pytest.raises(ValueError, match="`pool_size` must be a non-negative int, got -1"):
        DeviceTimer(pool_size=-1)


@pytest.mark.cuda
def test_cuda_events_read_without_blocking_around_a_sleep_kernel():
    dev = torch.device("cuda", torch.cuda.current_device())
    torch.cuda._sleep(1000)  # load the kernel and warm the context up
    torch.cuda.synchronize(dev)
    clock_khz = getattr(torch.cuda.get_device_properties(dev), "clock_rate", 0) or 2_000_000
    target_s = 0.2
    cycles = int(target_s * clock_khz * 1000)  # at the peak clock: never shorter than target
    timer = DeviceTimer()
    mode = torch.cuda.get_sync_debug_mode()
    t0 = time.perf_counter()
    try:
        torch.cuda.set_sync_debug_mode("error")  # any synchronisation in the timer raises
        timer.start(dev)
        torch.cuda._sleep(cycles)
        timer.stop()
        t_collect = time.perf_counter()
        early = timer.collect()
        collect_s = time.perf_counter() - t_collect
    finally:
        torch.cuda.set_sync_debug_mode(mode)
    assert early == []  # the kernel is still running: nothing to read yet
    assert collect_s < 0.5 * target_s  # and collect() returned without waiting for it
    torch.cuda.synchronize(dev)
    wall_s = time.perf_counter() - t0
    (elapsed,) = timer.collect()
    # Generous: at least most of the cycles at the peak clock, at most the wall time around it.
    assert 0.5 * target_s <= elapsed <= wall_s + 0.05, (elapsed, wall_s, clock_khz)
    # The next region reuses the two events.
    timer.start(dev)
    torch.cuda._sleep(1000)
    timer.stop()
    torch.cuda.synchronize(dev)
    assert len(timer.collect()) == 1 and timer.events_created == 2
