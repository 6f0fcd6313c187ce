"""Tests for the controller's records: StepStats (built stage by stage) and Decision."""

from __future__ import annotations

import pickle
import re

import pytest

from ff_lightning.control.records import KINDS, MODES, Decision, StepStats


def test_step_stats_starts_empty_and_is_filled_stage_by_stage():
    record = StepStats()
    assert (record.batch_size, record.n_device, record.data_wait_s, record.step_s) == (0, 0, 0, 0)
    assert record.cpu_aug_s is None and record.n_cpu is None and record.ratio is None
    # The worker's collate, the device stage and the front end each fill their fields.
    record.batch_size, record.cpu_aug_s, record.prep_s, record.ratio = 8, 0.02, 0.01, 0.25
    record.n_device, record.device_aug_s, record.h2d_s = 2, 0.003, 0.001
    record.data_wait_s, record.step_s, record.num_workers = 0.004, 0.05, 2
    assert record.check() is record
    assert record.n_cpu == 6


def test_step_stats_positional_and_keyword_construction_keep_their_meaning():
    a = StepStats(16, 4, 0.01, 0.1)
    b = StepStats(batch_size=16, n_device=4, data_wait_s=0.01, step_s=0.1)
    assert a == b and a.device_aug_s == 0.0 and a.num_workers == 0


def test_step_stats_check_keeps_an_explicit_n_cpu():
    assert StepStats(batch_size=8, n_device=2, n_cpu=5).check().n_cpu == 5


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"batch_size": 0}, "`batch_size` must be positive, got 0"),
        ({"batch_size": -3}, "`batch_size` must be positive, got -3"),
        ({"batch_size": 4, "n_device": 5}, "`n_device` must be in [0, batch_size=4], got 5"),
        ({"batch_size": 4, "n_device": -1}, "`n_device` must be in [0, batch_size=4], got -1"),
        ({"batch_size": 4, "step_s": -0.1}, "must be non-negative"),
        ({"batch_size": 4, "data_wait_s": -0.1}, "must be non-negative"),
        ({"batch_size": 4, "device_aug_s": -0.1}, "must be non-negative"),
    ],
)
def test_step_stats_check_rejects_impossible_records(kwargs, message):
    record = StepStats(**kwargs)  # construction never raises: the record may be unfinished
    with pytest.raises(ValueError, match=re.escape(message)):
        record.check()


def test_step_stats_pickles_across_the_worker_boundary():
    record = StepStats(batch_size=8, cpu_aug_s=0.02, prep_s=0.01, ratio=0.5)
    assert pickle.loads(pickle.dumps(record)) == record


def test_decision_round_trips_and_ignores_unknown_keys():
    d = Decision(0.25, "explore: trying r=0.25", "explore", throughput=900.0, step=0.1, index=3)
    assert Decision.from_dict(d.to_dict()) == d
    assert Decision.from_dict({**d.to_dict(), "from_a_newer_version": 1}) == d


def test_kinds_and_modes():
    assert MODES == ("auto", "off", "gpu", "fixed")
    kinds = {"init", "model", "explore", "revert", "hold", "best", "memory", "mode", "workers"}
    assert set(KINDS) == kinds
