"""The non-finite guard: :class:`TrainingDiverged`, the count of skipped optimiser steps
(:class:`NonFiniteGuard`) and the check that the weights are still finite before a save."""

from __future__ import annotations

import os
import shutil
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


def previous_path(last_path: Path) -> Path:
    """Where the checkpoint before ``last.pt`` is kept (``.last.pt.prev``) while training runs."""
    return last_path.with_name(f".{last_path.name}.prev")


def keep_previous(last_path: Path) -> None:
    """Before ``last.pt`` is overwritten, keep the current one as :func:`previous_path` (a hard
    link where the file system has them, else a copy), so a checkpoint whose weights then turn
    out to diverge can be replaced by the one before it."""
    if not last_path.is_file():
        return
    prev, tmp = previous_path(last_path), last_path.with_name(f".{last_path.name}.prev.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(last_path, tmp)
    except OSError:
        shutil.copy2(last_path, tmp)
    os.replace(tmp, prev)


def keep_good_checkpoint(last_path: Path, last_saved: int, prev_saved: int, first_bad: int) -> int:
    """On divergence: ``last.pt`` written at iteration ``first_bad - 1`` holds the very weights
    that gave the first non-finite loss, so it is not a good checkpoint: the previous one (saved
    at ``prev_saved``) takes its place, or, without one, it is renamed ``last.pt.diverged``.
    Returns the iteration of the checkpoint now in ``last.pt`` (-1: none)."""
    prev = previous_path(last_path)
    if last_saved < first_bad - 1 or not last_path.is_file():
        prev.unlink(missing_ok=True)
        return last_saved if last_path.is_file() else -1
    if prev.is_file() and prev_saved >= 0:
        os.replace(prev, last_path)
        return prev_saved
    os.replace(last_path, last_path.with_name(last_path.name + ".diverged"))
    return -1


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
