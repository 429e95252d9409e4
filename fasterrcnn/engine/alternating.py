"""4-step alternating training (the paper's §3.2), ``train.schedule = "alternating"``.

The steps, each a run of :func:`fasterrcnn.engine.trainer.train_joint` in ``DIR/stepK/`` (with its own
``last.pt``, ``model_final.pt``, logs):

1. **RPN**: a freshly built model (backbone from ``model.backbone.weights``, i.e. ImageNet) trained
   on the RPN losses only (``stages=("rpn",)``; the RoI head is frozen and unused).
2. **Fast R-CNN**: a second freshly built model trained on the RoI-head losses only
   (``stages=("roi",)``, its RPN frozen and unused) on the proposals of the frozen step-1 model.
   Proposals are computed on the fly, for every batch, with ``propose(images,
   training_settings=True)`` on the very images given to the loss (after the flip augmentation),
   in their original-image coordinates. This equals the paper's precomputed proposals (the
   step-1 network is fixed) while staying correct under the random horizontal flip.
3. **RPN fine-tuning on shared convs**: backbone and RoI head from step 2, RPN from step 1; the
   shared conv layers (the whole backbone) are frozen and only the RPN's own layers are trained.
4. **Fast R-CNN fine-tuning**: the step-3 network with backbone and RPN frozen; only the RoI head
   (fc6/fc7 + predictor) is trained, on the proposals of the frozen step-3 network.

The result is one network with shared convs: backbone of step 2, RPN of step 3, RoI head of
step 4 (the step-4 model), exported as ``DIR/model_final.pt`` in the joint-training format, with
the run's config, so ``fasterrcnn eval/detect`` load it unchanged.

Freezing: ``requires_grad=False`` on every parameter a step does not train (the optimiser only sees
the trained ones). BatchNorm layers of a frozen part stay in eval mode (the trainer keeps every
BatchNorm whose parameters are all frozen in eval mode), so their running statistics never drift
and the frozen backbone computes in steps 3-4 exactly what it computes at test time.

Learning rate: every step uses ``train.lr``, starts with the warm-up (``train.warmup_iters``) and
has the step decay of the joint schedule scaled to the step's length ``n_k =
train.alternating_iters[k]``: ``lr_steps_k = round(s * n_k / train.max_iter)`` for each ``s`` in
``train.lr_steps``. With the paper's defaults (70k joint iterations, decay at 50k; steps of
80k/40k/80k/40k) the decays fall at 57143 / 28571 / 57143 / 28571 iterations (py-faster-rcnn:
60k / 30k).

Resume (``resume`` not None): step K counts as done when ``DIR/stepK/model_final.pt`` exists (its
config must match the run's model and classes); done steps are skipped, the first unfinished one
resumes from its ``last.pt`` if there is one. Whenever a step (re)trains, the outputs of the later
steps (and ``DIR/model_final.pt``) are deleted: they derive from the old result.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from ..config import Config, ConfigError, to_dict
from . import distributed as dist_utils
from .checkpoint import (
    CheckpointError,
    check_compatible,
    export_weights,
    load_checkpoint,
    load_model,
    load_state_strict,
)
from .runtime import resolve_device, seed_everything
from .trainer import train_joint

ValFn = Callable[[nn.Module], Mapping[str, Any]]

NUM_STEPS = 4
STEP_TITLES = (
    "RPN from the ImageNet-initialised backbone",
    "Fast R-CNN on the step-1 proposals",
    "RPN fine-tuning on the frozen shared convs",
    "Fast R-CNN fine-tuning on the step-3 proposals",
)
STEP_STAGES: tuple[tuple[str, ...], ...] = (("rpn",), ("roi",), ("rpn",), ("roi",))
# the top-level parts of FasterRCNN each step trains (all other parameters are frozen)
STEP_TRAINED: tuple[tuple[str, ...], ...] = (
    ("backbone", "rpn"),
    ("backbone", "roi_heads"),
    ("rpn",),
    ("roi_heads",),
)
PARTS = ("backbone", "rpn", "roi_heads")


# --------------------------------------------------------------------------- pure pieces


def step_dir(out_dir: str | os.PathLike, step: int) -> Path:
    """``DIR/stepK`` (K = 1..4)."""
    return Path(out_dir) / f"step{step}"


def scaled_lr_steps(lr_steps: Sequence[int], max_iter: int, step_iters: int) -> tuple[int, ...]:
    """The joint schedule's decay iterations scaled to a step of ``step_iters`` iterations."""
    if not lr_steps:
        return ()
    if max_iter <= 0:
        raise ConfigError(
            "train.max_iter must be > 0 with the alternating schedule: it is the reference "
            "length by which train.lr_steps are scaled to each step"
        )
    return tuple(int(round(s * step_iters / max_iter)) for s in lr_steps)


