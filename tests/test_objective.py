"""The CPU objective (``objective="cpu"``): the fewest workers within tolerance of the best.

Run against the simulated pipeline in epochs of ``PER_EPOCH`` decision windows; the worker
count changes only at epoch boundaries, where the simulated loader is rebuilt. "Converges in
<= 3 epochs of decisions" means: counted from the first worker decision (the epoch end where
the share first settled at the configured count), the count takes its final value at one of
the next 3 epoch ends and keeps it.
"""

from __future__ import annotations

import json
import types
import warnings

import pytest

from ff_lightning.control.controller import Controller
from ff_lightning.control.workers import Stage, WorkerSearch
from ff_lightning.errors import ConfigError
from ff_lightning.frontends.options import FusionOptions
from ff_lightning.frontends.session import FusionSession
from ff_lightning.testing.simulator import SimulatedPipeline, run_epochs

B, W, STEPS, PER_EPOCH, TOL = 64, 4, 40, 6, 0.03

REGIMES = {
    # CPU-bound: CPU-only with 4 workers waits 11 ms per step; device augmentation is cheap
    # (1.3 ms per full batch), so the device can absorb the work of half the workers; the
    # workers' decode (0.7 ms/sample) keeps one worker clearly too slow.
    "cpu_bound": dict(cpu_cost=2.5e-3, device_cost=0.02e-3, compute_time=40e-3, loader_cost=0.7e-3),
    # Balanced: 4 workers deliver exactly at the device's pace at r=0.
    "balanced": dict(cpu_cost=1.7e-3, device_cost=0.01e-3, compute_time=40e-3, loader_cost=0.8e-3),
    # Device-bound: heavy compute; 2 workers still keep up at r=0; one worker's decode alone
    # (1.2 ms/sample) is slower than the step.
    "device_bound": dict(cpu_cost=0.5e-3, device_cost=1e-3, compute_time=60e-3, loader_cost=1.2e-3),
}


def pipeline(name: str, seed: int = 0, **kw) -> SimulatedPipeline:
    args = dict(REGIMES[name], noise=0.05, **kw)
    return SimulatedPipeline(batch_size=B, num_workers=W, seed=seed, **args)


def optimum(pipe: SimulatedPipeline, workers: int = W, changed: bool = False) -> float:
    return pipe.best_fixed(pipe.sample_grid(), workers=workers, changed=changed)[1]


def counts(trace) -> list[int]:
    """The worker count each epoch ran with, then the count after the last epoch."""
    return [e.workers for e in trace] + [trace[-1].worker_decision.workers or trace[-1].workers]


@pytest.mark.parametrize("name", sorted(REGIMES))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_converges_to_the_fewest_workers_within_tolerance(name, seed):
    pipe = pipeline(name, seed)
    fewest = pipe.fewest_workers(TOL)
    best = optimum(pipe)
    ctl = Controller(objective="cpu", tolerance=TOL)
    trace = run_epochs(ctl, pipe, STEPS, PER_EPOCH, 8)

    assert ctl.workers == pipe.num_workers == fewest
    first = next(i for i, e in enumerate(trace) if e.worker_decision is not None)
    ran = [e.workers for e in trace]
    final_from = max(i for i in range(len(ran)) if i == 0 or ran[i] != ran[i - 1])
    assert final_from - first <= 3, ran  # set at one of the 3 epoch ends from the first
    assert min(ran) >= 1  # never below one worker
    # Never ends slower than the tolerance below the throughput optimum (4 workers, best share).
    assert pipe.throughput(ctl.ratio) >= (1 - TOL) * best
    assert trace[-1].windows[-1].decision.kind == "hold"


def test_cpu_bound_goal_saves_half_the_workers_within_three_percent():
    for seed in (0, 1, 2):
        pipe = pipeline("cpu_bound", seed)
        ctl = Controller(objective="cpu", tolerance=0.03)
        run_epochs(ctl, pipe, STEPS, PER_EPOCH, 6)
        saved = (W - ctl.workers) / W
        assert saved >= 0.4, (seed, ctl.workers)
        assert pipe.throughput(ctl.ratio) >= 0.97 * optimum(pipe)


