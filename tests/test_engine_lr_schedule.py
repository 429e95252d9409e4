"""Step and cosine learning-rate schedules with linear warm-up: exact values and scheduler state."""

from __future__ import annotations

import pytest
import torch

from fasterrcnn.engine.lr_schedule import StepWarmupScheduler, lr_at, scaled_lr
from test_engine_trainer import toy_config


def test_exact_values_with_warmup_and_steps() -> None:
    kw = dict(base_lr=0.02, steps=(10, 20), gamma=0.1, warmup_iters=4, warmup_factor=0.25)
    got = [lr_at(i, **kw) for i in (0, 1, 2, 3, 4, 9, 10, 19, 20, 1000)]
    expected = [0.02 * 0.25, 0.02 * 0.4375, 0.02 * 0.625, 0.02 * 0.8125, 0.02, 0.02,
                0.02 * 0.1, 0.02 * 0.1, 0.02 * 0.1 * 0.1, 0.02 * 0.1 * 0.1]
    assert got == pytest.approx(expected, rel=1e-12, abs=0)


def test_paper_schedule_and_edge_cases() -> None:
    # py-faster-rcnn VOC: lr 0.001, stepsize 50000 -> 0.0001 from iteration 50000 on
    assert lr_at(49999, 0.001, (50000,), 0.1, 0, 1.0) == 0.001
    assert lr_at(50000, 0.001, (50000,), 0.1, 0, 1.0) == pytest.approx(1e-4, rel=1e-12)
    assert lr_at(0, 0.001, (), 0.1, 0, 1 / 3) == 0.001  # no warm-up: factor unused
    assert lr_at(15, 1.0, (20, 10), 0.5, 0, 1.0) == 0.5  # unsorted steps
    # a step inside the warm-up multiplies both
    assert lr_at(2, 1.0, (1,), 0.1, 4, 0.0) == pytest.approx(0.1 * 0.5, rel=1e-12)
    with pytest.raises(ValueError):
        lr_at(-1, 0.1, (), 0.1, 0, 1.0)


def test_cosine_exact_values_with_warmup() -> None:
    kw = dict(base_lr=0.02, steps=(5,), gamma=0.1, warmup_iters=2, warmup_factor=0.5,
              schedule="cosine", max_iter=8)
    got = [lr_at(i, **kw) for i in (0, 1, 2, 4, 6, 8, 9)]
    # (1 + cos(pi * i / 8)) / 2: 1, 0.96194, 0.85355, 0.5, 0.14645, 0, 0 (held at 0 past max_iter);
    # the steps are not used; the warm-up multiplies as with the step schedule (0.5, 0.75)
    expected = [0.02 * 1.0 * 0.5, 0.02 * 0.9619397662556434 * 0.75, 0.02 * 0.8535533905932737,
                0.02 * 0.5, 0.02 * 0.14644660940672627, 0.0, 0.0]
    assert got == pytest.approx(expected, rel=1e-12, abs=1e-18)
    with pytest.raises(ValueError, match="max_iter"):
        lr_at(0, 0.1, (), 0.1, 0, 1.0, schedule="cosine")
    with pytest.raises(ValueError, match="schedule must be one of"):
        lr_at(0, 0.1, (), 0.1, 0, 1.0, schedule="poly")


def test_cosine_scheduler_from_config_follows_max_iter() -> None:
    p = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.SGD([p], lr=1.0)
    cfg = toy_config(lr=0.1, lr_steps=[1], max_iter=4, warmup_iters=0, lr_schedule="cosine").train
    sched = StepWarmupScheduler.from_config(opt, cfg)
    seen = []
    for _ in range(5):
        seen.append(sched.apply())
        sched.step()
    assert seen == pytest.approx([0.1, 0.1 * (1 + 0.5**0.5) / 2, 0.05, 0.1 * (1 - 0.5**0.5) / 2, 0.0],
                                 rel=1e-12, abs=1e-18)
    assert opt.param_groups[0]["lr"] == 0.0


def test_unknown_lr_schedule_is_a_config_error() -> None:
    from fasterrcnn.config import ConfigError

    with pytest.raises(ConfigError, match="train.lr_schedule must be one of"):
        toy_config(lr_schedule="linear")


def test_linear_scaling_rule() -> None:
    assert scaled_lr(0.001, 1, 16) == pytest.approx(0.016)
    assert scaled_lr(0.02, 4, 2) == pytest.approx(0.01)
    with pytest.raises(ValueError):
        scaled_lr(0.1, 0, 2)


def test_scheduler_applies_and_round_trips() -> None:
    p = torch.nn.Parameter(torch.zeros(2))
    q = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.SGD([{"params": [p]}, {"params": [q], "lr_mult": 2.0}], lr=123.0)
    cfg = toy_config(lr=0.1, lr_steps=[3], lr_gamma=0.5, warmup_iters=2, warmup_factor=0.5).train
    sched = StepWarmupScheduler.from_config(opt, cfg)
    seen = []
    for _ in range(5):
        seen.append(sched.apply())
        assert opt.param_groups[1]["lr"] == pytest.approx(2 * opt.param_groups[0]["lr"])
        sched.step()
    assert seen == pytest.approx([0.05, 0.075, 0.1, 0.05, 0.05], rel=1e-12)
    state = sched.state_dict()
    assert state == {"iteration": 5}
    other = StepWarmupScheduler.from_config(opt, cfg)
    other.load_state_dict(state)
    assert other.lr() == sched.lr()
