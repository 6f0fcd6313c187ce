"""Timing records the DataModule hooks write and the FusionFlow callback reads.

No CUDA synchronisation is added anywhere here: on CUDA the device augmentation is timed with
events whose elapsed time is read once the end event has completed (normally one step later);
on CPU a wall clock is exact because the kernels run synchronously.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

import torch


class DeviceTimer:
    """Times regions of device work without synchronising.

    ``start()``/``stop()`` bracket a region. ``collect()`` returns the seconds of every finished
    region not yet collected. On CPU the regions finish at ``stop()``; on CUDA a region counts as
    finished when its end event has been reached by the stream (``Event.query()``), which is a
    non-blocking poll.
    """

    def __init__(self) -> None:
        self._pending: deque[tuple[object, object]] = deque()
        self._open: tuple[object, torch.device] | None = None

    def start(self, device: torch.device) -> None:
        if device.type == "cuda":
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            self._open = (ev, device)
        else:
            self._open = (time.perf_counter(), device)

    def stop(self) -> None:
        if self._open is None:
            return
        begin, device = self._open
        self._open = None
        if device.type == "cuda":
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            self._pending.append((begin, end))
        else:
            self._pending.append((begin, time.perf_counter()))

    def collect(self) -> list[float]:
        """Seconds of the finished regions, oldest first; unfinished ones stay queued."""
        done: list[float] = []
        while self._pending:
            begin, end = self._pending[0]
            if isinstance(end, float):
                done.append(end - float(begin))  # type: ignore[arg-type]
            else:
                if not end.query():  # type: ignore[attr-defined]
                    break  # still running on the stream; read it at a later step
                done.append(begin.elapsed_time(end) / 1000.0)  # type: ignore[attr-defined]
            self._pending.popleft()
        return done


@dataclass
class BatchRecord:
    """What the hooks learnt about the most recent training batch."""

    batch_size: int = 0
    n_device: int = 0
    cpu_aug_s: float = 0.0  # worker CPU seconds spent augmenting this batch's cpu-routed share
    prep_s: float = 0.0  # worker CPU seconds spent decoding/cropping the whole batch
    h2d_s: float = 0.0  # wall time of the host-to-device transfer hook (enqueue time on CUDA)
    ratio: float = 0.0  # the router's ratio when this batch was emitted


@dataclass
class PipelineStats:
    """Shared between the DataModule (writer) and the FusionFlow callback (reader)."""

    t_before_transfer: float | None = None
    last: BatchRecord = field(default_factory=BatchRecord)
    device_timer: DeviceTimer = field(default_factory=DeviceTimer)
    train_batches: int = 0
