"""A rich progress display for the benchmark: one task over the runs, one over each run's steps."""

from __future__ import annotations

import logging
import sys
from types import TracebackType
from typing import Any

import lightning as L
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class StepProgress(L.Callback):
    """Advances one progress task per training step."""

    def __init__(self, progress: Progress, task: TaskID) -> None:
        self.progress = progress
        self.task = task

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        self.progress.advance(self.task)


class BenchProgress:
    """Context manager around a rich :class:`~rich.progress.Progress` for ``total_runs`` runs.

    While it is live on a terminal, rich redirects ``sys.stdout``/``sys.stderr`` so prints
    appear above the bars; logging handlers that write to the original streams are pointed at
    the redirected ones for that time, so log lines do not tear the display. Off a terminal
    rich draws nothing while live, and ``enabled=False`` turns the display off entirely.
    """

    def __init__(
        self, total_runs: int, *, enabled: bool = True, console: Console | None = None
    ) -> None:
        self.enabled = enabled
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
            console=console,
            refresh_per_second=4,  # low: the refresh thread shares the CPUs being measured
        )
        self.total_runs = total_runs
        self._overall: TaskID | None = None
        self._run: TaskID | None = None
        self._swapped: list[tuple[logging.StreamHandler, Any]] = []

    def __enter__(self) -> BenchProgress:
        if not self.enabled:
            return self
        before = (sys.stdout, sys.stderr)
        self.progress.start()
        self._overall = self.progress.add_task("benchmark", total=self.total_runs, info="")
        after = (sys.stdout, sys.stderr)
        if after != before:  # rich redirected the streams (it does so on a terminal only)
            targets = {
                id(sys.__stdout__): after[0],
                id(sys.__stderr__): after[1],
                id(before[0]): after[0],
                id(before[1]): after[1],
            }
            for handler in _stream_handlers():
                target = targets.get(id(handler.stream))
                if target is not None and target is not handler.stream:
                    self._swapped.append((handler, handler.setStream(target)))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for handler, stream in reversed(self._swapped):
            handler.setStream(stream)
        self._swapped.clear()
        if self.enabled:
            self.progress.stop()

    def start_run(self, description: str, steps: int) -> list[L.Callback]:
        """A new step task for one run; returns the callbacks to add to its Trainer."""
        if not self.enabled:
            return []
        if self._run is not None:
            self.progress.remove_task(self._run)
        self._run = self.progress.add_task(description, total=steps, info="")
        return [StepProgress(self.progress, self._run)]

    def end_run(self, info: str) -> None:
        """Count one run done and show ``info`` (its result) on the overall task."""
        if self.enabled and self._overall is not None:
            self.progress.advance(self._overall)
            self.progress.update(self._overall, info=info)


def _stream_handlers() -> list[logging.StreamHandler]:
    loggers = [logging.getLogger()] + [
        lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger)
    ]
    seen: dict[int, logging.StreamHandler] = {}
    for lg in loggers:
        for h in lg.handlers:
            if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler):
                seen.setdefault(id(h), h)
    return list(seen.values())
