"""engine/step.py: the optimiser's parameter groups and kinds (the training loop that uses them
is tested in test_engine_trainer.py)."""

from __future__ import annotations

import pytest
import torch

from fasterrcnn.config import ConfigError
from fasterrcnn.engine.step import build_optimizer
from test_engine_trainer import TinyDetector, toy_config


def test_optimizer_groups_no_decay_on_biases() -> None:
    model = TinyDetector()
    opt = build_optimizer(model, momentum=0.9, weight_decay=1e-4, lr=0.1)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 1e-4 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim >= 2 for p in decay["params"]) and all(p.ndim == 1 for p in no_decay["params"])
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert len(decay["params"]) + len(no_decay["params"]) == len(trainable)
    assert all(p is not model.frozen.weight for p in [*decay["params"], *no_decay["params"]])


def test_adamw_option_groups_and_decoupled_decay() -> None:
    model = TinyDetector()
    opt = build_optimizer(model, momentum=0.8, weight_decay=0.05, lr=0.01, kind="adamw")
    assert isinstance(opt, torch.optim.AdamW)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert decay["betas"] == (0.8, 0.999)
    # zero gradient: Adam's update is 0, so a decayed weight only shrinks by lr * wd (decoupled)
    w = next(p for p in decay["params"] if p.requires_grad)
    before = w.detach().clone()
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    torch.testing.assert_close(w.detach(), before * (1 - 0.01 * 0.05))
    with pytest.raises(ValueError, match="optimizer"):
        build_optimizer(model, momentum=0.9, weight_decay=0.0, lr=0.1, kind="adam")
    with pytest.raises(ConfigError, match="optimizer"):
        toy_config(optimizer="rmsprop")
