"""Run device code on ``cuda`` tensors without a GPU, and count what it asks of the device.

PyTorch's fake tensors carry a shape, a dtype and a device but no data, so a tensor can sit on
``cuda:0`` on a machine with no GPU and no driver. :class:`FakeCuda` makes that usable on real
code: inside it,

- every op with a fake operand, or with a ``device="cuda"`` target (``torch.empty(...,
  device="cuda")``, ``t.to("cuda")``), runs in one ``FakeTensorMode(allow_non_fake_inputs=True)``
  and returns fake ``cuda`` tensors; every other op (pure host work: planning, parameter
  tables, index lists) runs for real, on real CPU tensors;
- a host read of a device value raises, exactly where a GPU would stall the host:
  ``.item()``, ``.tolist()``, ``bool(t)``, ``nonzero``, a bool-mask index, ``unique``
  (``DataDependentOutputException`` / ``DynamicOutputShapeException``), and so does any mix of
  host and device tensors in one op (``FakeTensorDeviceMismatchError``); each is also kept in
  :attr:`FakeCuda.violations`, so that code which swallows exceptions cannot hide one;
- :attr:`FakeCuda.counts` counts the device ops (ops that run on a device tensor, without
  views and allocations: an upper bound on kernel launches), host-to-device copies (and of
  those, the ones that synchronise: from pageable memory, or blocking), device-to-host copies
  and stream drains (``Stream.synchronize``, ``Event.synchronize``, ``torch.cuda.synchronize``);
- the CUDA runtime calls that code here makes are stubbed: lazy initialisation,
  ``Tensor.pin_memory``/``is_pinned`` (pinned host tensors are tracked, so a copy from
  pageable memory is told apart), ``Tensor.record_stream``, ``torch.cuda.Stream``,
  ``current_stream``, ``default_stream``, ``torch.cuda.stream(...)``, ``torch.cuda.Event``
  (``record``/``query``/``elapsed_time``), ``synchronize``, ``current_device``/``set_device``/
  ``device_count`` (so ``torch.cuda.is_available()`` answers ``True`` inside);
  ``torch.tensor(..., device="cuda")`` (its copy happens below the dispatcher)
  becomes the host tensor and a pageable copy. Streams and events remember what was done to them
  (:attr:`FakeStream.waited_on`, :attr:`FakeEvent.stream`, :attr:`FakeCuda.recorded_streams`),
  so tests can check ordering;
- the package's caches of device tensors (``ff_lightning.augment._device.clear_device_caches``)
  are emptied on entry and on exit, so no fake tensor outlives the block in them. Objects you
  keep across blocks (a device stage's constants) are yours to rebuild.

Usage, for your own module::

    import torch
    from ff_lightning.testing.fake_cuda import FakeCuda, unavailable_reason

    if unavailable_reason() is None:
        with FakeCuda() as cuda:
            x = torch.empty(256, 3, 224, 224, dtype=torch.uint8, device="cuda")
            cuda.reset()                      # count from here
            y = my_device_transform(x)        # raises on a host read or a device mix
            assert y.device.type == "cuda" and y.dtype == torch.bfloat16
            assert cuda.counts.d2h == 0 and cuda.counts.h2d <= 4
            print(cuda.counts.device_ops, cuda.counts.top(5))

In pytest, skip where the running torch lacks fake tensors::

    pytestmark = pytest.mark.skipif(unavailable_reason() is not None,
                                    reason=str(unavailable_reason()))

Values are not computed on the device: a test under :class:`FakeCuda` checks syncs, devices,
dtypes, shapes and counts; values are checked by the CPU tests.
"""

from __future__ import annotations

import contextlib
import os
import traceback
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from torch.utils import _pytree as pytree

from ff_lightning.augment._device import clear_device_caches
from ff_lightning.testing.fake_runtime import (
    FakeEvent,
    FakeStream,
    device_of,
    patched,
    runtime_patches,
)

__all__ = [
    "FakeCuda",
    "FakeEvent",
    "FakeStream",
    "OpCounts",
    "Violation",
    "unavailable_reason",
]

try:  # pragma: no cover - exercised by whichever torch is installed
    from torch._subclasses.fake_tensor import (
        DataDependentOutputException,
        DynamicOutputShapeException,
        FakeTensor,
        FakeTensorMode,
    )
    from torch.utils._python_dispatch import TorchDispatchMode

    try:
        from torch._subclasses.fake_tensor import FakeTensorDeviceMismatchError
    except ImportError:  # older torch: a plain RuntimeError names the devices
        FakeTensorDeviceMismatchError = RuntimeError  # type: ignore[assignment,misc]
    _IMPORT_ERROR: str | None = None
except ImportError as err:  # pragma: no cover
    _IMPORT_ERROR = f"this torch ({torch.__version__}) has no fake tensors: {err}"
    TorchDispatchMode = object  # type: ignore[assignment,misc]