def step_config(cfg: Config, step: int) -> Config:
    """The config of step ``step`` (1..4): its iterations and scaled lr decay points."""
    t = cfg.train
    n = int(t.alternating_iters[step - 1])
    train_cfg = dataclasses.replace(
        t, max_iter=n, lr_steps=scaled_lr_steps(t.lr_steps, t.max_iter, n)
    )
    return dataclasses.replace(cfg, train=train_cfg)


def validate_alternating(cfg: Config) -> None:
    iters = cfg.train.alternating_iters
    if len(iters) != NUM_STEPS or any(int(n) < 0 for n in iters):
        raise ConfigError(
            f"train.alternating_iters must be 4 non-negative iteration counts, got {tuple(iters)}"
        )
    scaled_lr_steps(cfg.train.lr_steps, cfg.train.max_iter, 1)  # raises for max_iter <= 0


def set_trainable(model: nn.Module, parts: Sequence[str]) -> None:
    """Freeze every top-level part of the detector not in ``parts``; leave those in ``parts``
    as built (a backbone keeps its own frozen stages, e.g. VGG's conv1-conv2)."""
    for name in PARTS:
        part = getattr(model, name, None)
        if name not in parts and part is not None:
            part.requires_grad_(False)


def merge_states(
    base: Mapping[str, torch.Tensor], donor: Mapping[str, torch.Tensor], prefix: str
) -> dict[str, torch.Tensor]:
    """``base`` with every entry under ``prefix`` (e.g. ``"rpn."``) taken from ``donor``."""
    out = {k: v for k, v in base.items() if not k.startswith(prefix)}
    taken = {k: v for k, v in donor.items() if k.startswith(prefix)}
    if not taken:
        raise CheckpointError(f"no '{prefix}*' weights to take over")
    out.update(taken)
    return out


def proposal_boxes(proposer: nn.Module, images: list[torch.Tensor]) -> list[torch.Tensor]:
    """Training-setting proposals (e.g. top 2000) of a frozen network, original coordinates."""
    return [p["boxes"] for p in proposer.propose(images, training_settings=True)]


# --------------------------------------------------------------------------- the schedule


def train_alternating(
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
) -> dict[str, Any]:
    """Run the 4-step alternating schedule in ``out_dir`` (see the module docstring).

    ``resume``: None (fresh run: every step trains) or ``"auto"``, ``out_dir`` itself or one of
    its ``stepK/last.pt`` files (continue: skip finished steps, resume the current one).
    ``val_fn(model)`` evaluates the unified network: periodically in step 4 (``eval_period``) and
    at the end.

    Returns the :func:`~fasterrcnn.engine.trainer.train_joint` summary keys (``iteration`` and
    ``skipped_steps`` summed over the steps, ``metrics``/``losses``/``last_checkpoint`` of step 4,
    ``final_weights`` = ``DIR/model_final.pt``) plus ``"steps"``: one dict per step, the step's
    ``train`` summary with ``"step"`` and ``"reused": False``, or ``{"step", "reused": True,
    "final_weights"}`` for a step found finished.
    """
    with dist_utils.group_from_env(str(device)):  # once for all four steps
        return _run(
            cfg, train_set, out_dir=Path(out_dir), classes=tuple(classes), val_fn=val_fn,
            resume=resume, deterministic=deterministic, device=device, progress=progress,
        )


def _check_resume_target(resume: str | os.PathLike, out_dir: Path) -> None:
    if str(resume) == "auto":
        return
    target = Path(resume).resolve()
    root = out_dir.resolve()
    steps = {step_dir(root, k) / "last.pt" for k in range(1, NUM_STEPS + 1)}
    if target != root and target not in steps:
        raise CheckpointError(
            f"{resume}: an alternating run resumes from its output directory ({out_dir}) or one "
            f"of its stepK/last.pt files; which step to continue is read from {out_dir}"
        )


def _step_done(step: int, cfg: Config, out_dir: Path, classes: tuple[str, ...]) -> bool:
    final = step_dir(out_dir, step) / "model_final.pt"
    if not final.is_file():
        return False
    ckpt = load_checkpoint(final)
    check_compatible(ckpt, step_config(cfg, step), allow=("train",), path=final)
    if tuple(ckpt["classes"]) != classes:
        raise CheckpointError(
            f"{final}: checkpoint classes {tuple(ckpt['classes'])} differ from the dataset's "
            f"{classes}"
        )
    return True


def _invalidate_after(step: int, out_dir: Path) -> None:
    """Delete what later steps (and the final export) wrote: it derives from an old result."""
    stale = [out_dir / "model_final.pt"]
    for k in range(step + 1, NUM_STEPS + 1):
        stale += [step_dir(out_dir, k) / "model_final.pt", step_dir(out_dir, k) / "last.pt"]
    for p in stale:
        if p.is_file():
            p.unlink()


def _weights(out_dir: Path, step: int) -> dict[str, torch.Tensor]:
    return dict(load_checkpoint(step_dir(out_dir, step) / "model_final.pt")["model"])


def _proposer(out_dir: Path, step: int, dev: torch.device) -> nn.Module:
    """The frozen network of an earlier step (eval mode, no gradients), for proposals."""
    model, _, _ = load_model(step_dir(out_dir, step) / "model_final.pt", device=dev)
    model.requires_grad_(False)
    return model


