"""Tests for the decision window and its robust statistics."""

from __future__ import annotations

import math
from dataclasses import fields

import pytest

from ff_lightning.control.records import StepStats
from ff_lightning.control.window import Window, WindowSummary, finite

B, W = 64, 4


def step(n_device: int = 0, step_s: float = 0.05, wait: float = 0.0, **kw) -> StepStats:
    return StepStats(
        batch_size=B,
        n_device=n_device,
        data_wait_s=wait,
        step_s=step_s,
        device_aug_s=kw.pop("device_aug_s", n_device * 1e-3),
        cpu_aug_s=kw.pop("cpu_aug_s", (B - n_device) * 4e-3),
        num_workers=kw.pop("num_workers", W),
        **kw,
    ).check()


def test_empty_window_knows_only_its_step_count():
    s = Window(16).summary()
    assert s.steps == 0.0
    assert all(math.isnan(getattr(s, f.name)) for f in fields(s) if f.name != "steps")


def test_summary_of_steady_steps():
    window = Window(64)
    for _ in range(8):
        window.update(step(16, step_s=0.05, wait=0.01, h2d_s=0.002, prep_s=0.04))
    s = window.summary()
    assert s.steps == 8.0 and len(window) == 8
    assert s.samples_per_s == pytest.approx(B / 0.05)
    assert s.se_rel == pytest.approx(0.0, abs=1e-12)
    assert (s.step_s, s.wait_s) == (pytest.approx(0.05), pytest.approx(0.01))
    assert (s.batch_size, s.num_workers, s.routed_ratio) == (B, W, 0.25)
    assert s.cpu_cost == pytest.approx(4e-3) and s.device_cost == pytest.approx(1e-3)
    assert s.compute_s == pytest.approx(0.05 - 0.01 - 0.016)
    assert s.h2d_s == pytest.approx(0.002)
    # The workers' stamped seconds per batch over W: the fastest the loader can deliver.
    assert s.loader_fixed_s == pytest.approx(0.04 / W)
    assert s.loader_floor_s == pytest.approx((0.04 + 48 * 4e-3) / W)


def test_unstamped_statistics_are_nan():
    window = Window(64)
    for _ in range(8):
        window.update(step(0, cpu_aug_s=None))
    s = window.summary()
    assert math.isnan(s.cpu_cost) and math.isnan(s.device_cost) and math.isnan(s.h2d_s)
    assert math.isnan(s.loader_floor_s) and math.isnan(s.loader_fixed_s)
    assert finite(s.samples_per_s) and not finite(s.cpu_cost) and not finite(None)


def test_throughput_is_measured_over_worker_rounds():
    # Workers started together deliver batches in bursts: one long wait, then W-1 at once.
    window = Window(64)
    for i in range(40):
        wait = 0.3 if i % W == 0 else 0.0
        window.update(step(0, step_s=wait + 0.025, wait=wait))
    assert window.summary().samples_per_s == pytest.approx(W * B / (0.3 + W * 0.025))


def test_window_keeps_the_most_recent_steps_and_resets():
    window = Window(4)
    for t in (1.0, 1.0, 0.1, 0.1, 0.1, 0.1):
        window.update(step(0, step_s=t, num_workers=0))
    assert len(window) == 4 and window.summary().step_s == pytest.approx(0.1)
    window.reset()
    assert len(window) == 0 and window.summary().steps == 0.0


def test_summary_crosses_ranks_as_a_plain_dict():
    window = Window(16)
    for _ in range(4):
        window.update(step(8))
    s = window.summary()
    d = s.to_dict()
    assert all(isinstance(v, float) for v in d.values())
    assert set(d) == {f.name for f in fields(WindowSummary)}
    back = WindowSummary.from_dict(d).to_dict()
    assert all(back[k] == v or (math.isnan(back[k]) and math.isnan(v)) for k, v in d.items())
    # Back from a reduction: extra keys are ignored, missing ones unknown.
    back = WindowSummary.from_dict({"samples_per_s": 5, "steps": 4.0, "extra": 1.0})
    assert (back.samples_per_s, back.steps) == (5.0, 4.0) and math.isnan(back.wait_s)
