"""The training loop: approximate joint training, the paper's end-to-end scheme.

:func:`train_joint` sums the RPN and Fast R-CNN losses of ``model.loss(images, targets)`` each
iteration, back-propagates through everything at once (proposals are constants) and takes one
optimiser step. With ``train.schedule = "exact-joint"`` the same loop runs the paper's
non-approximate joint training: ``model.loss(images, targets, exact=True)``, whose proposals carry
the gradient of the RPN's box deltas (see :meth:`~fasterrcnn.modeling.faster_rcnn.FasterRCNN.loss`).
Around it: atomic ``last.pt`` / ``model_final.pt`` checkpoints and bit-exact
resuming, skipped non-finite steps and :class:`~fasterrcnn.engine.guard.TrainingDiverged`, AMP,
DDP under torchrun, weight averaging, periodic evaluation that leaves the RNG untouched, frozen
BatchNorm, and partial training (``stages``, ``proposal_fn``) for the alternating schedule.

The account for users is docs/training.md ("Inside the training loop"). The pieces of one
iteration are in :mod:`fasterrcnn.engine.step`, resuming in :mod:`fasterrcnn.engine.resume`, the
non-finite guard in :mod:`fasterrcnn.engine.guard`, seeding and devices in
:mod:`fasterrcnn.engine.runtime`.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
from torch import nn

from ..config import Config, ConfigError, to_dict
from ..data.loader import build_train_loader
from . import distributed as dist_utils
from .checkpoint import export_weights, load_state_strict, remove_stale_temp_files, save_checkpoint
from .guard import keep_good_checkpoint, keep_previous, previous_path
from .exact_joint import ExactJointLoss, validate_exact_joint
from .guard import NonFiniteGuard, check_finite_weights
from .logger import TrainLogger, truncate_log
from .lr_schedule import StepWarmupScheduler
from .resume import read_resume_checkpoint, restore_optimisation, restore_rng, sampler_start, training_state
from .rng_state import capture_rng_state, restore_rng_state
from .runtime import _Determinism, enable_determinism, resolve_device, seed_everything
from .step import (
    ProposalFn,
    StagedLoss,
    amp_dtype,
    build_ema,
    build_optimizer,
    forward_backward,
    frozen_batchnorms,
    optimizer_step,
    set_train_mode,
    skip_step,
    to_device,
)

ValFn = Callable[[nn.Module], Mapping[str, Any]]


def _is_due(iteration: int, period: int) -> bool:
    return period > 0 and iteration % period == 0


def _validate(cfg: Config, classes: Sequence[str]) -> None:
    t = cfg.train
    if t.images_per_batch < 1:
        raise ConfigError(f"train.images_per_batch must be >= 1, got {t.images_per_batch}")
    if t.max_iter < 0:
        raise ConfigError(f"train.max_iter must be >= 0, got {t.max_iter}")
    if t.max_bad_steps < 1:
        raise ConfigError(f"train.max_bad_steps must be >= 1, got {t.max_bad_steps}")
    for name in ("hflip_prob", "vflip_prob", "transpose_prob"):
        if not 0.0 <= getattr(t, name) <= 1.0:
            raise ConfigError(f"train.{name} must be in [0, 1], got {getattr(t, name)}")
    if t.lr <= 0 or not math.isfinite(t.lr):
        raise ConfigError(f"train.lr must be a positive number, got {t.lr}")
    if t.num_workers < 0:
        raise ConfigError(f"train.num_workers must be >= 0, got {t.num_workers}")
    if t.schedule == "exact-joint":
        validate_exact_joint(cfg)
    if len(classes) != cfg.model.num_classes:
        raise ConfigError(
            f"{len(classes)} class names given but model.num_classes={cfg.model.num_classes}"
        )


# --------------------------------------------------------------------------- the loop


def train_joint(
    cfg: Config,
    train_set: Any,
    *,
    out_dir: str | os.PathLike,
    classes: Sequence[str],
    val_fn: ValFn | None = None,
    resume: str | os.PathLike | None = None,
    deterministic: bool = False,
    device: str | torch.device = "cpu",
    model: nn.Module | None = None,
    progress: bool = True,
    allow_config_changes: Iterable[str] = (),
    stages: Sequence[str] | None = None,
    proposal_fn: ProposalFn | None = None,
) -> dict[str, Any]:
    """Train a detector on ``train_set`` (a :class:`~fasterrcnn.data.dataset.DetectionDataset`)
    with approximate joint training (``train.schedule="joint"``), non-approximate joint training
    (``"exact-joint"``), or one step of the alternating schedule (``stages``).
    :func:`fasterrcnn.engine.train` picks the schedule a config names.

    ``resume``: None (fresh run), ``"auto"`` (``out_dir/last.pt`` if it exists) or a checkpoint
    path; its config must match ``cfg`` except operational keys
    (:data:`~fasterrcnn.engine.checkpoint_config.RESUME_FREE_KEYS`) and ``allow_config_changes``
    (e.g. ``["train.lr"]`` to resume a diverged run with a lower learning rate).
    ``model``: a prebuilt module with ``loss(images, targets)`` (default ``build_model(cfg.model)``).
    ``stages`` / ``proposal_fn``: train only some losses / on given proposals (the alternating
    schedule's steps); only parameters with ``requires_grad`` are optimised, so freeze the rest first.

    Returns ``{"iteration", "start_iteration", "metrics", "losses", "skipped_steps",
    "last_checkpoint", "final_weights", "elapsed_s"}``. Raises
    :class:`~fasterrcnn.engine.guard.TrainingDiverged` on divergence and
    :class:`~fasterrcnn.engine.checkpoint.CheckpointError` for a bad resume.
    """
    if cfg.train.schedule not in ("joint", "exact-joint") and stages is None:
        raise ConfigError(f"train.schedule is {cfg.train.schedule!r}: run it with fasterrcnn.engine.train, "
                          "which runs its steps (train_joint runs the joint schedule or one given step)")
    with dist_utils.group_from_env(str(device)):
        saved = _Determinism.capture()
        try:
            return _train(
                cfg, train_set, out_dir=Path(out_dir), classes=tuple(classes), val_fn=val_fn,
                resume=resume, deterministic=deterministic, device=device, model=model,
                progress=progress, allow=tuple(allow_config_changes),
                stages=stages, proposal_fn=proposal_fn,
            )
        finally:
            saved.restore()


def _train(
    cfg: Config,
    train_set: Any,
    *,
    out_dir: Path,
    classes: tuple[str, ...],
    val_fn: ValFn | None,
    resume: str | os.PathLike | None,
    deterministic: bool,
    device: str | torch.device,
    model: nn.Module | None,
    progress: bool,
    allow: tuple[str, ...],
    stages: Sequence[str] | None = None,
    proposal_fn: ProposalFn | None = None,
) -> dict[str, Any]:
    t0 = time.perf_counter()
    tcfg = cfg.train
    _validate(cfg, classes)
    dinfo = dist_utils.info()
    main = dinfo.rank == 0
    dev = resolve_device(device, dinfo.local_rank)
    autocast_dtype = amp_dtype(tcfg.amp, dev)
    if deterministic:
        enable_determinism()
    last_path = out_dir / "last.pt"
    final_path = out_dir / "model_final.pt"
    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temp_files(out_dir)

    # ---- checkpoint to resume from (every rank reads it: shared file system)
    ckpt, resume_path, tolerated = read_resume_checkpoint(resume, last_path, cfg, classes, allow)

    # ---- model, optimiser, schedule, scaler (same init on every rank: seeded identically)
    seed_everything(tcfg.seed)
    if model is None:
        from ..modeling.builder import build_model

        # resuming: the checkpoint holds every weight, the ImageNet file need not exist any more
        model = build_model(cfg.model, load_backbone_weights=ckpt is None)
    model.to(dev)
    start_iter = 0
    if ckpt is not None:
        load_state_strict(model, ckpt["model"], resume_path or "<checkpoint>")
        start_iter = int(ckpt["iteration"])
    model.train()
    optimizer = build_optimizer(model, tcfg.momentum, tcfg.weight_decay, tcfg.lr, tcfg.optimizer)
    scheduler = StepWarmupScheduler.from_config(optimizer, tcfg, iteration=start_iter)
    scaler = torch.amp.GradScaler("cuda") if autocast_dtype == torch.float16 else None
    ema = build_ema(model, tcfg.ema_decay) if tcfg.ema_decay > 0 else None
    if ckpt is not None:
        restore_optimisation(ckpt, resume_path, optimizer=optimizer, scheduler=scheduler, scaler=scaler, ema=ema)

    # ---- data
    global_batch = tcfg.images_per_batch * dinfo.world_size
    start_epoch, start_position, sampler_note = sampler_start(ckpt, global_batch, len(train_set))
    tl = build_train_loader(
        train_set, tcfg, rank=dinfo.rank, world_size=dinfo.world_size,
        start_epoch=start_epoch, start_position=start_position, pin_memory=dev.type == "cuda",
    )

    # ---- RNG: continue exactly, or a per-rank stream for the training randomness
    restore_rng(ckpt, tcfg.seed, dinfo.rank, start_iter)

    if main and ckpt is not None:
        truncate_log(out_dir / "log.jsonl", start_iter)
    logger = TrainLogger(
        out_dir, max_iter=tcfg.max_iter, start_iter=start_iter, log_period=tcfg.log_period,
        images_per_iter=global_batch, enabled=main, progress=progress,
    )
    if main:
        (out_dir / "config.json").write_text(json.dumps(to_dict(cfg), indent=2) + "\n")
    logger.info(
        f"training {type(model).__name__} on {len(train_set)} images, {len(classes)} classes; "
        f"global batch {global_batch} ({tcfg.images_per_batch} x {dinfo.world_size} process(es)), "
        f"lr {tcfg.lr}, {tcfg.max_iter} iterations, device {dev}, amp {tcfg.amp}"
        + (", deterministic" if deterministic else "")
    )
    if ckpt is not None:
        logger.info(
            f"resumed from {resume_path} at iteration {start_iter} "
            f"(epoch {start_epoch}, batch {start_position})"
        )
        for line in tolerated:
            logger.info(f"config change on resume: {line}")
        if sampler_note:
            logger.warning(sampler_note)

    if dinfo.world_size > 1 and dev.type == "cpu" and dist_utils.has_batch_norm(model):
        logger.warning(
            "BatchNorm statistics are per process in CPU multi-process training (SyncBatchNorm "
            "needs CUDA): results differ from a single-process run with the same global batch"
        )
    staged = stages is not None or proposal_fn is not None
    exact = tcfg.schedule == "exact-joint" and not staged
    runner = dist_utils.wrap_for_training(
        StagedLoss(model, stages, proposal_fn) if staged else (ExactJointLoss(model) if exact else model),
        dev, sync_bn=tcfg.sync_bn,
    )
    frozen_bn = frozen_batchnorms(model)  # after wrapping: SyncBatchNorm conversion replaces layers
    set_train_mode(model, frozen_bn)
    params = [p for p in model.parameters() if p.requires_grad]
    iteration = start_iter
    last_saved = start_iter if ckpt is not None else -1
    guard = NonFiniteGuard(tcfg.max_bad_steps)
    metrics: dict[str, Any] = {}
    logged: dict[str, float] = {}

    prev_saved = -1  # the checkpoint before last.pt (kept until training ends; see guard.py)
    save_due = False  # a save fell on a skipped step: it is written at the next good step

    def save_last() -> None:
        nonlocal last_saved, prev_saved
        check_finite_weights(model, iteration, tcfg.lr, last_path)
        rngs = dist_utils.all_gather_object(capture_rng_state())
        if main:
            keep_previous(last_path)
            prev_saved = last_saved
            save_checkpoint(last_path, training_state(
                cfg=cfg, classes=classes, model=model, iteration=iteration, optimizer=optimizer,
                scheduler=scheduler, scaler=scaler, ema=ema,
                sampler=tl.sampler.state_at(iteration - start_iter), rngs=rngs,
            ))
            logger.info(f"saved checkpoint {last_path} (iteration {iteration})")
        last_saved = iteration

    def evaluate() -> dict[str, Any]:
        result: dict[str, Any] = {}
        if main and val_fn is not None:
            rng = capture_rng_state()
            model.eval()
            try:
                with torch.no_grad():
                    result = dict(val_fn(model if ema is None else ema.module) or {})
            finally:
                set_train_mode(model, frozen_bn)
                restore_rng_state(rng)
            logger.log_metrics(iteration, result)
        return dist_utils.all_gather_object(result)[0]

    data_iter = iter(tl.loader)
    try:
        while iteration < tcfg.max_iter:
            images, targets = next(data_iter)
            images = [im.to(dev, non_blocking=True) for im in images]
            targets = to_device(targets, dev)
            lr = scheduler.apply()
            outcome = forward_backward(
                runner, images, targets, optimizer=optimizer, scaler=scaler, params=params,
                device=dev, autocast_dtype=autocast_dtype,
            )
            values = outcome.values
            bad = dist_utils.any_rank(not (outcome.loss_ok and outcome.grads_ok))
            iteration += 1
            if bad:
                skip_step(optimizer, scaler)
                logger.warning(
                    guard.bad_step(iteration, values, loss_ok=outcome.loss_ok, grads_ok=outcome.grads_ok)
                )
                if guard.streak >= tcfg.max_bad_steps and main:  # keep only weights of good steps
                    last_saved = keep_good_checkpoint(last_path, last_saved, prev_saved,
                                                      iteration - guard.streak + 1)
                guard.check_diverged(
                    iteration, values, lr=lr, global_batch=global_batch, last_path=last_path,
                    last_saved=last_saved,
                )
            else:
                guard.good_step()
                optimizer_step(optimizer, scaler, params, outcome.grad_norm, tcfg.grad_clip_norm)
                if ema is not None:
                    ema.update_parameters(model)
            scheduler.step()

            logger.accumulate(values)
            logger.progress(iteration, {k: v for k, v in values.items()}, lr)
            if logger.should_log(iteration):
                logged = dist_utils.all_reduce_dict(logger.window_means())
                logger.log(iteration, logged, lr)
            if _is_due(iteration, tcfg.checkpoint_period) or iteration == tcfg.max_iter or save_due:
                save_due = bool(bad) and iteration != tcfg.max_iter  # never during skipped steps
                if not save_due:
                    save_last()
            if _is_due(iteration, tcfg.eval_period) and iteration != tcfg.max_iter:
                metrics = evaluate()

        # ---- the end (also reached when resuming a finished run)
        if last_saved != iteration:
            save_last()
        if main:
            export_weights(final_path, model=model if ema is None else ema.module, cfg=cfg, classes=classes)
            logger.info(f"wrote {final_path}")
            previous_path(last_path).unlink(missing_ok=True)
        if val_fn is not None:
            metrics = evaluate()
        dist_utils.barrier()
    finally:
        del data_iter
        logger.close()
    return {
        "iteration": iteration,
        "start_iteration": start_iter,
        "metrics": metrics,
        "losses": logged,
        "skipped_steps": guard.skipped,
        "last_checkpoint": str(last_path),
        "final_weights": str(final_path),
        "elapsed_s": time.perf_counter() - t0,
    }
