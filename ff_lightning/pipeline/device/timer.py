"""Device timing without synchronisation, for the device stage.

No CUDA synchronisation is added anywhere here: on CUDA the device augmentation is timed with
events whose elapsed time is read once the end event has completed (normally one step later);
on CPU a wall clock is exact because the kernels run synchronously.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["DeviceTimer"]


class DeviceTimer:
    """Times regions of device work without synchronising.

    ``start(device)``/``stop()`` bracket a region. ``collect()`` returns the seconds of every
    finished region not yet collected. On CPU the regions finish at ``stop()`` (wall clock). On
    CUDA each region is a pair of timing events; it counts as finished when its end event has
    been reached by the stream (``Event.query()``, a non-blocking poll), and once its elapsed
    time has been read both events go back to a small pool, so that steady training creates no
    new events (about two in flight per step of lag, not two per step).

    Both events of a region are recorded on the current stream of the region's device (the
    images' device), not of the current device: in a plain loop on a second GPU without
    ``torch.cuda.set_device`` the current device's stream holds none of the work, and the
    region would read about zero.

    Args:
        event_factory: makes one timing event (default:
            ``torch.cuda.Event(enable_timing=True)``); tests inject their own.
        pool_size: most idle events kept for reuse; more are dropped.
        stream_of: the stream to record on for a device (default:
            ``torch.cuda.current_stream(device)``); tests inject their own.
    """

    def __init__(
        self,
        event_factory: Callable[[], Any] | None = None,
        pool_size: int = 8,
        stream_of: Callable[[torch.device], Any] | None = None,
    ) -> None:
        if not isinstance(pool_size, int) or pool_size < 0:
            raise ValueError(f"`pool_size` must be a non-negative int, got {pool_size!r}")
        self._factory = event_factory or _timing_event
        self._stream_of = stream_of or _current_stream
        self._pool_size = pool_size
        self._pool: list[Any] = []  # idle events whose last reading has been collected
        self._pending: deque[tuple[Any, Any]] = deque()
        self._open: tuple[Any, torch.device] | None = None
        self.events_created = 0

    def _event(self) -> Any:
        if self._pool:
            return self._pool.pop()
        self.events_created += 1
        return self._factory()

    def _recycle(self, *events: Any) -> None:
        for ev in events:
            if len(self._pool) < self._pool_size:
                self._pool.append(ev)

    def start(self, device: torch.device) -> None:
        # A region started twice drops its first start; that event may still be pending on
        # the stream, so it is not pooled.
        if device.type == "cuda":
            ev = self._event()
            ev.record(self._stream_of(device))  # enqueued on the images' stream: no sync
            self._open = (ev, device)
        else:
            self._open = (time.perf_counter(), device)

    def stop(self) -> None:
        if self._open is None:
            return
        begin, device = self._open
        self._open = None
        if device.type == "cuda":
            end = self._event()
            end.record(self._stream_of(device))  # the same stream as its start
            self._pending.append((begin, end))
        else:
            self._pending.append((begin, time.perf_counter()))

    def collect(self) -> list[float]:
        """Seconds of the finished regions, oldest first; unfinished ones stay queued."""
        done: list[float] = []
        while self._pending:
            begin, end = self._pending[0]
            if isinstance(end, float):
                done.append(end - float(begin))
            else:
                # query() polls without waiting: an unfinished region (the stream has not
                # reached its end event) is read at a later step instead of synchronising.
                if not end.query():
                    break
                done.append(begin.elapsed_time(end) / 1000.0)
                self._recycle(begin, end)  # completed and read: safe to record again
            self._pending.popleft()
        return done


def _timing_event() -> Any:
    return torch.cuda.Event(enable_timing=True)


def _current_stream(device: torch.device) -> Any:
    return torch.cuda.current_stream(device)
