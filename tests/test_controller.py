"""Tests for the offload controller, run against the simulated loader/device pipeline.

How decisions are counted: the controller starts at r=0 and measures the CPU-only baseline
during the first window. Decision 1 is the ``decide()`` call at the end of that first window;
decision k is the k-th ``decide()`` call, and the ratio it returns is in effect during window
k+1. "Reaches within 5% in at most 5 decisions" means: for some k <= 5, the noise-free
steady-state throughput of the ratio chosen by decision k is within 5% of the best fixed ratio
on the grid 0, 0.05, ..., 1. The initial ``init`` record in ``history`` is not a decision.
"""

from __future__ import annotations

import json
import math
import re
import threading

import pytest

from ff_lightning.control.controller import KINDS, Controller, Decision, StepStats
from ff_lightning.control.window import WindowSummary
from ff_lightning.testing.simulator import SimulatedPipeline, run_controller

B, W, STEPS = 64, 4, 60  # batch size, workers, steps per decision window

REGIMES = {
    # CPU-bound: augmentation is 4x the compute per batch, the device is cheap: best r high.
    "cpu_bound": dict(cpu_cost=8e-3, device_cost=0.4e-3, compute_time=25e-3),
    # Device-bound: heavy compute, the loader keeps up at r=0: best r = 0.
    "device_bound": dict(cpu_cost=2e-3, device_cost=1e-3, compute_time=60e-3),
    # Balanced: the loader is a little slower than compute: a small share helps.
    "balanced": dict(cpu_cost=4e-3, device_cost=1e-3, compute_time=40e-3),
    # Route-independent worker work (decode) on top of the augmentation.
    "decode": dict(cpu_cost=6e-3, device_cost=0.5e-3, compute_time=20e-3, loader_cost=1e-3),
    # Noisy timings: 15% lognormal, 20% gaussian.
    "noisy_cpu_bound": dict(cpu_cost=8e-3, device_cost=0.4e-3, compute_time=25e-3, noise=0.15),
    "noisy_balanced": dict(
        cpu_cost=4e-3, device_cost=1e-3, compute_time=40e-3, noise=0.2, noise_kind="gaussian"
    ),
}


def pipeline(seed: int = 0, **kw) -> SimulatedPipeline:
    return SimulatedPipeline(batch_size=B, num_workers=W, seed=seed, **kw)


def settled_ratio(trace) -> float:
    last = trace[-1].decision
    assert last.kind == "hold", f"not settled: {last.reason}"
    return last.ratio


def first_within(trace, pipe, target: float, *, start: int = 0, changed: bool = False):
    """1-based index (counted from ``start``) of the first decision whose ratio reaches
    ``target`` samples/s in the noise-free steady state."""
    for k, e in enumerate(trace[start:], 1):
        if pipe.throughput(e.decision.ratio, changed=changed) >= target:
            return k
    return None


# ---------------------------------------------------------------------- regimes
@pytest.mark.parametrize("name", sorted(REGIMES))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auto_reaches_best_fixed_and_never_settles_below_cpu_only(name, seed):
    pipe = pipeline(seed, **REGIMES[name])
    _, best = pipe.best_fixed()
    cpu_only = pipe.throughput(0.0)
    trace = run_controller(Controller(), pipe, STEPS, 14)

    assert trace[0].ratio == 0.0  # the first window measures CPU-only
    k = first_within(trace, pipe, 0.95 * best)
    assert k is not None and k <= 5, [round(e.decision.ratio, 3) for e in trace]
    final = settled_ratio(trace)
    assert pipe.throughput(final) >= 0.95 * best
    for e in trace:
        if e.decision.kind == "hold":  # wherever it settles, it is not slower than CPU-only
            assert pipe.throughput(e.decision.ratio) >= cpu_only


def test_device_bound_keeps_cpu_only_from_the_first_decision():
    trace = run_controller(Controller(), pipeline(**REGIMES["device_bound"]), STEPS, 4)
    assert [e.decision.ratio for e in trace] == [0.0] * 4
    assert trace[0].decision.kind == "model"
    assert trace[0].decision.reason.startswith("model: device-bound")