_REASON: list[str | None] = []  # the cached answer of `unavailable_reason`


def unavailable_reason() -> str | None:
    """Why :class:`FakeCuda` cannot run with this torch (``None``: it can). Checked once, with a
    fake ``cuda`` tensor and a host read that must raise."""
    if _REASON:
        return _REASON[0]
    reason = _IMPORT_ERROR
    if reason is None:
        try:
            mode = FakeTensorMode(allow_non_fake_inputs=True)
            with mode:
                t = torch.empty(2, device="cuda")
                if t.device.type != "cuda":
                    reason = f"fake tensors cannot be placed on cuda with torch {torch.__version__}"
                else:
                    try:
                        t.sum().item()
                        reason = "this torch's fake tensors let a host read through"
                    except DataDependentOutputException:
                        pass
        except Exception as err:  # noqa: BLE001 - any failure means "cannot run"
            reason = f"fake cuda tensors unavailable with torch {torch.__version__}: {err}"
    _REASON.append(reason)
    return reason


# ==================================================================== records
@dataclass
class OpCounts:
    """What the code under :class:`FakeCuda` asked of the device since the last reset.

    Attributes:
        device_ops: ops run on a device tensor, views and allocations excluded (an upper bound
            on kernel launches; copies to, from and on the device included).
        h2d: host-to-device copies; ``h2d_sync`` those of them that synchronise the host with
            the stream (from pageable memory, or with ``non_blocking=False``).
        d2h: device-to-host copies.
        allocations: device tensors allocated without a kernel (``empty`` and kin).
        drains: host waits for a stream (``Stream.synchronize``, ``Event.synchronize``,
            ``torch.cuda.synchronize``).
        by_op: ``device_ops`` by aten op name.
        by_site: ``device_ops`` by calling line (``FakeCuda(trace=True)`` only).
    """

    device_ops: int = 0
    h2d: int = 0
    h2d_sync: int = 0
    d2h: int = 0
    allocations: int = 0
    drains: int = 0
    by_op: Counter = field(default_factory=Counter)
    by_site: Counter = field(default_factory=Counter)

    def top(self, n: int = 10) -> list[tuple[str, int]]:
        """The ``n`` most frequent device ops."""
        return self.by_op.most_common(n)


@dataclass(frozen=True)
class Violation:
    """A host read of a device value or a host/device mix: ``kind`` (``"host_read"``,
    ``"dynamic_shape"``, ``"device_mix"``), the aten op, the message and the caller's line."""

    kind: str
    op: str
    message: str
    where: str


# ==================================================================== the harness
_ALLOCATIONS = {
    "aten::empty",
    "aten::empty_strided",
    "aten::empty_like",
    "aten::new_empty",
    "aten::new_empty_strided",
}
_COPIES = {"aten::_to_copy", "aten::copy_", "aten::copy"}


_THIS = os.path.abspath(__file__)


def _caller() -> str:
    """The innermost frame outside torch and this module, as ``file:line in function``."""
    for frame in reversed(traceback.extract_stack()[:-2]):
        name = frame.filename.replace("\\", "/")
        if "/torch/" not in name and os.path.abspath(frame.filename) != _THIS:
            return f"{frame.filename}:{frame.lineno} in {frame.name}"
    return "?"


class _Dispatch(TorchDispatchMode):  # type: ignore[misc,valid-type]
    """Sends device work to the fake mode, runs host work for real, counts device work."""

    def __init__(self, harness: FakeCuda) -> None:
        super().__init__()
        self.harness = harness

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        h = self.harness
        flat = pytree.arg_tree_leaves(*args, **kwargs)
        tensors = [a for a in flat if isinstance(a, Tensor)]
        target = device_of(kwargs.get("device"))
        on_device = any(isinstance(t, FakeTensor) for t in tensors) or (
            target is not None and target.type == "cuda"
        )
        if not on_device:
            return func(*args, **kwargs)  # host work: for real
        h._count(func, args, kwargs, tensors, target)
        if any(not isinstance(t, FakeTensor) for t in tensors):
            # Host operands become fake host tensors first: left real, the fake mode may run
            # the op on them for real (constant propagation), on a device that is not there.
            args, kwargs = pytree.tree_map_only(
                Tensor,
                lambda t: t if isinstance(t, FakeTensor) else h.fake.from_tensor(t),
                (args, kwargs),
            )
        try:
            with h.fake:
                return func(*args, **kwargs)
        except DataDependentOutputException as err:
            h._violate("host_read", func, err)
            raise
        except DynamicOutputShapeException as err:
            h._violate("dynamic_shape", func, err)
            raise
        except FakeTensorDeviceMismatchError as err:
            h._violate("device_mix", func, err)
            raise


