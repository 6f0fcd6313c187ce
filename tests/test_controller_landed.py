"""The composed controller decides exactly as the landed one did, and loads its checkpoints.

``data/controller_landed.json`` was written by the controller of release 0.1.0 (commit d8e1281,
the mixin-based class) driving the simulator below: for each case, the full decision history,
the state dict after three epochs and the final state dict.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ff_lightning.control.controller import Controller
from ff_lightning.testing.simulator import SimulatedPipeline, run_epochs

LANDED = json.loads((Path(__file__).parent / "data" / "controller_landed.json").read_text())

CASES = {
    "cpu_bound": dict(costs=(0.004, 0.0015, 0.05, 0.0005), workers=4, objective="cpu", memory=None),
    "balanced": dict(
        costs=(0.002, 0.001, 0.08, 0.0002), workers=4, objective="throughput", memory=0.5
    ),
    "loader_bound_capped": dict(
        costs=(0.006, 0.0005, 0.03, 0.0002), workers=2, objective="throughput", memory=0.2
    ),
    "loader_bound_cpu": dict(
        costs=(0.006, 0.0005, 0.03, 0.0002), workers=4, objective="cpu", memory=None
    ),
    "device_bound": dict(
        costs=(0.001, 0.003, 0.15, 0.0001), workers=2, objective="throughput", memory=None
    ),
}


def _pipeline(case: dict) -> SimulatedPipeline:
    cpu, dev, comp, load = case["costs"]
    return SimulatedPipeline(
        cpu,
        dev,
        comp,
        batch_size=64,
        num_workers=case["workers"],
        noise=0.05,
        seed=7,
        loader_cost=load,
    )


def _roundtrip(obj):  # noqa: ANN001, ANN202
    return json.loads(json.dumps(obj, sort_keys=True))


@pytest.mark.parametrize("name", sorted(CASES))
def test_decisions_match_the_landed_controller(name: str) -> None:
    case, landed = CASES[name], LANDED[name]
    pipe = _pipeline(case)
    ctl = Controller("auto", objective=case["objective"], warmup_steps=2)
    run_epochs(ctl, pipe, steps_per_decision=12, decisions_per_epoch=3, epochs=3)
    assert _roundtrip(ctl.state_dict()) == landed["state_after_3_epochs"]
    if case["memory"] is not None:
        ctl.set_memory_cap(case["memory"])
    run_epochs(ctl, pipe, steps_per_decision=12, decisions_per_epoch=3, epochs=3)
    assert _roundtrip([d.to_dict() for d in ctl.history]) == landed["history"]
    assert _roundtrip(ctl.state_dict()) == landed["final_state"]


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_landed_checkpoint_loads_and_continues(name: str) -> None:
    case, landed = CASES[name], LANDED[name]
    restored = Controller("auto", objective=case["objective"], warmup_steps=2)
    restored.configure_workers(case["workers"])
    restored.load_state_dict(landed["state_after_3_epochs"])
    assert _roundtrip(restored.state_dict()) == landed["state_after_3_epochs"]
    assert restored.ratio == pytest.approx(landed["state_after_3_epochs"]["ratio"])