def _build_step_model(
    step: int, cfg: Config, out_dir: Path, dev: torch.device
) -> tuple[nn.Module, Callable[[list[torch.Tensor]], list[torch.Tensor]] | None]:
    """The model step ``step`` starts from (parts frozen as the step needs) and its proposal
    source (None: the model's own RPN, i.e. no RoI training)."""
    from ..modeling.builder import build_model

    proposal_fn = None
    if step in (1, 2):
        seed_everything(cfg.train.seed)  # both start from the same (ImageNet / seeded) init
        model = build_model(cfg.model)
        if step == 2:
            proposal_fn = functools.partial(proposal_boxes, _proposer(out_dir, 1, dev))
    else:
        # everything is loaded from earlier steps: skip reading the ImageNet file, but build the
        # pretrained architecture (e.g. MobileNetV2's FrozenBatchNorm2d instead of BatchNorm2d)
        model = build_model(cfg.model, load_backbone_weights=False)
        if step == 3:
            state = merge_states(_weights(out_dir, 2), _weights(out_dir, 1), "rpn.")
            where = f"{step_dir(out_dir, 2)} + {step_dir(out_dir, 1)} (RPN)"
        else:
            state = _weights(out_dir, 3)
            where = str(step_dir(out_dir, 3) / "model_final.pt")
            proposal_fn = functools.partial(proposal_boxes, _proposer(out_dir, 3, dev))
        load_state_strict(model, state, where)
    set_trainable(model, STEP_TRAINED[step - 1])
    return model, proposal_fn


def _run(
    cfg: Config,
    train_set: Any,
    *,
    out_dir: Path,
    classes: tuple[str, ...],
    val_fn: ValFn | None,
    resume: str | os.PathLike | None,
    deterministic: bool,
    device: str | torch.device,
    progress: bool,
) -> dict[str, Any]:
    t0 = time.perf_counter()
    validate_alternating(cfg)
    dinfo = dist_utils.info()
    main = dinfo.rank == 0
    dev = resolve_device(device, dinfo.local_rank)
    if resume is not None:
        _check_resume_target(resume, out_dir)
    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.json").write_text(json.dumps(to_dict(cfg), indent=2) + "\n")

    steps: list[dict[str, Any]] = []
    for k in range(1, NUM_STEPS + 1):
        if resume is not None and _step_done(k, cfg, out_dir, classes):
            steps.append({"step": k, "reused": True,
                          "final_weights": str(step_dir(out_dir, k) / "model_final.pt")})
            continue
        if main:
            _invalidate_after(k, out_dir)
        dist_utils.barrier()
        if progress and main:
            print(f"[alternating] step {k}/{NUM_STEPS}: {STEP_TITLES[k - 1]}", flush=True)
        model, proposal_fn = _build_step_model(k, cfg, out_dir, dev)
        summary = train_joint(
            step_config(cfg, k), train_set, out_dir=step_dir(out_dir, k), classes=classes,
            val_fn=val_fn if k == NUM_STEPS else None,
            resume="auto" if resume is not None else None,
            deterministic=deterministic, device=dev, model=model, progress=progress,
            stages=STEP_STAGES[k - 1], proposal_fn=proposal_fn,
        )
        steps.append({"step": k, "reused": False, **summary})
        del model, proposal_fn

    # the unified network = the step-4 result, exported with the run's own config
    final_path = out_dir / "model_final.pt"
    step4_final = step_dir(out_dir, NUM_STEPS) / "model_final.pt"
    if main:
        export_weights(final_path, model=_weights(out_dir, NUM_STEPS), cfg=cfg, classes=classes)
    last = steps[-1]
    metrics: dict[str, Any] = dict(last.get("metrics") or {})
    if last["reused"] and val_fn is not None:
        metrics = _evaluate_final(step4_final, val_fn, dev) if main else {}
        metrics = dist_utils.all_gather_object(metrics)[0]
    dist_utils.barrier()
    ran = [s for s in steps if not s["reused"]]
    return {
        "iteration": sum(int(step_config(cfg, s["step"]).train.max_iter) for s in steps),
        "start_iteration": sum(int(s["start_iteration"]) for s in ran)
        + sum(int(step_config(cfg, s["step"]).train.max_iter) for s in steps if s["reused"]),
        "metrics": metrics,
        "losses": dict(last.get("losses") or {}),
        "skipped_steps": sum(int(s["skipped_steps"]) for s in ran),
        "last_checkpoint": str(step_dir(out_dir, NUM_STEPS) / "last.pt"),
        "final_weights": str(final_path),
        "elapsed_s": time.perf_counter() - t0,
        "steps": steps,
    }


def _evaluate_final(path: Path, val_fn: ValFn, dev: torch.device) -> dict[str, Any]:
    model, _, _ = load_model(path, device=dev)  # eval mode
    with torch.no_grad():
        return dict(val_fn(model) or {})
