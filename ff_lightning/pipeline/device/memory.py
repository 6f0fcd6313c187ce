"""The memory guard: run device augmentation in chunks that fit, never skip a sample.

Budget = the device's free memory (GPU-wide, from the probe) + what PyTorch holds reserved
but unallocated - a reserve. Chunk size = budget / per-sample working memory.

**Measuring per-sample memory without touching the user's statistics.** The guard never calls
``torch.cuda.reset_peak_memory_stats``: the peak belongs to the user (and to their loggers).
On the first ``measure_chunks`` chunks it reads the allocator's current and peak bytes before
the chunk and the peak after it (host-side counters; no CUDA synchronisation):

- when the peak rose during the chunk, the chunk itself set it, so its working memory is
  exactly ``peak_after - allocated_before``;
- when it did not rise, an earlier peak (typically training's own forward/backward) hides the
  chunk's: all we know is ``peak_before - allocated_before``, an upper bound. Then the guard
  takes the smaller of that bound and the conservative estimate it starts from
  (``estimate_factor`` x the bytes of one float32 copy of a sample), and ignores the reading
  once an exact one exists.

The limit: after training has set a peak above augmentation's, later chunks cannot be measured
exactly any more, so the guard relies on the first calls (which run before the first
``training_step``) and, failing those, on the estimate; an out-of-memory error still corrects
an estimate that was too low.

**Out of memory.** Halve the chunk and retry; the first retry keeps PyTorch's cached blocks
(``empty_cache`` would drop training's pool and make later steps call ``cudaMalloc`` again);
only when the halved retry also fails is the cache emptied before the next try. When even
``min_chunk`` samples do not fit, the rest of the batch is augmented on the CPU by
``cpu_fallback`` and :attr:`MemoryGuard.ratio_cap` suggests a ratio cap for the controller.
The size that fitted becomes a ceiling for later calls; after ``recover_after`` calls in a row
without an OOM the ceiling doubles (until it no longer binds), and a regrown ceiling that fails
again doubles the wait before the next try.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import torch

from ff_lightning.pipeline.device.probes import MemoryProbe

__all__ = ["MemoryGuard"]

Augment = Callable[[torch.Tensor, Any], torch.Tensor]

_MAX_PATIENCE_FACTOR = 64  # a ceiling that keeps failing is retried at most every 64 x K calls


def _index(params: Any, start: int, stop: int) -> Any:
    """``params[start:stop]`` through an index tensor made on the params' device (a host index
    copied to the device would be a pageable copy, which synchronises)."""
    dev = getattr(params, "device", None)
    return params[torch.arange(start, stop, device=dev)]


def _cuda_empty_cache() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


class MemoryGuard:
    """Chunks device augmentation to the memory budget, with OOM recovery and CPU fallback.

    Args:
        probe: a :class:`~ff_lightning.pipeline.device.probes.MemoryProbe`.
        reserve_mb: memory left untouched for training, MiB.
        min_chunk: smallest chunk tried on the device; below it samples go to the CPU.
        max_chunk: largest chunk (``None``: the batch, when the budget allows).
        logger: where OOM events are logged (default: the ``ff_lightning`` logger).
        oom_errors: exception classes treated as out-of-memory.
        estimate_factor: before (or without) an exact measurement, per-sample memory is assumed
            to be this many times the bytes of one float32 copy of a sample.
        measure_chunks: how many chunks, from the first call on, are measured (reading the
            allocator's counters around them); later chunks only read the budget.
        recover_after: calls in a row without an OOM after which a ceiling set by an OOM
            doubles.
        empty_cache: frees the allocator's cached blocks (default: ``torch.cuda.empty_cache``
            when CUDA is initialised); called only when a halved retry fails as well.
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
        measure_chunks: int = 4,
        recover_after: int = 20,
        empty_cache: Callable[[], None] | None = None,
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
        if not isinstance(measure_chunks, int) or measure_chunks < 0:
            raise ValueError(f"`measure_chunks` must be a non-negative int, got {measure_chunks!r}")
        if not isinstance(recover_after, int) or recover_after < 1:
            raise ValueError(f"`recover_after` must be a positive int, got {recover_after!r}")
        self.probe = probe
        self.reserve_bytes = int(reserve_mb * (1 << 20))
        self.min_chunk = min_chunk
        self.max_chunk = max_chunk
        self.oom_errors = tuple(oom_errors)
        self.estimate_factor = float(estimate_factor)
        self.measure_chunks = measure_chunks
        self.recover_after = recover_after
        self.logger = logger or logging.getLogger("ff_lightning")
        self._empty_cache_fn = empty_cache or _cuda_empty_cache
        self.per_sample_bytes: float | None = None  # working memory per sample (see module doc)
        self.per_sample_exact = False  # whether per_sample_bytes comes from a risen peak
        self.measured_chunks = 0
        self.oom_events = 0
        self.cache_flushes = 0  # empty_cache calls (only after a failed halved retry)
        self.cpu_fallback_samples = 0
        self.last_chunk: int | None = None
        self.ratio_cap: float | None = None  # suggested cap for Controller.set_memory_cap
        self.events: list[dict[str, Any]] = []
        self._ceiling: int | None = None  # largest chunk known to fit after an OOM
        self._clean_calls = 0  # calls in a row without an OOM
        self._patience = recover_after  # clean calls before the ceiling doubles
        self._grown_from: int | None = None  # the ceiling before its last doubling, until tested
        self._largest_n = 0  # most samples seen in one call

    @property
    def ceiling(self) -> int | None:
        """The chunk size an OOM limited the guard to (``None``: no such limit)."""
        return self._ceiling

    def budget_bytes(self) -> int | None:
        """Bytes augmentation may use now; ``None`` when the probe cannot tell (no bound)."""
        free = self.probe.free_bytes()
        if free is None:
            return None
        cached = max(self.probe.reserved_bytes() - self.probe.allocated_bytes(), 0)
        return max(free + cached - self.reserve_bytes, 0)

    def chunk_size(self, n: int, sample_bytes_hint: int) -> int:
        """Samples per chunk for ``n`` samples: ``budget / per-sample``, clamped to
        ``[min_chunk, n]``, ``max_chunk`` and the ceiling an OOM set."""
        if n <= 0:
            return 0
        limit = n
        for cap in (self.max_chunk, self._ceiling):
            if cap is not None:
                limit = min(limit, cap)
        budget = self.budget_bytes()
        if budget is None:
            return max(limit, 1)
        per = self.per_sample_bytes or self._estimate(sample_bytes_hint)
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
            fn: the device augmentation; returns a tensor shaped and typed like its input and
                must not modify its input (a chunk that runs out of memory is retried).
            images: ``[n, ...]`` samples routed to the device.
            params: per-sample parameters, indexable by an index tensor (``params[idx]``) and
                movable (``.to(device)``) for the CPU fallback.
            cpu_fallback: ``fallback(images_cpu, params_cpu)`` for samples that do not fit
                even one chunk of ``min_chunk``; its result is copied into the output.
            total: the full batch size (both routes), so that :attr:`ratio_cap` is a share
                of the whole batch (default: ``n``).
            out: where to write the result (default: ``fn``'s own result when one chunk takes
                every sample, else a new tensor like ``images``, or ``images`` itself when
                even that allocation runs out of memory); it may be ``images`` itself: each
                chunk is read before it is written.
            sample_bytes_hint: bytes of one sample for the estimate (default: one float32
                copy of a sample).
        """
        n = int(images.shape[0])
        if n == 0:
            return torch.empty_like(images) if out is None else out
        self._largest_n = max(self._largest_n, n)
        # The output buffer is allocated only once a second chunk is needed: a batch that
        # fits in one chunk (the usual case) returns fn's result as it is, with no second
        # batch-sized buffer and no copy into it.
        given = out is not None
        hint = sample_bytes_hint or images[0].numel() * 4
        had_oom = self.oom_events
        start, chunk = 0, self.chunk_size(n, hint)
        failures = 0  # OOMs in a row: the cache is emptied from the second on
        while start < n:
            size = min(chunk, n - start)
            stop = start + size
            oom: BaseException | None = None
            try:
                measure = self.measured_chunks < self.measure_chunks
                if measure:  # host-side allocator counters: no synchronisation
                    base = self.probe.allocated_bytes()
                    peak_before = self.probe.peak_allocated_bytes()
                sub = params if size == n else _index(params, start, stop)
                result = fn(images[start:stop], sub)
                if size == n and not given:
                    out = result
                else:
                    if out is None:
                        out = self._allocate_out(images)
                    out[start:stop] = result
                del result
                if measure:
                    self._measure(base, peak_before, self.probe.peak_allocated_bytes(), size, hint)
            except self.oom_errors as err:
                oom = err
            if oom is None:
                failures = 0
                self.last_chunk = size
                if self._grown_from is not None and size > self._grown_from:
                    self._grown_from = None  # the regrown ceiling held
                start = stop
                chunk = self.chunk_size(n - start, hint) if start < n else chunk
                continue
            msg = f"{type(oom).__name__}: {str(oom).splitlines()[0] if str(oom) else ''}"
            del oom  # drop the traceback's references to the failed chunk's tensors
            self.oom_events += 1
            failures += 1
            self._after_oom(size)
            if failures >= 2:
                # The halved retry failed too: return the cached blocks to the driver before
                # the next try. Not at the first OOM, which keeps training's cached pool.
                self._empty_cache_fn()
                self.cache_flushes += 1
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
            if out is None:
                out = self._allocate_out(images)
            self._fallback(cpu_fallback, images, params, start, out, total or n, msg)
            break
        self._count_call(clean=self.oom_events == had_oom)
        assert out is not None
        return out

    def state(self) -> dict[str, Any]:
        """Counters, for logging."""
        return {
            "oom_events": self.oom_events,
            "cache_flushes": self.cache_flushes,
            "cpu_fallback_samples": self.cpu_fallback_samples,
            "last_chunk": self.last_chunk,
            "ceiling": self._ceiling,
            "per_sample_bytes": self.per_sample_bytes,
            "per_sample_exact": self.per_sample_exact,
            "ratio_cap": self.ratio_cap,
        }

    # ------------------------------------------------------------------ internals
    def _estimate(self, sample_bytes_hint: int) -> float:
        """The conservative per-sample figure used until (or instead of) a measurement."""
        return self.estimate_factor * max(sample_bytes_hint, 1)

    def _measure(self, base: int, peak_before: int, peak_after: int, size: int, hint: int) -> None:
        """Per-sample working memory from the allocator's counters around one chunk."""
        self.measured_chunks += 1
        if size <= 0:
            return
        if peak_after > peak_before:
            # The chunk set a new peak: its working memory is exactly peak - allocated before.
            per = max(peak_after - base, 0) / size
            if not self.per_sample_exact:
                self.per_sample_bytes, self.per_sample_exact = per, True
            else:
                self.per_sample_bytes = max(self.per_sample_bytes or 0.0, per)
        elif not self.per_sample_exact:
            # An earlier, higher peak hides the chunk's: only an upper bound is known.
            bound = max(peak_before - base, 0) / size
            per = min(bound, self._estimate(hint)) if bound > 0 else self._estimate(hint)
            self.per_sample_bytes = max(self.per_sample_bytes or 0.0, per)

    def _allocate_out(self, images: torch.Tensor) -> torch.Tensor:
        try:
            return torch.empty_like(images)
        except self.oom_errors as err:
            self.oom_events += 1
            self.events.append({"kind": "oom_output", "samples": int(images.shape[0])})
            self.logger.warning(
                "ff_lightning: out of memory allocating the augmented batch (%s: %s); writing "
                "the result over the device-routed input instead",
                type(err).__name__,
                str(err).splitlines()[0] if str(err) else "",
            )
            return images

    def _after_oom(self, size: int) -> None:
        if self._grown_from is not None and size > self._grown_from:
            # The ceiling was raised and the larger chunk failed: wait longer next time.
            self._patience = min(self._patience * 2, self.recover_after * _MAX_PATIENCE_FACTOR)
            self._grown_from = None

    def _count_call(self, *, clean: bool) -> None:
        """Let a ceiling set by an OOM grow back after ``patience`` clean calls in a row."""
        if not clean:
            self._clean_calls = 0
            return
        self._clean_calls += 1
        if self._ceiling is None or self._clean_calls < self._patience:
            return
        self._clean_calls = 0
        old, new = self._ceiling, self._ceiling * 2
        self._grown_from = old
        limit = self._largest_n if self.max_chunk is None else min(self._largest_n, self.max_chunk)
        self._ceiling = None if new >= limit else new
        self.events.append({"kind": "grow", "from": old, "to": self._ceiling})
        self.logger.info(
            "ff_lightning: %d calls without running out of memory; raising the chunk ceiling "
            "from %d to %s",
            self._patience,
            old,
            "the memory budget" if self._ceiling is None else self._ceiling,
        )

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
        sub = params if start == 0 else _index(params, start, n)
        sub = sub.to("cpu") if hasattr(sub, "to") else sub
        result = cpu_fallback(images[start:].to("cpu"), sub)
        # copy_ writes straight into the output: no temporary device copy of the result, which
        # would need the memory that just ran out (a synchronising copy, on this rare path).
        out[start:].copy_(result)
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
