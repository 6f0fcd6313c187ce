"""The controller's resumable state: :meth:`~Checkpoint.state_dict` and
:meth:`~Checkpoint.load_state_dict`, mixed into :class:`~ff_lightning.control.controller.Controller`.

Version 2 nests the search state under ``"search"``; version 1 kept its keys at the top level
and the estimates as a partial dict, and still loads.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ff_lightning.control.estimator import Estimator
from ff_lightning.control.records import Decision
from ff_lightning.control.search import Search
from ff_lightning.control.workers import WorkerSearch

__all__ = ["STATE_VERSION", "Checkpoint"]

STATE_VERSION = 2  # of state_dict; 1: the search state flat, estimates as a partial dict


class Checkpoint:
    """``state_dict`` / ``load_state_dict`` of the controller, mixed into it."""

    # Set by the controller: configuration ...
    mode: str
    min_ratio: float
    max_step: float
    objective: str
    tolerance: float
    # ... the state it saves ...
    history: list[Decision]
    _ratio: float
    _fixed: float
    _cap: float
    _decisions: int
    _search: Search
    _est: Estimator
    _workers: WorkerSearch
    _workers_configured: bool
    # ... and the helpers it calls (defined by the controller).
    _mark_change: Callable[[], None]
    _reset_search: Callable[[], None]
    _quantise: Callable[..., float]

    def state_dict(self) -> dict[str, Any]:
        """Plain-Python state: ratio, search state, cost estimates, memory cap, history."""
        return {
            "version": STATE_VERSION,
            "mode": self.mode,
            "ratio": self._ratio,
            "memory_cap": self._cap,
            "decisions": self._decisions,
            "search": self._search.state_dict(),
            "estimates": self._est.state_dict(),
            "history": [d.to_dict() for d in self.history],
            "objective": self.objective,
            "workers": self._workers.state_dict() if self._workers_configured else None,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` (or a version-1 state): the controller continues from
        the saved ratio and best point. A state saved under another mode restores only the
        history and memory cap."""
        self.history = [Decision.from_dict(d) for d in state.get("history", [])]
        self._decisions = int(state.get("decisions", len(self.history)))
        self._cap = float(state.get("memory_cap", 1.0))
        self._mark_change()
        self._reset_search()
        if state.get("mode") != self.mode or self.mode != "auto":
            self._ratio = self._fixed if self.mode != "auto" else self._quantise(self.min_ratio)
            return
        self._ratio = float(state["ratio"])
        flat = int(state.get("version", 1)) < 2  # version 1: the search keys at top level
        self._search = Search.from_state(state if flat else state["search"], self.max_step)
        self._est = Estimator.from_state(state.get("estimates", {}))
        saved = state.get("workers")
        if self.objective == "cpu" and state.get("objective") == "cpu" and saved:
            ws = WorkerSearch.from_state(saved, self.tolerance)
            if not self._workers_configured or ws.max_workers == self._workers.max_workers:
                self._workers, self._workers_configured = ws, True
            # else: the configured count changed since the checkpoint: search afresh
