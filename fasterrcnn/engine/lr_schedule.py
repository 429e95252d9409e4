"""Learning-rate schedules with linear warm-up: the paper's step decay, or a half cosine.

The learning rate of iteration ``it`` (0-based: the first iteration is ``it = 0``) is::

    lr(it) = base_lr * decay(it) * warmup(it)
    step:   decay(it) = gamma ** (number of steps s with s <= it)
    cosine: decay(it) = (1 + cos(pi * it / max_iter)) / 2        (1 at it = 0, 0 at max_iter)
    warmup(it) = warmup_factor * (1 - it / warmup_iters) + it / warmup_iters   if it < warmup_iters
               = 1                                                              otherwise

so with ``lr_steps = (50000,)`` (py-faster-rcnn's ``stepsize``) iterations ``0..49999`` use
``base_lr`` and iteration ``50000`` onwards uses ``base_lr * gamma``. The cosine schedule
(Loshchilov and Hutter's SGDR without restarts; detectron2's ``WarmupCosineLR``) has no steps to
place: it follows ``max_iter``, lowering the rate a little at a time instead of by 10x twice.

Linear scaling rule (multi-GPU): ``train.lr`` is the learning rate *of the run as configured*;
it is not rescaled automatically. The global batch is ``train.images_per_batch * world_size``
(every GPU takes ``images_per_batch`` images). When changing the global batch from ``B0`` to
``B``, scale the learning rate proportionally, ``lr = lr0 * B / B0`` (Goyal et al., 2017), and
use a warm-up (``train.warmup_iters`` of a few hundred iterations) for large learning rates. The
paper's setting is one image per batch with ``lr = 0.001``; 8 GPUs x 2 images therefore call for
``lr = 0.016`` and roughly ``1/16`` of the iterations (:func:`scaled_lr`).

The scheduler's whole state is the iteration counter, which keeps resuming trivial.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from typing import Any, Mapping, Sequence

import torch

from ..config_train import LR_SCHEDULES, TrainConfig


def lr_at(
    iteration: int,
    base_lr: float,
    steps: Sequence[int],
    gamma: float,
    warmup_iters: int,
    warmup_factor: float,
    *,
    schedule: str = "step",
    max_iter: int | None = None,
) -> float:
    """Learning rate of (0-based) ``iteration`` under ``schedule`` ("step": decay by ``gamma`` at
    each of ``steps``; "cosine": a half cosine to 0 at ``max_iter``) with linear warm-up."""
    if iteration < 0:
        raise ValueError(f"iteration must be >= 0, got {iteration}")
    if schedule == "step":
        factor = gamma ** bisect_right(sorted(steps), iteration)
    elif schedule == "cosine":
        if max_iter is None or max_iter <= 0:
            raise ValueError(f"the cosine schedule needs max_iter > 0, got {max_iter}")
        factor = 0.5 * (1.0 + math.cos(math.pi * min(iteration, max_iter) / max_iter))
    else:
        raise ValueError(f"schedule must be one of {LR_SCHEDULES}, got {schedule!r}")
    if iteration < warmup_iters:
        alpha = iteration / warmup_iters
        factor *= warmup_factor * (1.0 - alpha) + alpha
    return base_lr * factor


def scaled_lr(base_lr: float, base_batch: int, global_batch: int) -> float:
    """Linear scaling rule: the learning rate for ``global_batch`` given one for ``base_batch``."""
    if base_batch <= 0 or global_batch <= 0:
        raise ValueError("batch sizes must be positive")
    return base_lr * global_batch / base_batch


class StepWarmupScheduler:
    """Writes :func:`lr_at` of the current iteration into an optimizer's parameter groups
    (step decay by default; ``schedule="cosine"`` with ``max_iter`` for the half cosine).

    Use: ``scheduler.apply()`` before the optimizer step of an iteration, ``scheduler.step()``
    after it (also after a skipped step: the schedule follows iterations, not updates).
    A parameter group may carry ``"lr_mult"`` to scale its learning rate.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        base_lr: float,
        steps: Sequence[int],
        gamma: float,
        warmup_iters: int = 0,
        warmup_factor: float = 1.0,
        iteration: int = 0,
        *,
        schedule: str = "step",
        max_iter: int | None = None,
    ) -> None:
        lr_at(0, base_lr, steps, gamma, 0, 1.0, schedule=schedule, max_iter=max_iter)  # checks
        self.optimizer = optimizer
        self.base_lr = float(base_lr)
        self.steps = tuple(int(s) for s in steps)
        self.gamma = float(gamma)
        self.warmup_iters = int(warmup_iters)
        self.warmup_factor = float(warmup_factor)
        self.iteration = int(iteration)
        self.schedule = schedule
        self.max_iter = max_iter

    @classmethod
    def from_config(
        cls, optimizer: torch.optim.Optimizer, train: TrainConfig, iteration: int = 0
    ) -> "StepWarmupScheduler":
        return cls(
            optimizer,
            train.lr,
            train.lr_steps,
            train.lr_gamma,
            train.warmup_iters,
            train.warmup_factor,
            iteration,
            schedule=train.lr_schedule,
            max_iter=train.max_iter,
        )

    def lr(self) -> float:
        """Learning rate of the current iteration."""
        return lr_at(
            self.iteration,
            self.base_lr,
            self.steps,
            self.gamma,
            self.warmup_iters,
            self.warmup_factor,
            schedule=self.schedule,
            max_iter=self.max_iter,
        )

    def apply(self) -> float:
        """Set the current learning rate on every parameter group; returns it."""
        lr = self.lr()
        for group in self.optimizer.param_groups:
            group["lr"] = lr * float(group.get("lr_mult", 1.0))
        return lr

    def step(self) -> None:
        self.iteration += 1

    def state_dict(self) -> dict[str, int]:
        return {"iteration": self.iteration}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.iteration = int(state["iteration"])