def test_cpu_bound_jumps_with_the_cost_model():
    pipe = pipeline(**REGIMES["cpu_bound"])
    trace = run_controller(Controller(), pipe, STEPS, 3)
    d1, d2 = trace[0].decision, trace[1].decision
    assert d1.kind == "model" and "loader-bound" in d1.reason
    assert "device cost assumed" in d1.reason  # nothing routed yet: g is a conservative prior
    assert 0 < d1.ratio < d2.ratio  # the second jump uses the measured device cost
    assert d2.kind == "model" and d2.ratio == pytest.approx(0.672, abs=0.02)


@pytest.mark.parametrize(
    "change, at_most",
    [
        ({"cpu_cost": 8e-3}, 2),  # augmentation got twice as expensive: offload more
        ({"compute_time": 150e-3}, 2),  # the model got much heavier: device-bound, back to 0
    ],
)
def test_regime_change_mid_run_is_detected_and_reoptimised(change, at_most):
    base = dict(REGIMES["balanced"], noise=0.1)
    pipe = pipeline(3, change_at_step=10 * STEPS, change=change, **base)
    trace = run_controller(Controller(), pipe, STEPS, 18)
    assert trace[9].decision.kind == "hold"  # settled before the change
    assert pipe.throughput(trace[9].decision.ratio) >= 0.95 * pipe.best_fixed()[1]
    # Window 11 is the first after the change: decision 11 is decision 1 after it.
    _, best_after = pipe.best_fixed(changed=True)
    k = first_within(trace, pipe, 0.95 * best_after, start=10, changed=True)
    assert k is not None and k <= at_most
    assert "regime change" in trace[10].decision.reason
    assert pipe.throughput(settled_ratio(trace), changed=True) >= 0.95 * best_after


def test_revert_when_a_move_loses_speed():
    pipe = pipeline(**REGIMES["cpu_bound"])
    trace = run_controller(Controller(), pipe, STEPS, 8)
    reverts = [(i, e.decision) for i, e in enumerate(trace) if e.decision.kind == "revert"]
    assert reverts
    i, d = reverts[0]
    assert re.match(r"revert: r=\d\.\d\d lost \d+\.\d% throughput vs best r=\d\.\d\d", d.reason)
    assert d.ratio == d.best_ratio  # back to the best point ...
    assert pipe.throughput(d.prev_ratio) < pipe.throughput(d.ratio)  # ... which is faster
    assert trace[i + 1].ratio == d.ratio  # and the next window measures it again


def test_a_model_jump_that_loses_speed_is_reverted():
    # Above 30 device samples the step slows by 80 ms in a way the linear model cannot see.
    pipe = pipeline(device_extra=lambda n: 0.08 if n > 30 else 0.0, **REGIMES["cpu_bound"])
    trace = run_controller(Controller(), pipe, STEPS, 16)
    d = trace[2].decision
    assert d.kind == "revert"
    assert d.reason == "revert: r=0.67 lost 11.6% throughput vs best r=0.16"
    assert d.ratio == d.best_ratio == trace[1].ratio
    final = settled_ratio(trace)
    assert final * B <= 30
    assert pipe.throughput(final) >= 0.95 * pipe.best_fixed()[1]


def test_worker_stamps_are_calibrated_against_loader_bound_windows():
    # Overstated stamps (3x) must neither cap the measured throughput nor mislead the model.
    pipe = pipeline(**REGIMES["balanced"])
    real_step = pipe.step

    def step(ratio: float) -> StepStats:
        s = real_step(ratio)
        s.cpu_aug_s = None if s.cpu_aug_s is None else 3 * s.cpu_aug_s
        return s

    pipe.step = step  # type: ignore[method-assign]
    trace = run_controller(Controller(), pipe, STEPS, 12)
    assert trace[0].decision.throughput == pytest.approx(pipe.throughput(0.0), rel=0.01)
    assert pipe.throughput(settled_ratio(trace)) >= 0.95 * pipe.best_fixed()[1]
    # Understated stamps: 4 workers sharing 2 cores take twice their CPU seconds of wall time.
    pipe = pipeline(cores=2, **REGIMES["cpu_bound"])
    trace = run_controller(Controller(), pipe, STEPS, 12)
    assert first_within(trace, pipe, 0.95 * pipe.best_fixed()[1]) <= 2
    assert pipe.throughput(settled_ratio(trace)) >= 0.95 * pipe.best_fixed()[1]


