"""Training and inference around the model: :func:`train` runs the schedule a config names."""

from __future__ import annotations

import os
from typing import Any, Iterable, Sequence

import torch

from ..config import Config, ConfigError
from .alternating import train_alternating
from .trainer import ValFn, train_joint


def train(
    cfg: Config,
    train_set: Any,
    *,
    out_dir: str | os.PathLike,
    classes: Sequence[str],
    val_fn: ValFn | None = None,
    resume: str | os.PathLike | None = None,
    deterministic: bool = False,
    device: str | torch.device = "cpu",
    progress: bool = True,
    allow_config_changes: Iterable[str] = (),
) -> dict[str, Any]:
    """Train a detector with the schedule ``cfg.train.schedule`` names (the paper's §3.2):
    ``"joint"`` (approximate joint training, :func:`.trainer.train_joint`), ``"exact-joint"``
    (non-approximate joint training: the same loop, the RoI losses also train the RPN's box
    deltas through the proposals' coordinates; needs RoIAlign pooling) or ``"alternating"``
    (the 4 steps, :func:`.alternating.train_alternating`). Returns the schedule's summary."""
    common = dict(out_dir=out_dir, classes=classes, val_fn=val_fn, resume=resume,
                  deterministic=deterministic, device=device, progress=progress)
    schedule = cfg.train.schedule
    if schedule == "alternating":
        if tuple(allow_config_changes):
            raise ConfigError("allowed config changes on resume apply to the joint schedule only")
        return train_alternating(cfg, train_set, **common)
    if schedule in ("joint", "exact-joint"):
        return train_joint(cfg, train_set, allow_config_changes=allow_config_changes, **common)
    raise ConfigError(f"unknown train.schedule {schedule!r}")


__all__ = ["train", "train_alternating", "train_joint"]
