"""Resuming a training run: reading and checking ``last.pt``, putting the optimiser, schedule,
AMP scaler, weight average, data position and RNG streams back, and assembling the state that
``last.pt`` holds (no tensors of the model's own shapes: bookkeeping only).

The training loop (:mod:`fasterrcnn.engine.trainer`) calls these in order; each raises
:class:`~fasterrcnn.engine.checkpoint.CheckpointError` naming the file when a checkpoint does not
fit the run.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from ..config import Config, to_dict
from ..data.loader import derive_seed
from .checkpoint import (
    FORMAT,
    VERSION,
    CheckpointError,
    check_compatible,
    is_training_checkpoint,
    load_checkpoint,
    load_state_strict,
)
from .rng_state import restore_rng_state
from .runtime import seed_everything


def resolve_resume(resume: str | os.PathLike | None, last: Path) -> Path | None:
    """The checkpoint to resume from: ``None`` (start afresh), ``"auto"`` (``last`` if it exists)
    or a path."""
    if resume is None:
        return None
    if str(resume) == "auto":
        return last if last.is_file() else None
    return Path(resume)


def read_resume_checkpoint(
    resume: str | os.PathLike | None,
    last_path: Path,
    cfg: Config,
    classes: Sequence[str],
    allow: Sequence[str],
) -> tuple[dict[str, Any] | None, Path | None, list[str]]:
    """(checkpoint, its path, the config changes ``allow`` tolerated), or (None, None, []) for a
    fresh run. Refuses weight-only exports, other classes and config changes not allowed."""
    path = resolve_resume(resume, last_path)
    if path is None:
        return None, None, []
    ckpt = load_checkpoint(path)
    if not is_training_checkpoint(ckpt):
        raise CheckpointError(
            f"{path}: holds weights only (an export such as model_final.pt), "
            "not a resumable training checkpoint; resume from last.pt"
        )
    tolerated = check_compatible(ckpt, cfg, allow=tuple(allow), path=path)
    if tuple(ckpt["classes"]) != tuple(classes):
        raise CheckpointError(
            f"{path}: checkpoint classes {tuple(ckpt['classes'])} differ from the dataset's {tuple(classes)}"
        )
    return ckpt, Path(path), tolerated


def restore_optimisation(
    ckpt: dict[str, Any],
    path: Path | None,
    *,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: torch.amp.GradScaler | None,
    ema: nn.Module | None,
) -> None:
    """Optimizer, LR schedule, AMP scaler (if both have one) and weight average from ``ckpt``."""
    try:
        optimizer.load_state_dict(ckpt["optimizer"])
    except (ValueError, KeyError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: optimizer state does not fit: {exc}") from None
    scheduler.load_state_dict(ckpt["scheduler"])
    if scaler is not None and ckpt.get("scaler"):
        scaler.load_state_dict(ckpt["scaler"])
    if ema is not None:
        if not ckpt.get("ema"):
            raise CheckpointError(f"{path}: train.ema_decay is set but the checkpoint has no EMA weights")
        load_state_strict(ema, ckpt["ema"], path or "<checkpoint>")


def sampler_start(ckpt: dict[str, Any] | None, global_batch: int, num_images: int) -> tuple[int, int, str]:
    """(epoch, batch position) to continue the data stream from, and a warning ("" if none):
    with another global batch size or dataset size the order continues only approximately."""
    if ckpt is None:
        return 0, 0, ""
    s = ckpt["sampler"]
    epoch, position = int(s["epoch"]), int(s["position"])
    old_batch = int(s.get("global_batch_size", global_batch))
    if old_batch == global_batch and int(s.get("num_images", num_images)) == num_images:
        return epoch, position, ""
    note = (
        f"global batch {old_batch} -> {global_batch} or dataset size {s.get('num_images')} -> "
        f"{num_images} changed since the checkpoint: the data order continues approximately, not exactly"
    )
    return epoch, position * old_batch // global_batch, note


def restore_rng(ckpt: dict[str, Any] | None, seed: int, rank: int, start_iter: int) -> None:
    """Continue this rank's RNG streams exactly from ``ckpt``; without one (or for a rank the
    checkpoint did not have), start a per-rank stream derived from the seed."""
    if ckpt is None:
        seed_everything(derive_seed(seed, rank, 0x7EA1))
        return
    per_rank = ckpt.get("rng_per_rank") or [ckpt["rng"]]
    if rank < len(per_rank):
        restore_rng_state(per_rank[rank])
    else:
        seed_everything(derive_seed(seed, rank, start_iter))


def training_state(
    *,
    cfg: Config,
    classes: Sequence[str],
    model: nn.Module,
    iteration: int,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: torch.amp.GradScaler | None,
    ema: nn.Module | None,
    sampler: dict[str, int],
    rngs: list[Any],
) -> dict[str, Any]:
    """What ``last.pt`` holds: everything :func:`read_resume_checkpoint` and the functions above
    need (``rngs``: one RNG state per rank)."""
    return {
        "format": FORMAT,
        "version": VERSION,
        "config": to_dict(cfg),
        "classes": list(classes),
        "model": model.state_dict(),
        "iteration": iteration,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "ema": ema.state_dict() if ema is not None else None,
        "sampler": sampler,
        "rng": rngs[0],
        "rng_per_rank": rngs if len(rngs) > 1 else None,
    }