class FakeCuda:
    """Fake ``cuda`` devices on a CPU-only machine, with counts (see the module docstring).

    Args:
        device_count: how many CUDA devices ``torch.cuda.device_count()`` reports.
        trace: also count device ops by calling line (:attr:`OpCounts.by_site`; slower),
            to find where a count comes from.

    Raises:
        RuntimeError: on entry, when :func:`unavailable_reason` gives a reason.
    """

    def __init__(self, device_count: int = 2, *, trace: bool = False) -> None:
        self.device_count = int(device_count)
        self.trace = bool(trace)
        self.counts = OpCounts()
        self.violations: list[Violation] = []
        self.events: list[FakeEvent] = []
        self.streams: dict[int, FakeStream] = {}  # default streams, by device index
        self.drains: list[str] = []  # what was drained, in order
        self.fake: Any = None
        self._current: dict[int, FakeStream] = {}
        self._device = 0
        self._pinned: dict[int, Any] = {}  # storage address -> storage (kept alive)
        self._stack: contextlib.ExitStack | None = None
        #: ``(shape, stream)`` of every ``Tensor.record_stream`` call
        self.recorded_streams: list[tuple[tuple[int, ...], Any]] = []

    # ---------------------------------------------------------------- public
    def reset(self) -> None:
        """Zero the counts (violations, events, drains and recorded streams too): count from
        here."""
        self.counts = OpCounts()
        self.violations.clear()
        self.events.clear()
        self.drains.clear()
        self.recorded_streams.clear()

    @contextlib.contextmanager
    def uncounted(self) -> Iterator[None]:
        """Run set-up code without counting it (violations are still recorded)."""
        saved = self.counts
        self.counts = OpCounts()
        try:
            yield
        finally:
            self.counts = saved

    def device(self, index: int | None = None) -> torch.device:
        """``cuda:index`` (default: the current device)."""
        return torch.device("cuda", self._device if index is None else index)

    def current_stream(self, device: Any = None) -> FakeStream:
        """The current stream of ``device`` (default: the current device)."""
        index = self._index(device)
        if index not in self._current:
            self._current[index] = self.default_stream(index)
        return self._current[index]

    def default_stream(self, device: Any = None) -> FakeStream:
        index = self._index(device)
        if index not in self.streams:
            self.streams[index] = FakeStream(self, torch.device("cuda", index), "default")
        return self.streams[index]

    # ---------------------------------------------------------------- context
    def __enter__(self) -> FakeCuda:
        reason = unavailable_reason()
        if reason is not None:
            raise RuntimeError(f"FakeCuda cannot run here: {reason}")
        self.fake = FakeTensorMode(allow_non_fake_inputs=True)
        stack = contextlib.ExitStack()
        # The package keeps small constants per device name ("cuda:0"): none may cross
        # between real and fake devices, so those caches are emptied on entry and exit.
        clear_device_caches()
        stack.callback(clear_device_caches)
        self.recorded_streams.clear()
        for owner, name, value in runtime_patches(self):
            stack.enter_context(patched(owner, name, value))
        stack.enter_context(_Dispatch(self))
        self._stack = stack
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._stack is not None
        self._stack.close()
        self._stack = None

    # ---------------------------------------------------------------- internals
    def _index(self, device: Any) -> int:
        if device is None:
            return self._device
        if isinstance(device, int):
            return device
        dev = torch.device(device)
        return self._device if dev.index is None else int(dev.index)

    def _drain(self, what: str) -> None:
        self.counts.drains += 1
        self.drains.append(f"{what} at {_caller()}")

    def _violate(self, kind: str, func: Any, err: BaseException) -> None:
        self.violations.append(Violation(kind, str(func), str(err).splitlines()[0], _caller()))

    def _is_pinned(self, t: Tensor) -> bool:
        return (
            not isinstance(t, FakeTensor)
            and t.device.type == "cpu"
            and t.untyped_storage().data_ptr() in self._pinned
        )

    def _count(self, func: Any, args: tuple, kwargs: dict, tensors: list, target: Any) -> None:
        c = self.counts
        name = func._schema.name
        if (
            getattr(func, "is_view", False)
            or not name.startswith("aten::")  # prim::device and kin: metadata, no kernel
            or name in ("aten::record_stream", "aten::detach")
        ):
            return
        if name in _ALLOCATIONS:
            c.allocations += 1
            return
        if name in _COPIES and tensors:
            if name == "aten::_to_copy":
                src, dst_dev = tensors[0], target or tensors[0].device
                blocking = not kwargs.get("non_blocking", False)
            else:  # copy_(dst, src, non_blocking)
                src, dst_dev = args[1], args[0].device
                blocking = not (args[2] if len(args) > 2 else kwargs.get("non_blocking", False))
            if src.device.type == "cpu" and dst_dev.type == "cuda":
                c.h2d += 1
                if blocking or not self._is_pinned(src):
                    c.h2d_sync += 1
            elif src.device.type == "cuda" and dst_dev.type == "cpu":
                c.d2h += 1
        c.device_ops += 1
        c.by_op[name.removeprefix("aten::")] += 1
        if self.trace:
            c.by_site[_caller()] += 1
