"""Stand-ins for the CUDA runtime under :class:`~ff_lightning.testing.fake_cuda.FakeCuda`.

Streams and events that remember what was done to them (which streams one waited for, which
stream an event was recorded on, every host drain), and the patches that put them, pinned
memory, ``record_stream``, lazy initialisation and ``torch.tensor(..., device="cuda")`` in
place of the real calls for the harness's lifetime.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor

__all__ = ["FakeEvent", "FakeStream", "device_of", "patched", "runtime_patches"]


def device_of(value: Any) -> torch.device | None:
    """``value`` as a device, or ``None`` when it is none."""
    if value is None:
        return None
    try:
        return torch.device(value)
    except (TypeError, RuntimeError):
        return None


class FakeStream:
    """A CUDA stream stand-in: remembers the streams it was ordered after and its drains."""

    def __init__(self, harness: Any, device: torch.device, name: str = "side") -> None:
        self._harness = harness
        self.device = device
        self.name = name
        self.waited_on: list[FakeStream] = []  # streams this one waits for (wait_stream)
        self.synchronized = 0  # host drains of this stream

    def wait_stream(self, other: FakeStream) -> None:
        self.waited_on.append(other)

    def wait_event(self, event: FakeEvent) -> None:
        if event.stream is not None:
            self.waited_on.append(event.stream)

    def record_event(self, event: FakeEvent | None = None) -> FakeEvent:
        event = event or FakeEvent(self._harness)
        event.record(self)
        return event

    def synchronize(self) -> None:
        # The host waits for everything queued on the stream: counted as a drain.
        self.synchronized += 1
        self._harness._drain(f"{self.name} stream of {self.device}")

    def query(self) -> bool:
        return True

    def __repr__(self) -> str:
        return f"FakeStream({self.name}, {self.device})"


class FakeEvent:
    """A CUDA event stand-in: remembers the stream it was recorded on; always complete."""

    def __init__(
        self,
        harness: Any,
        enable_timing: bool = False,
        blocking: bool = False,
        interprocess: bool = False,
    ) -> None:
        self._harness = harness
        self.enable_timing = enable_timing
        self.stream: FakeStream | None = None
        self.records = 0

    def record(self, stream: FakeStream | None = None) -> None:
        self.stream = stream if stream is not None else self._harness.current_stream()
        self.records += 1
        self._harness.events.append(self)

    def query(self) -> bool:
        return True

    def elapsed_time(self, end: FakeEvent) -> float:
        return 0.0

    def synchronize(self) -> None:
        self._harness._drain("event")

    def wait(self, stream: FakeStream | None = None) -> None:
        (stream or self._harness.current_stream()).wait_event(self)


def runtime_patches(h: Any) -> list[tuple[Any, str, Any]]:
    """``(owner, attribute, stand-in)`` for the CUDA runtime calls, for harness ``h`` (a
    :class:`~ff_lightning.testing.fake_cuda.FakeCuda`)."""

    def pin_memory(t: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        if h._is_pinned(t):
            return t
        out = t.clone()  # a new page-locked buffer, as the real call makes
        storage = out.untyped_storage()
        h._pinned[storage.data_ptr()] = storage
        return out

    def is_pinned(t: Tensor, *args: Any, **kwargs: Any) -> bool:
        return h._is_pinned(t)

    def record_stream(t: Tensor, stream: Any) -> None:
        h.recorded_streams.append((tuple(t.shape), stream))

    @contextlib.contextmanager
    def stream_context(stream: FakeStream | None) -> Iterator[None]:
        if stream is None:
            yield
            return
        index = h._index(stream.device)
        before = h.current_stream(index)
        h._current[index] = stream
        try:
            yield
        finally:
            h._current[index] = before

    def make_stream(device: Any = None, priority: int = 0, **kwargs: Any) -> FakeStream:
        return FakeStream(h, torch.device("cuda", h._index(device)))

    def make_event(*args: Any, **kwargs: Any) -> FakeEvent:
        return FakeEvent(h, *args, **kwargs)

    real_tensor = torch.tensor

    def tensor(data: Any, *args: Any, device: Any = None, **kwargs: Any) -> Tensor:
        # torch.tensor copies to the device below the dispatcher; build it on the host and
        # copy it with `.to`, which is what the real call does (a pageable copy).
        dev = device_of(device)
        if dev is not None and dev.type == "cuda":
            kwargs.pop("pin_memory", None)
            return real_tensor(data, *args, **kwargs).to(dev)
        return real_tensor(data, *args, device=device, **kwargs)

    def synchronize(device: Any = None) -> None:
        h._drain("torch.cuda.synchronize")

    def set_device(device: Any) -> None:
        h._device = h._index(device)

    cuda = torch.cuda
    return [
        (cuda, "_lazy_init", lambda: None),
        (cuda, "current_stream", lambda device=None: h.current_stream(device)),
        (cuda, "default_stream", lambda device=None: h.default_stream(device)),
        (cuda, "Stream", make_stream),
        (cuda, "stream", stream_context),
        (cuda, "Event", make_event),
        (cuda, "synchronize", synchronize),
        (cuda, "current_device", lambda: h._device),
        (cuda, "set_device", set_device),
        (cuda, "device_count", lambda: h.device_count),
        (torch, "tensor", tensor),
        (Tensor, "pin_memory", pin_memory),
        (Tensor, "is_pinned", is_pinned),
        (Tensor, "record_stream", record_stream),
    ]


@contextlib.contextmanager
def patched(owner: Any, name: str, value: Callable[..., Any] | Any) -> Iterator[None]:
    """Set ``owner.name`` to ``value`` for the block, then put back what was there."""
    missing = object()
    before = (
        owner.__dict__.get(name, missing)
        if isinstance(owner, type)
        else getattr(owner, name, missing)
    )
    setattr(owner, name, value)
    try:
        yield
    finally:
        if before is missing:
            delattr(owner, name)
        else:
            setattr(owner, name, before)
