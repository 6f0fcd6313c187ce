"""Tests for the cost model and the estimator that fits it from window summaries."""

from __future__ import annotations

import json
import math

import pytest

from ff_lightning.control.estimator import CostModel, Estimator
from ff_lightning.control.window import WindowSummary

B, W = 64, 4


def summary(**kw) -> WindowSummary:
    """A loader-bound window at r=0 with stamped CPU seconds (c = 8 ms, no fixed part)."""
    base = dict(
        steps=40.0,
        samples_per_s=500.0,
        se_rel=0.0,
        step_s=0.128,
        wait_s=0.103,
        batch_size=float(B),
        num_workers=float(W),
        routed_ratio=0.0,
        cpu_cost=8e-3,
        compute_s=0.025,
        loader_floor_s=0.128,
        loader_fixed_s=0.0,
    )
    return WindowSummary(**{**base, **kw})


def test_cost_model_crossing_point():
    m = CostModel(batch_size=64, num_workers=4, cpu_cost=8e-3, device_cost=0.4e-3, compute_s=0.025)
    r = m.crossing()
    assert r == pytest.approx((0.128 - 0.025) / (0.128 + 0.0256))
    assert m.loader_s(r) == pytest.approx(m.device_s(r))
    assert m.throughput(r) > m.throughput(r - 0.05) and m.throughput(r) > m.throughput(r + 0.05)
    assert m.crossing(hi=0.5) == 0.5
    heavy = CostModel(64, 4, 2e-3, 1e-3, compute_s=0.06)
    assert heavy.crossing() == 0.0


def test_cost_model_serial_loading_takes_the_cheaper_route():
    m = CostModel(32, 0, cpu_cost=4e-3, device_cost=0.5e-3, compute_s=0.02)
    assert m.crossing() == 1.0 and m.step_s(0.0) == pytest.approx(0.02 + 32 * 4e-3)
    assert CostModel(32, 0, cpu_cost=4e-3, device_cost=6e-3, compute_s=0.02).crossing() == 0.0


def test_no_model_until_batch_size_cpu_cost_and_compute_are_known():
    est = Estimator()
    assert est.model() is None
    est.update(WindowSummary(steps=0.0), ratio=0.0)
    assert est.model() is None


def test_update_from_a_stamped_loader_bound_window():
    est = Estimator()
    est.update(summary(), ratio=0.0)
    assert (est.batch_size, est.num_workers, est.compute_s, est.cpu_cost) == (B, W, 0.025, 8e-3)
    assert est.prep_s == 0.0 and est.loader_q == pytest.approx(1.0)
    assert est.device_cost is None  # nothing routed yet
    model = est.model()
    # Until measured, one device sample is assumed to cost what it costs one CPU core.
    assert model.device_cost_assumed and model.device_cost == 8e-3
    est.update(summary(routed_ratio=0.25, device_cost=0.4e-3), ratio=0.25)
    model = est.model()
    assert not model.device_cost_assumed and model.device_cost == 0.4e-3
    assert model.crossing() == pytest.approx((0.128 - 0.025) / (0.128 + 0.0256))


def test_loader_calibration_keeps_the_smallest_ratio_until_forgotten():
    est = Estimator()
    est.update(summary(step_s=0.256, wait_s=0.2), ratio=0.0)  # 2x slower than the stamps
    assert est.loader_q == pytest.approx(2.0) and est.model().loader_scale == pytest.approx(2.0)
    est.update(summary(step_s=0.3, wait_s=0.25), ratio=0.0)
    assert est.loader_q == pytest.approx(2.0)  # noise only inflates: keep the smallest
    est.update(summary(step_s=0.14, wait_s=0.1), ratio=0.0)
    assert est.model().loader_scale == 1.0  # within what noise adds: taken as exact
    assert est.forget_loader() is True
    assert est.loader_q is None and est.loader_fixed_s is None
    assert est.forget_loader() is False


def test_fixed_loader_time_is_inferred_without_prep_stamps():
    est = Estimator()
    est.update(summary(step_s=0.160, wait_s=0.135, loader_fixed_s=math.nan), ratio=0.0)
    assert est.prep_s is None
    assert est.loader_fixed_s == pytest.approx(0.160 - B * 8e-3 / W)
    assert est.model().loader_fixed_s == pytest.approx(0.032)


def test_cpu_cost_is_inferred_from_waits_without_stamps():
    est = Estimator()
    s = summary(cpu_cost=math.nan, loader_floor_s=math.nan, loader_fixed_s=math.nan)
    est.update(s, ratio=0.0)
    assert est.cpu_cost == pytest.approx(0.128 * W / B)


def test_measured_throughput_is_capped_at_what_the_workers_sustain():
    est = Estimator()
    s = summary(loader_floor_s=0.2)
    assert est.loader_limited(s, 1000.0) == pytest.approx(B / 0.2)
    assert est.loader_limited(s, 100.0) == 100.0
    assert est.loader_limited(summary(loader_floor_s=math.nan), 1000.0) == 1000.0


def test_state_round_trip_and_version_1_estimates():
    est = Estimator()
    est.update(summary(device_cost=0.4e-3, routed_ratio=0.25), ratio=0.25)
    state = json.loads(json.dumps(est.state_dict()))
    assert Estimator.from_state(state) == est
    v1 = {"batch_size": 64.0, "num_workers": 4.0, "compute_s": 0.025, "cpu_cost": 0.008}
    old = Estimator.from_state(v1)  # version 1 kept only the keys estimated so far
    assert old.cpu_cost == 0.008 and old.device_cost is None and old.model() is not None
