"""Tests for the auto search state."""

from __future__ import annotations

import json

import pytest

from ff_lightning.control.search import HoldRef, Phase, Point, Search


def test_a_fresh_search_measures_the_baseline_with_full_steps():
    s = Search.start(0.1)
    assert s.phase is Phase.BASELINE and s.best is None and s.baseline is None
    assert s.steps == {1: 0.1, -1: 0.1} and s.done == set() and s.direction == 1


def test_new_climb_resets_steps_and_directions_only():
    s = Search.start(0.2)
    s.best, s.steps, s.done, s.model_jumps = Point(0.3, 900.0, 0.01), {1: 0.05, -1: 0.025}, {1}, 2
    s.new_climb(0.2, first=-1)
    assert s.steps == {1: 0.2, -1: 0.2} and s.done == set() and s.next_direction == -1
    assert s.best == Point(0.3, 900.0, 0.01) and s.model_jumps == 2


def test_state_round_trip_is_plain_python():
    s = Search(
        steps={1: 0.1, -1: 0.025},
        phase=Phase.HOLD,
        best=Point(0.671875, 1516.6, 0.01),
        baseline=500.0,
        baseline_fresh=True,
        done={1, -1},
        direction=-1,
        next_direction=1,
        last_move="revert",
        model_jumps=2,
        hold_ref=HoldRef(1516.6, 3, 0.671875),
    )
    state = s.state_dict()
    assert state["phase"] == "hold"  # the enum by its value
    assert state["done"] == [-1, 1] and state["steps"] == [0.1, 0.025]
    restored = Search.from_state(json.loads(json.dumps(state)), max_step=0.1)
    assert restored == s
    assert restored.best.throughput == 1516.6 and restored.hold_ref.count == 3


@pytest.mark.parametrize("phase", list(Phase))
def test_every_phase_survives_a_checkpoint(phase):
    s = Search.start(0.1)
    s.phase = phase
    assert Search.from_state(json.loads(json.dumps(s.state_dict())), 0.1).phase is phase


def test_unknown_phase_is_rejected():
    with pytest.raises(ValueError, match="'sprint' is not a valid Phase"):
        Search.from_state({"phase": "sprint"}, 0.1)


def test_version_1_flat_keys_load_with_defaults():
    v1 = {"version": 1, "mode": "auto", "ratio": 0.3, "phase": "climb", "best": [0.3, 700.0, 0.0]}
    s = Search.from_state(v1, max_step=0.1)
    assert s.phase is Phase.CLIMB and s.best == Point(0.3, 700.0, 0.0)
    assert s.steps == {1: 0.1, -1: 0.1} and s.hold_ref is None and s.model_jumps == 0