# ---------------------------------------------------------------------- modes
@pytest.mark.parametrize(
    "mode, ratio, expected",
    [("off", None, 0.0), ("gpu", None, 1.0), ("fixed", 0.3, 0.3), ("fixed", 0.0, 0.0)],
)
def test_fixed_modes_never_move(mode, ratio, expected):
    ctl = Controller(mode, ratio)
    assert ctl.ratio == expected
    trace = run_controller(ctl, pipeline(**REGIMES["cpu_bound"]), 20, 4)
    assert [e.decision.ratio for e in trace] == [expected] * 4
    assert all(e.decision.kind == "mode" for e in trace)
    assert all(e.decision.throughput and e.decision.throughput > 0 for e in trace)
    assert ctl.history[0].kind == "init" and len(ctl.history) == 5


def test_memory_cap_bounds_auto():
    pipe = pipeline(**REGIMES["cpu_bound"])  # best r ~0.67
    ctl = Controller()
    ctl.set_memory_cap(0.3)
    trace = run_controller(ctl, pipe, STEPS, 10)
    assert max(e.decision.ratio for e in trace) <= 0.3
    assert settled_ratio(trace) == pytest.approx(0.3)


def test_memory_cap_applies_at_once_and_is_recorded():
    ctl = Controller()
    run_controller(ctl, pipeline(**REGIMES["cpu_bound"]), STEPS, 4)
    assert ctl.ratio > 0.5
    ctl.set_memory_cap(0.25)
    assert ctl.ratio == 0.25
    assert ctl.history[-1].kind == "memory"
    assert ctl.history[-1].reason.startswith("memory cap 0.25")
    n = len(ctl.history)
    ctl.set_memory_cap(0.25)  # the callback repeats it every step: no new records
    assert len(ctl.history) == n
    trace = run_controller(ctl, pipeline(**REGIMES["cpu_bound"]), STEPS, 6)
    assert all(e.decision.ratio <= 0.25 for e in trace)


def test_raising_the_memory_cap_lets_auto_climb_again():
    pipe = pipeline(**REGIMES["cpu_bound"])
    ctl = Controller()
    ctl.set_memory_cap(0.3)
    run_controller(ctl, pipe, STEPS, 8)
    assert ctl.ratio == pytest.approx(0.3) and ctl.history[-1].kind == "hold"
    ctl.set_memory_cap(None)
    assert ctl.history[-1].reason == "memory cap raised to 1.00"
    trace = run_controller(ctl, pipe, STEPS, 10)
    assert pipe.throughput(settled_ratio(trace)) >= 0.95 * pipe.best_fixed()[1]


def test_memory_cap_limits_gpu_mode():
    ctl = Controller("gpu")
    ctl.set_memory_cap(0.4)
    assert ctl.ratio == 0.4
    d = run_controller(ctl, pipeline(**REGIMES["cpu_bound"]), 20, 1)[0].decision
    assert (d.ratio, d.kind) == (0.4, "memory")
    assert d.reason == "memory cap 0.40: mode gpu (all samples on the device) limited to r=0.40"
    ctl.set_memory_cap(None)
    assert ctl.ratio == 0.4  # lifted: the next decision restores the mode's ratio
    assert ctl.decide().ratio == 1.0


# ---------------------------------------------------------------------- state
def test_state_dict_round_trip_continues_from_saved_ratio_and_best():
    pipe = pipeline(**REGIMES["cpu_bound"])
    ctl = Controller()
    run_controller(ctl, pipe, STEPS, 4)
    state = json.loads(json.dumps(ctl.state_dict()))  # plain Python types only
    restored = Controller()
    restored.load_state_dict(state)
    assert restored.ratio == ctl.ratio
    assert restored.state_dict() == ctl.state_dict()
    assert [d.to_dict() for d in restored.history] == [d.to_dict() for d in ctl.history]
    trace = run_controller(restored, pipe, STEPS, 6)
    assert all(e.decision.ratio > 0.5 for e in trace)  # no new CPU-only baseline
    assert pipe.throughput(settled_ratio(trace)) >= 0.95 * pipe.best_fixed()[1]