def test_decisions_and_reasons_on_a_noise_free_pipeline():
    pipe = SimulatedPipeline(batch_size=B, num_workers=W, **REGIMES["cpu_bound"])
    ctl = Controller(objective="cpu")
    trace = run_epochs(ctl, pipe, STEPS, PER_EPOCH, 5)
    moves = [(e.workers, e.worker_decision) for e in trace if e.worker_decision is not None]
    assert [(w, d.workers) for w, d in moves] == [(4, 3), (3, 2), (2, 2)]
    assert moves[0][1].reason.startswith("workers: 4 workers settled at r=0.28 (1586 samples/s)")
    assert moves[0][1].reason.endswith("trying 3, device share r=0.53 from the cost model")
    assert moves[2][1].reason.endswith(
        "the cost model puts 1 worker at 1429 samples/s (-9.9%), staying at 2 "
        "(2 of 4 workers saved (50%))"
    )
    assert all(d.kind == "workers" for _, d in moves)
    # Each move starts the new count at the cost model's share for it: more on the device.
    shares = {e.workers: e.ratio for e in trace}
    assert shares[4] < shares[3] < shares[2]
    # Every later decision records the active count.
    assert {d.workers for d in ctl.history[1:]} <= {2, 3, 4}
    assert ctl.history[-1].workers == 2


def test_a_trial_that_loses_speed_goes_back():
    # The balanced regime of test_controller: one worker fewer costs 13% even at the best share.
    pipe = SimulatedPipeline(
        batch_size=B, num_workers=2, cpu_cost=4e-3, device_cost=1e-3, compute_time=40e-3
    )
    ctl = Controller(objective="cpu")
    trace = run_epochs(ctl, pipe, STEPS, PER_EPOCH, 4)
    assert ctl.workers == 2
    moves = [e.worker_decision for e in trace if e.worker_decision is not None]
    assert moves[-1].workers == 2 and "staying at 2" in moves[-1].reason


def test_throughput_falling_after_a_regime_change_raises_the_workers_back():
    # Settles at 2 of 4 workers; then augmentation gets 3x dearer (a heavier policy).
    change_at = 6 * PER_EPOCH * STEPS
    pipe = pipeline("cpu_bound", 0, change_at_step=change_at, change={"cpu_cost": 7.5e-3})
    ctl = Controller(objective="cpu")
    trace = run_epochs(ctl, pipe, STEPS, PER_EPOCH, 14)
    before = [e.workers for e in trace[:6]]
    assert before[-1] == 2
    raised = [e.worker_decision for e in trace[6:] if e.worker_decision is not None]
    assert raised[0].workers == W
    assert raised[0].reason.startswith("workers: throughput fell after a regime change; back to 4")
    # Searches again under the new costs and ends within tolerance of the new optimum.
    assert ctl.workers == pipe.fewest_workers(TOL, changed=True)
    assert pipe.throughput(ctl.ratio, changed=True) >= (1 - TOL) * optimum(pipe, changed=True)


def test_never_below_one_worker_and_nothing_to_save_with_one():
    pipe = SimulatedPipeline(batch_size=B, num_workers=1, cpu_cost=0.1e-3, device_cost=1e-3,
                             compute_time=60e-3)  # fmt: skip
    ctl = Controller(objective="cpu")
    trace = run_epochs(ctl, pipe, STEPS, PER_EPOCH, 3)
    assert ctl.workers == 1 and all(e.worker_decision is None for e in trace)
    assert ctl.worker_search.stage is Stage.IDLE
    ctl = Controller(objective="cpu")
    ctl.configure_workers(0)  # the user asked for no workers: nothing to search
    assert ctl.workers == 0 and ctl.end_epoch() is None


def test_throughput_objective_has_no_worker_decisions():
    pipe = pipeline("cpu_bound")
    ctl = Controller()
    trace = run_epochs(ctl, pipe, STEPS, PER_EPOCH, 3)
    assert ctl.workers is None and all(e.worker_decision is None for e in trace)
    assert pipe.num_workers == W


def test_worker_search_rule_with_fed_measurements():
    ws = WorkerSearch(tolerance=0.05)
    ws.configure(3)
    assert ws.decide(None, lambda n: None) is None  # the share is still being optimised
    m = ws.decide((0.2, 1000.0), lambda n: None)
    assert (m.workers, m.ratio, m.settled) == (2, None, False)
    assert m.reason == "workers: 3 workers settled at r=0.20 (1000 samples/s); trying 2"
    m = ws.decide((0.5, 960.0), lambda n: (0.8, 955.0))
    assert (m.workers, m.ratio) == (1, 0.8)
    assert m.reason == (
        "workers: 2 workers at r=0.50 within tolerance (-4.0% vs the best 1000); trying 1, "
        "device share r=0.80 from the cost model"
    )
    m = ws.decide((0.8, 900.0), lambda n: None)
    assert (m.workers, m.ratio, m.settled) == (2, 0.5, True)
    assert m.reason == (
        "workers: 1 worker measured 900 samples/s, 10.0% below the best 1000 (tolerance 5%); "
        "back to 2 workers (1 of 3 workers saved (33%))"
    )
    assert ws.stage is Stage.HOLD and ws.decide((0.5, 960.0), lambda n: None) is None
    ws.note_regime_change(+0.2)  # faster: nothing to do
    assert ws.decide((0.5, 1200.0), lambda n: None) is None
    ws.note_regime_change(-0.2)
    m = ws.decide((0.5, 700.0), lambda n: (0.3, 1.0))
    assert (m.workers, m.ratio) == (3, 0.3) and ws.stage is Stage.REFERENCE
    state = json.loads(json.dumps(ws.state_dict()))
    assert WorkerSearch.from_state(state, 0.05) == ws


