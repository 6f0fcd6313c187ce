"""The memory guard: run device augmentation in chunks that fit, never skip a sample.

Budget = the device's free memory (GPU-wide, from the probe) + what PyTorch holds reserved
but unallocated - a reserve. Chunk size = budget / per-sample working memory, measured from
the allocator's peak on the chunks run so far (a conservative estimate from the input size
before that). On an out-of-memory error: empty the cache, halve the chunk, retry; when even
the smallest chunk does not fit, the rest of the batch is augmented on the CPU by
``cpu_fallback`` and :attr:`MemoryGuard.ratio_cap` suggests a ratio cap for the controller.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import torch

from ff_lightning.device.probes import MemoryProbe

__all__ = ["MemoryGuard"]

Augment = Callable[[torch.Tensor, Any], torch.Tensor]


def _index(params: Any, idx: torch.Tensor) -> Any:
    """``params[idx]`` with the index on the params' device when they have one."""
    dev = getattr(params, "device", None)
    return params[idx.to(dev) if dev is not None else idx]


class MemoryGuard:
    """Chunks device augmentation to the memory budget, with OOM recovery and CPU fallback.

    Args:
        probe: a :class:`~ff_lightning.device.probes.MemoryProbe`.
        reserve_mb: memory left untouched for training, MiB.
        min_chunk: smallest chunk tried on the device; below it samples go to the CPU.
        max_chunk: largest chunk (``None``: the batch, when the budget allows).
        logger: where OOM events are logged (default: the ``ff_lightning`` logger).
        oom_errors: exception classes treated as out-of-memory.
        estimate_factor: before a measurement, per-sample memory is assumed to be this many
            times the bytes of one float32 copy of a sample.
    """

    def __init__(
        self,
        probe: MemoryProbe,
        reserve_mb: float = 1024,
        min_chunk: int = 1,
        max_chunk: int | None = None,
        logger: logging.Logger | None = None,
        *,
        oom_errors: tuple[type[BaseException], ...] = (torch.cuda.OutOfMemoryError,),
        estimate_factor: float = 8.0,
    ) -> None:
        if reserve_mb < 0:
            raise ValueError(f"`reserve_mb` must be non-negative, got {reserve_mb!r}")
        if not isinstance(min_chunk, int) or min_chunk < 1:
            raise ValueError(f"`min_chunk` must be a positive int, got {min_chunk!r}")
        if max_chunk is not None and (not isinstance(max_chunk, int) or max_chunk < min_chunk):
            raise ValueError(
                f"`max_chunk` must be None or an int >= min_chunk={min_chunk}, got {max_chunk!r}"
            )
        if not oom_errors:
            raise ValueError("`oom_errors` must name at least one exception class")
        if estimate_factor <= 0:
            raise ValueError(f"`estimate_factor` must be positive, got {estimate_factor!r}")
        self.probe = probe
        self.reserve_bytes = int(reserve_mb * (1 << 20))
        self.min_chunk = min_chunk
        self.max_chunk = max_chunk
        self.oom_errors = tuple(oom_errors)
        self.estimate_factor = float(estimate_factor)
        self.logger = logger or logging.getLogger("ff_lightning")
        self.per_sample_bytes: float | None = None  # measured working memory per sample
        self.oom_events = 0
        self.cpu_fallback_samples = 0
        self.last_chunk: int | None = None
        self.ratio_cap: float | None = None  # suggested cap for Controller.set_memory_cap
        self.events: list[dict[str, Any]] = []
        self._ceiling: int | None = None  # largest chunk known to fit after an OOM

    def budget_bytes(self) -> int | None:
        """Bytes augmentation may use now; ``None`` when the probe cannot tell (no bound)."""
        free = self.probe.free_bytes()
        if free is None:
            return None
        cached = max(self.probe.reserved_bytes() - self.probe.allocated_bytes(), 0)
        return max(free + cached - self.reserve_bytes, 0)

    def chunk_size(self, n: int, sample_bytes_hint: int) -> int:
        """Samples per chunk for ``n`` samples: ``budget / per-sample``, clamped to
        ``[min_chunk, n]``, ``max_chunk`` and the size last known to fit after an OOM."""
        if n <= 0:
            return 0
        limit = n
        for cap in (self.max_chunk, self._ceiling):
            if cap is not None:
                limit = min(limit, cap)
        budget = self.budget_bytes()
        if budget is None:
            return max(limit, 1)
        per = self.per_sample_bytes or self.estimate_factor * max(sample_bytes_hint, 1)
        fits = math.floor(budget / per) if per > 0 else limit
        return max(min(fits, limit), min(self.min_chunk, n))

    def run(
        self,
        fn: Augment,
        images: torch.Tensor,
        params: Any,
        cpu_fallback: Augment,
        *,
        total: int | None = None,
        out: torch.Tensor | None = None,
        sample_bytes_hint: int | None = None,
    ) -> torch.Tensor:
        """Apply ``fn(images_chunk, params_chunk)`` chunk by chunk; every sample is augmented.

        Args:
            fn: the device augmentation; returns a tensor shaped and typed like its input.
            images: ``[n, ...]`` samples routed to the device.
            params: per-sample parameters, indexable by an index tensor (``params[idx]``) and
                movable (``.to(device)``) for the CPU fallback.
            cpu_fallback: ``fallback(images_cpu, params_cpu)`` for samples that do not fit
                even one chunk of ``min_chunk``; its result is moved back to the device.
            total: the full batch size (both routes), so that :attr:`ratio_cap` is a share
                of the whole batch (default: ``n``).
            out: where to write the result (default: a new tensor like ``images``); it may be
                ``images`` itself: each chunk is read before it is written.
            sample_bytes_hint: bytes of one sample for the first estimate (default: one
                float32 copy of a sample).
        """
        n = int(images.shape[0])
        if out is None:
            out = torch.empty_like(images)
        if n == 0:
            return out
        hint = sample_bytes_hint or images[0].numel() * 4
        start, chunk = 0, self.chunk_size(n, hint)
        while start < n:
            size = min(chunk, n - start)
            stop = start + size
            oom: BaseException | None = None
            try:
                self.probe.reset_peak()
                base = self.probe.allocated_bytes()
                sub = params if size == n else _index(params, torch.arange(start, stop))
                out[start:stop] = fn(images[start:stop], sub)
                self._measure(self.probe.peak_allocated_bytes() - base, size)
            except self.oom_errors as err:
                oom = err
            if oom is None:
                self.last_chunk = size
                start = stop
                chunk = self.chunk_size(n - start, hint) if start < n else chunk
                continue
            msg = f"{type(oom).__name__}: {str(oom).splitlines()[0] if str(oom) else ''}"
            del oom  # drop the traceback's references to the failed chunk's tensors
            self._empty_cache()
            self.oom_events += 1
            half = size // 2
            if half >= self.min_chunk:
                self._ceiling = half
                chunk = half
                self.events.append({"kind": "oom", "chunk": size, "retry": half, "at": start})
                self.logger.warning(
                    "ff_lightning: out of memory augmenting a chunk of %d samples on the "
                    "device (%s); retrying with chunks of %d",
                    size,
                    msg,
                    half,
                )
                continue
            self._fallback(cpu_fallback, images, params, start, out, total or n, msg)
            break
        return out

    def state(self) -> dict[str, Any]:
        """Counters, for logging."""
        return {
            "oom_events": self.oom_events,
            "cpu_fallback_samples": self.cpu_fallback_samples,
            "last_chunk": self.last_chunk,
            "per_sample_bytes": self.per_sample_bytes,
            "ratio_cap": self.ratio_cap,
        }

    # ------------------------------------------------------------------ internals
    def _measure(self, peak_delta: int, size: int) -> None:
        """Per-sample working memory: the largest peak delta per sample seen so far."""
        if peak_delta > 0 and size > 0:
            per = peak_delta / size
            self.per_sample_bytes = max(self.per_sample_bytes or 0.0, per)

    def _empty_cache(self) -> None:
        # Return the failed chunk's cached blocks to the driver before retrying.
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.empty_cache()

    def _fallback(
        self,
        cpu_fallback: Augment,
        images: torch.Tensor,
        params: Any,
        start: int,
        out: torch.Tensor,
        total: int,
        msg: str,
    ) -> None:
        n = int(images.shape[0])
        rest = n - start
        idx = torch.arange(start, n)
        sub = params if start == 0 else _index(params, idx)
        sub = sub.to("cpu") if hasattr(sub, "to") else sub
        result = cpu_fallback(images[start:].to("cpu"), sub)
        out[start:] = result.to(out.device)
        self.cpu_fallback_samples += rest
        cap = start / max(total, 1)
        self.ratio_cap = cap if self.ratio_cap is None else min(self.ratio_cap, cap)
        self.events.append(
            {"kind": "cpu_fallback", "samples": rest, "at": start, "ratio_cap": self.ratio_cap}
        )
        self.logger.warning(
            "ff_lightning: out of memory even for %d sample(s) on the device (%s); augmented "
            "%d of %d samples on the CPU instead; suggesting a ratio cap of %.3f",
            self.min_chunk,
            msg,
            rest,
            n,
            self.ratio_cap,
        )