# Saved by version 1 (search state flat, "estimates" only the keys estimated so far) after
# four decisions on the cpu_bound regime, seed 0; history left out.
V1_STATE = {
    "version": 1,
    "mode": "auto",
    "ratio": 0.671875,
    "memory_cap": 1.0,
    "decisions": 4,
    "phase": "climb",
    "best": [0.671875, 1516.5876777251185, 0.0],
    "baseline": 500.00000000000034,
    "baseline_fresh": True,
    "steps": [0.1, 0.025],
    "done": [-1],
    "direction": -1,
    "next_direction": 1,
    "last_move": "revert",
    "model_jumps": 2,
    "hold_ref": None,
    "estimates": {
        "batch_size": 64.0,
        "num_workers": 4.0,
        "compute_s": 0.025000000000000005,
        "loader_q": 0.9999999999999993,
        "cpu_cost": 0.008,
        "prep_s": 0.0,
        "device_cost": 0.0004,
        "device_cost_assumed": False,
    },
}


def test_state_dict_version_2_nests_the_search_state_with_its_phase_by_value():
    ctl = Controller()
    run_controller(ctl, pipeline(**REGIMES["cpu_bound"]), STEPS, 4)
    state = ctl.state_dict()
    assert state["version"] == 2
    assert state["search"]["phase"] in {"baseline", "climb", "model", "hold", "floor", "recheck"}
    assert set(state["estimates"]) >= {"batch_size", "cpu_cost", "device_cost", "loader_q"}
    assert state["estimates"]["batch_size"] == B


def test_version_1_state_loads_and_continues_as_version_1_did():
    ctl = Controller()
    ctl.load_state_dict(json.loads(json.dumps(V1_STATE)))
    assert ctl.ratio == 0.671875 and ctl.history == []
    state = ctl.state_dict()
    assert state["search"]["phase"] == "climb" and state["search"]["done"] == [-1]
    assert state["estimates"]["loader_fixed_s"] is None  # never estimated
    pipe = pipeline(5, noise=0.05, **REGIMES["cpu_bound"])
    trace = run_controller(ctl, pipe, STEPS, 6)
    # What version 1 decided from this state on this pipeline.
    assert [(e.decision.kind, e.decision.ratio) for e in trace] == [
        ("explore", 0.771875),
        ("revert", 0.671875),
        ("hold", 0.671875),
        ("hold", 0.671875),
        ("hold", 0.671875),
        ("hold", 0.671875),
    ]
    assert trace[1].decision.reason == "revert: r=0.77 lost 4.9% throughput vs best r=0.67"


def test_state_from_another_mode_restores_history_only():
    ctl = Controller()
    run_controller(ctl, pipeline(**REGIMES["cpu_bound"]), STEPS, 3)
    fixed = Controller("fixed", 0.2)
    fixed.load_state_dict(ctl.state_dict())
    assert fixed.ratio == 0.2
    assert len(fixed.history) == len(ctl.history)


def test_history_records_every_decision_with_a_reason():
    ctl = Controller()
    run_controller(ctl, pipeline(**REGIMES["noisy_cpu_bound"]), STEPS, 10)
    assert len(ctl.history) == 11
    assert [d.index for d in ctl.history] == list(range(11))
    for d in ctl.history:
        assert d.kind in KINDS
        assert d.reason.startswith(d.kind) or d.reason.startswith("memory cap")
        assert 0.0 <= d.ratio <= 1.0
    for d in ctl.history[1:]:
        assert d.throughput > 0 and d.steps > 0 and d.prev_ratio is not None
    assert Decision.from_dict(ctl.history[3].to_dict()) == ctl.history[3]


# ---------------------------------------------------------------------- measurement
def stats(n_device: int, step_s: float = 0.05, ratio: float | None = None, **kw) -> StepStats:
    return StepStats(
        batch_size=B,
        n_device=n_device,
        data_wait_s=kw.pop("wait", 0.0),
        step_s=step_s,
        device_aug_s=n_device * 1e-3,
        cpu_aug_s=(B - n_device) * 4e-3,
        num_workers=kw.pop("num_workers", W),
        ratio=ratio,
        **kw,
    )


