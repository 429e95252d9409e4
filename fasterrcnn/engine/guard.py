"""The non-finite guard: :class:`TrainingDiverged`, the count of skipped optimiser steps
(:class:`NonFiniteGuard`) and the check that the weights are still finite before a save."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import torch
from torch import nn


class TrainingDiverged(RuntimeError):
    """Too many consecutive non-finite losses/gradients; ``last.pt`` was left untouched."""

    def __init__(self, message: str, iteration: int, checkpoint: str | None) -> None:
        super().__init__(message)
        self.iteration = iteration
        self.checkpoint = checkpoint


def _params_finite(model: nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


def _fmt_losses(values: Mapping[str, float]) -> str:
    return ", ".join(f"{k}={v:.4g}" for k, v in values.items())


def check_finite_weights(model: nn.Module, iteration: int, lr: float, last_path: Path) -> None:
    """Raise :class:`TrainingDiverged` (before anything is written) if a weight is non-finite."""
    if not _params_finite(model):
        raise TrainingDiverged(
            f"training diverged: the weights became non-finite by iteration {iteration}; "
            f"lower train.lr (now {lr}) or raise train.warmup_iters. "
            f"{last_path} was left as it was.",
            iteration, str(last_path) if last_path.exists() else None,
        )


class NonFiniteGuard:
    """Counts the iterations whose optimiser step was skipped for a non-finite loss or gradient:
    ``skipped`` in all and ``streak`` in a row; ``max_bad_steps`` in a row raise
    :class:`TrainingDiverged`."""

    def __init__(self, max_bad_steps: int) -> None:
        self.max_bad_steps = max_bad_steps
        self.streak = 0
        self.skipped = 0

    def good_step(self) -> None:
        self.streak = 0

    def bad_step(self, iteration: int, values: Mapping[str, float], *, loss_ok: bool, grads_ok: bool) -> str:
        """Count a skipped step; returns the warning to give about it."""
        self.streak += 1
        self.skipped += 1
        what = "loss" if not loss_ok else ("gradients" if not grads_ok else "loss/gradients on another rank")
        return (
            f"iteration {iteration}: non-finite {what} ({_fmt_losses(values)}); "
            f"optimizer step skipped ({self.streak}/{self.max_bad_steps} in a row)"
        )

    def check_diverged(
        self,
        iteration: int,
        values: Mapping[str, float],
        *,
        lr: float,
        global_batch: int,
        last_path: Path,
        last_saved: int,
    ) -> None:
        """Raise :class:`TrainingDiverged` once ``max_bad_steps`` steps in a row were skipped."""
        if self.streak >= self.max_bad_steps:
            kept = str(last_path) if last_path.exists() else None
            raise TrainingDiverged(
                f"training diverged: {self.streak} consecutive iterations "
                f"({iteration - self.streak + 1}..{iteration}) had non-finite losses or "
                f"gradients (last: {_fmt_losses(values)}). The learning rate is probably "
                f"too high for the batch size (lr {lr:.3g}, global batch {global_batch}): "
                "lower train.lr, raise train.warmup_iters, or set train.grad_clip_norm. "
                + (f"The last good checkpoint {kept} (iteration {last_saved}) was left "
                   "untouched." if kept else "No checkpoint had been written yet."),
                iteration, kept,
            )