def test_state_dict_round_trip_continues_the_worker_search():
    pipe = pipeline("cpu_bound")
    ctl = Controller(objective="cpu")
    run_epochs(ctl, pipe, STEPS, PER_EPOCH, 3)  # mid-search: fewer workers on trial
    assert ctl.worker_search.stage is Stage.TRIAL and ctl.workers < W
    state = json.loads(json.dumps(ctl.state_dict()))
    assert state["workers"]["workers"] == ctl.workers
    resumed = Controller(objective="cpu")
    resumed.configure_workers(W)
    resumed.load_state_dict(state)
    assert resumed.workers == ctl.workers and resumed.worker_search == ctl.worker_search
    # Another configured count: search afresh from it.
    other = Controller(objective="cpu")
    other.configure_workers(8)
    other.load_state_dict(state)
    assert other.workers == 8 and other.worker_search.stage is Stage.REFERENCE


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(objective="cpus"), r"`objective` must be one of \('throughput', 'cpu'\), got 'cpus'"),
        (dict(objective="cpu", tolerance=1.5), r"`tolerance` must be a number in \[0, 1\)"),
        (dict(objective="cpu", tolerance="3%"), r"`tolerance` must be a number"),
        (dict(mode="off", objective="cpu"), r"`objective='cpu'` needs mode='auto'"),
        (dict(mode="fixed", ratio="0.5"), r"`ratio` must be a number, got '0.5'"),
    ],
)
def test_argument_checks_name_the_key(kwargs, message):
    args = dict(
        mode="auto",
        ratio=None,
        interval="epoch",
        every_n_steps=50,
        log_every_n_steps=10,
        reserve_mb=0,
        warmup_steps=None,
        example="FusionFlow(...)",
    )
    args.update(kwargs)
    with pytest.raises(ConfigError, match=message):
        FusionOptions(**args)


def test_fusionflow_rejects_a_string_ratio():
    from ff_lightning import FusionFlow

    with pytest.raises(ConfigError, match=r"`ratio` must be a number, got '0.5'"):
        FusionFlow(mode="fixed", ratio="0.5")


class _Router:
    def bind(self, owner) -> None:
        self.owner = owner


class _Stage:
    guard = None


class _DM:
    """What FusionSession.attach reads of a Pipeline."""

    def __init__(self, num_workers: int) -> None:
        self.num_workers = num_workers
        self.options = types.SimpleNamespace(prefetch_factor=2, reserve_mb=1024.0)
        self.router, self.stage = _Router(), _Stage()
        self.train_workers = num_workers

    def bind(self, owner) -> None:
        self.router.bind(owner)

    def set_num_workers(self, n: int) -> None:
        self.train_workers = n


class _Probe:
    available = False


@pytest.mark.parametrize("warmup, expected", [(None, 2 * 2 + 1 + 3), (10, 13)])
def test_every_n_steps_below_the_warmup_is_raised_with_a_warning(warmup, expected):
    ctl = Controller(warmup_steps=warmup)
    session = FusionSession(ctl, interval="steps", every_n_steps=2, reserve_mb=0, probe=_Probe())
    with pytest.warns(UserWarning, match=rf"`every_n_steps`=2 .*raised to {expected}"):
        session.attach(_DM(2), "cpu")
    assert session.every_n_steps == expected
    # Long enough already, or deciding per epoch: no warning, nothing changed.
    ok = FusionSession(
        Controller(), interval="steps", every_n_steps=50, reserve_mb=0, probe=_Probe()
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ok.attach(_DM(2), "cpu")
    assert ok.every_n_steps == 50


def test_session_applies_the_controllers_worker_count_to_the_datamodule():
    ctl = Controller(objective="cpu")
    session = FusionSession(ctl, interval="epoch", every_n_steps=50, reserve_mb=0, probe=_Probe())
    dm = _DM(4)
    session.attach(dm, "cpu")
    assert ctl.workers == 4 and dm.train_workers == 4
    ctl.worker_search.workers = 2  # as a restored checkpoint would have it
    assert session.apply_workers() is True and dm.train_workers == 2
    assert session.apply_workers() is False