def test_steps_routed_before_a_change_and_warmup_are_ignored():
    ctl = Controller("fixed", 0.5, warmup_steps=3)
    for _ in range(5):
        ctl.observe(stats(0))  # still routed with the old split: n_device does not match
    for _ in range(10):
        ctl.observe(stats(32))
    assert ctl.decide().steps == 10 - 3
    # With the routed ratio reported, the match is exact.
    ctl = Controller("fixed", 0.5, warmup_steps=0)
    for _ in range(4):
        ctl.observe(stats(32, ratio=0.45))
    for _ in range(6):
        ctl.observe(stats(32, ratio=0.5))
    assert ctl.decide().steps == 6


def test_too_few_steps_holds_and_keeps_accumulating():
    ctl = Controller(warmup_steps=0, min_steps=8)
    for _ in range(5):
        ctl.observe(stats(0, wait=0.03))
    d = ctl.decide()
    assert (d.kind, d.ratio) == ("hold", 0.0)
    assert d.reason == "hold: 5 steps measured since the last change (after warm-up), need 8"
    for _ in range(5):
        ctl.observe(stats(0, wait=0.03))
    d = ctl.decide()
    assert d.steps == 10 and d.kind == "model"


def test_throughput_is_measured_over_worker_rounds():
    # Workers started together deliver batches in bursts: one long wait, then W-1 at once.
    ctl = Controller("off", warmup_steps=0)
    for i in range(40):
        wait = 0.3 if i % W == 0 else 0.0
        ctl.observe(stats(0, step_s=wait + 0.025, wait=wait))
    d = ctl.decide()
    assert d.throughput == pytest.approx(W * B / (0.3 + W * 0.025))


def test_reduce_hook_is_called_once_and_its_output_used():
    calls = []

    def reduce(values: dict[str, float]) -> dict[str, float]:
        calls.append(dict(values))
        return {**values, "samples_per_s": 1234.0}

    ctl = Controller("fixed", 0.25, warmup_steps=0)
    for _ in range(8):
        ctl.observe(stats(16))
    d = ctl.decide(reduce=reduce)
    assert len(calls) == 1
    assert all(isinstance(v, float) for v in calls[0].values())
    assert {"samples_per_s", "wait_s", "cpu_cost", "device_cost", "compute_s"} <= set(calls[0])
    assert d.throughput == 1234.0


def test_ranks_take_the_same_decision_from_reduced_statistics():
    """Two ranks with different local timings (DDP) decide alike after an all-reduce."""
    barrier, box = threading.Barrier(2), {}

    def make_reduce(rank: int):
        def reduce(values: dict[str, float]) -> dict[str, float]:
            box[rank] = values
            barrier.wait()
            out = {k: (box[0][k] + box[1][k]) / 2 for k in box[0]}
            barrier.wait()
            return out

        return reduce

    ranks = [Controller(), Controller()]
    pipes = [pipeline(seed, **REGIMES["noisy_cpu_bound"]) for seed in (0, 1)]
    decisions: dict[int, list[float]] = {0: [], 1: []}

    def run(rank: int) -> None:
        ctl, pipe = ranks[rank], pipes[rank]
        for _ in range(8):
            for _ in range(STEPS):
                ctl.observe(pipe.step(ctl.ratio))
            decisions[rank].append(ctl.decide(reduce=make_reduce(rank)).ratio)

    threads = [threading.Thread(target=run, args=(r,)) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert decisions[0] == decisions[1] and len(decisions[0]) == 8
    assert ranks[0].state_dict() == ranks[1].state_dict()


def test_serial_loading_without_workers():
    # num_workers=0: loading runs in the main process; the cheaper route takes everything.
    pipe = SimulatedPipeline(4e-3, 0.5e-3, 20e-3, batch_size=32, num_workers=0)
    trace = run_controller(Controller(), pipe, STEPS, 8)
    assert settled_ratio(trace) == 1.0
    slow_device = SimulatedPipeline(4e-3, 6e-3, 20e-3, batch_size=32, num_workers=0)
    trace = run_controller(Controller(), slow_device, STEPS, 8)
    assert settled_ratio(trace) == 0.0


def test_quantum_rounds_ratios():
    ctl = Controller(quantum=1 / B)
    trace = run_controller(ctl, pipeline(**REGIMES["cpu_bound"]), STEPS, 8)
    for e in trace:
        assert math.isclose(e.decision.ratio * B, round(e.decision.ratio * B), abs_tol=1e-9)


# ---------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    "args, kwargs, message",
    [
        (("fast",), {}, "`mode` must be one of ('auto', 'off', 'gpu', 'fixed'), got 'fast'"),
        (("fixed",), {}, "`ratio` is required when mode='fixed'"),
        (("fixed", 1.5), {}, "`ratio` must be in [0, 1], got 1.5"),
        (("auto", 0.5), {}, "`ratio` is only used when mode='fixed', got mode='auto'"),
        ((), {"min_ratio": -0.1}, "`min_ratio` must be in [0, 1], got -0.1"),
        ((), {"max_ratio": 2}, "`max_ratio` must be in [0, 1], got 2"),
        ((), {"min_ratio": 0.6, "max_ratio": 0.5}, "`min_ratio` must not exceed `max_ratio`"),
        ((), {"hysteresis": 1.0}, "`hysteresis` must be in [0, 1), got 1.0"),
        ((), {"step": 0}, "`step` must be in (0, 1], got 0"),
        ((), {"min_step": 0.5}, "`min_step` must be in (0, step=0.1], got 0.5"),
        ((), {"warmup_steps": -1}, "`warmup_steps` must be None or a non-negative int, got -1"),
        ((), {"quantum": 0}, "`quantum` must be None or in (0, 1], got 0"),
        ((), {"regime_tol": 0}, "`regime_tol` must be in (0, 1), got 0"),
        ((), {"min_steps": 0}, "`min_steps` must be a positive int, got 0"),
    ],
)
def test_argument_validation(args, kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        Controller(*args, **kwargs)


def test_memory_cap_and_step_stats_validation():
    with pytest.raises(ValueError, match=re.escape("`cap` must be None or in [0, 1], got 1.5")):
        Controller().set_memory_cap(1.5)
    # The controller checks every record it observes (records are built stage by stage).
    with pytest.raises(ValueError, match=re.escape("`n_device` must be in [0, batch_size=4]")):
        Controller().observe(StepStats(batch_size=4, n_device=5, data_wait_s=0.0, step_s=0.1))
    with pytest.raises(ValueError, match="`batch_size` must be positive"):
        Controller().observe(StepStats(batch_size=0, n_device=0, data_wait_s=0.0, step_s=0.1))
    record = StepStats(batch_size=4, n_device=1, data_wait_s=0.0, step_s=0.1)
    Controller().observe(record)
    assert record.n_cpu == 3


# ---------------------------------------------------------------------- simulator
def test_simulator_matches_its_analytic_throughput():
    for r in (0.0, 0.3, 0.7, 1.0):
        pipe = pipeline(**REGIMES["cpu_bound"])
        for _ in range(40):  # let the pipeline reach steady state
            pipe.step(r)
        t = sum(pipe.step(r).step_s for _ in range(40))
        assert 40 * B / t == pytest.approx(pipe.throughput(r), rel=0.01)
    assert pipeline(**REGIMES["cpu_bound"]).best_fixed() == (0.7, pytest.approx(1488.4, abs=0.1))


def test_simulator_regime_change_and_determinism():
    a = pipeline(
        7, noise=0.1, change_at_step=5, change={"compute_time": 1.0}, **REGIMES["balanced"]
    )
    b = pipeline(
        7, noise=0.1, change_at_step=5, change={"compute_time": 1.0}, **REGIMES["balanced"]
    )
    sa = [a.step(0.5) for _ in range(10)]
    assert sa == [b.step(0.5) for _ in range(10)]
    assert all(s.step_s < 0.5 for s in sa[:5]) and all(s.step_s > 0.5 for s in sa[5:])


def _windows(controller, pipe, factors):
    """One decision window per factor; every timing of the window scaled by it (the whole
    machine slower or faster for a while, as on a shared host)."""
    from dataclasses import replace

    out = []
    for f in factors:
        for _ in range(STEPS):
            s = pipe.step(controller.ratio)
            controller.observe(
                replace(
                    s,
                    step_s=s.step_s * f,
                    data_wait_s=s.data_wait_s * f,
                    device_aug_s=s.device_aug_s * f,
                )
            )
        out.append(controller.decide())
    return out


def test_a_false_alarm_makes_the_next_regime_change_wait_for_confirmation():
    pipe = pipeline(**REGIMES["balanced"])
    ctl = Controller()
    settled = [d for d in _windows(ctl, pipe, [1.0] * 10)][-1]
    assert settled.kind == "hold"
    r0 = settled.ratio
    # A machine-wide slowdown of one window: the first one is taken as a regime change ...
    first = _windows(ctl, pipe, [1.3] + [1.0] * 8)
    assert "regime change" in first[0].reason
    # ... which settles back where it was (within one sample): a false alarm.
    assert first[-1].kind == "hold" and abs(first[-1].ratio - r0) <= 1 / B + 1e-9
    assert ctl.search.false_alarms == 1
    # ... so the next single outlier window is held through, out of the reference ...
    second = _windows(ctl, pipe, [1.3, 1.0])
    assert second[0].kind == "hold" and "1 more window(s) agree" in second[0].reason
    r1 = first[-1].ratio
    assert second[0].ratio == r1 and "regime change" not in second[1].reason
    # ... while a change that lasts (two windows in a row) is acted on.
    third = _windows(ctl, pipe, [1.3, 1.3])
    assert "regime change if" in third[0].reason and "regime change (" in third[1].reason
    state = ctl.state_dict()
    restored = Controller()
    restored.load_state_dict(state)
    assert restored.search.false_alarms == ctl.search.false_alarms
    assert restored.search.alarm_from == ctl.search.alarm_from


# ---------------------------------------------------------------------- idle workers
@pytest.mark.parametrize("cpu_per_sample, explores", [(2e-4, False), (6e-3, True)])
def test_a_wait_with_idle_workers_is_not_a_loader_bottleneck(
    cpu_per_sample: float, explores: bool
) -> None:
    # 8 ms of wait in a 100 ms step, 4 workers on 4 cores. Workers that stamp 0.2 ms per sample
    # (a batch every 3.2 ms between them) are idle most of the step: the wait is the hand-over,
    # and moving augmentation to the device cannot shorten it. Workers stamping 6 ms per
    # sample (a batch every 96 ms) are the bottleneck.
    ctl = Controller(warmup_steps=0)
    ctl.rule.ev.worker_cores = W
    for _ in range(3):
        for _ in range(8):
            ctl.observe(
                StepStats(
                    batch_size=B,
                    n_device=round(ctl.ratio * B),
                    data_wait_s=8e-3,
                    step_s=0.1,
                    device_aug_s=0.0,
                    cpu_aug_s=cpu_per_sample * B,
                    prep_s=0.0,
                    num_workers=W,
                    ratio=ctl.ratio,
                )
            )
        d = ctl.decide()
        if not explores:
            assert d.ratio == 0.0 and d.kind in ("model", "hold"), d.reason
    first = ctl.history[1]
    if explores:
        assert first.ratio > 0.0 and "loader-bound" in first.reason, first.reason
    else:
        assert first.reason.startswith("model: device-bound"), first.reason


def test_oversubscribed_workers_count_as_busy() -> None:
    # Four workers stamping 80 ms of CPU per batch deliver a batch every 20 ms on four cores:
    # idle against a 100 ms step. Sharing one core, they deliver one every 80 ms: busy.
    def idle(cores: int) -> bool:
        ctl = Controller()
        ctl.rule.ev.worker_cores = cores
        s = WindowSummary(step_s=0.1, wait_s=0.01, num_workers=4.0, loader_floor_s=0.08 / 4)
        return ctl.rule.ev.workers_idle(s)

    assert idle(4) is True
    assert idle(1) is False
