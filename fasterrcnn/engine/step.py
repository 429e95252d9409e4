"""One training iteration's pieces: the optimiser, the loss to optimise (:class:`StagedLoss`),
the forward/backward pass under AMP, gradient norm and clipping, the optimiser step (or its
skip), and BatchNorm layers kept frozen in training mode."""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import nn

from ..config import OPTIMIZERS, ConfigError

ProposalFn = Callable[[list[torch.Tensor]], Sequence[torch.Tensor]]


def build_ema(model: nn.Module, decay: float) -> torch.optim.swa_utils.AveragedModel:
    """An exponential moving average of ``model``'s weights and buffers (BatchNorm statistics
    too): after each optimiser step ``ema = decay * ema + (1 - decay) * weights``; the first
    update copies the weights. ``torch.optim.swa_utils`` does the work."""
    if not 0.0 < decay < 1.0:
        raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
    return torch.optim.swa_utils.AveragedModel(
        model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(decay), use_buffers=True
    )


def build_optimizer(
    model: nn.Module, momentum: float, weight_decay: float, lr: float, kind: str = "sgd"
) -> torch.optim.Optimizer:
    """The optimiser over trainable parameters; weight decay on weights (ndim >= 2), none on
    biases and 1-D parameters (BatchNorm).

    ``kind``: ``"sgd"`` (the paper: SGD with ``momentum``) or ``"adamw"`` (Adam with decoupled
    weight decay, Loshchilov and Hutter 2019; ``momentum`` is its beta1, beta2 is 0.999), an
    option for short schedules of small models trained from scratch. It wants a much smaller
    learning rate than SGD (about 1e-3) and a larger weight decay (about 0.05).
    """
    if kind not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {kind!r}")
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim >= 2 else no_decay).append(p)
    if not decay and not no_decay:
        raise ValueError("the model has no trainable parameters (all have requires_grad=False)")
    groups = []
    if decay:
        groups.append({"params": decay, "weight_decay": weight_decay})
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    if kind == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=(momentum, 0.999))
    return torch.optim.SGD(groups, lr=lr, momentum=momentum)


class StagedLoss(nn.Module):
    """``loss(images, targets)`` = ``detector.loss`` restricted to ``stages``, with the proposals
    of ``proposal_fn(images)`` (original-image coordinates of exactly these images) when given.

    Keeps the detector as its only child, so DDP / SyncBatchNorm conversion see the same modules;
    ``proposal_fn`` is a plain callable (a frozen proposal network is *not* registered here).
    """

    def __init__(
        self, detector: nn.Module, stages: Sequence[str] | None, proposal_fn: ProposalFn | None
    ) -> None:
        super().__init__()
        self.detector = detector
        self.stages = tuple(stages) if stages is not None else None
        self.proposal_fn = proposal_fn

    def loss(self, images: list[torch.Tensor], targets: list[dict]) -> dict[str, torch.Tensor]:
        kwargs: dict[str, Any] = {}
        if self.stages is not None:
            kwargs["stages"] = self.stages
        if self.proposal_fn is not None:
            with torch.no_grad():
                kwargs["proposals"] = [p.detach() for p in self.proposal_fn(images)]
        return self.detector.loss(images, targets, **kwargs)


def frozen_batchnorms(model: nn.Module) -> list[nn.Module]:
    """BatchNorm layers whose (affine) parameters all have ``requires_grad=False``."""
    out = []
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            own = list(m.parameters(recurse=False))
            if own and not any(p.requires_grad for p in own):
                out.append(m)
    return out


def set_train_mode(model: nn.Module, frozen_bn: Sequence[nn.Module]) -> None:
    """``model.train()``, except that the frozen BatchNorm layers stay in eval mode."""
    model.train()
    for m in frozen_bn:
        m.eval()


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``train.amp`` on ``device`` (None = full precision)."""
    if amp == "none":
        return None
    if amp == "bf16":
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ConfigError("train.amp='bf16' needs a GPU with bfloat16 support; use 'fp16'")
        return torch.bfloat16
    if amp == "fp16":
        if device.type != "cuda":
            raise ConfigError(
                "train.amp='fp16' needs CUDA (fp16 training relies on the CUDA GradScaler); "
                "on the CPU use train.amp='bf16' or 'none'"
            )
        return torch.float16
    raise ConfigError(f"train.amp must be 'none', 'bf16' or 'fp16', got {amp!r}")


def _autocast(device: torch.device, dtype: torch.dtype | None) -> Any:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def _grad_norm(params: Sequence[torch.Tensor]) -> torch.Tensor:
    norms = [torch.linalg.vector_norm(p.grad.detach().float()) for p in params if p.grad is not None]
    if not norms:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack(norms))


def _clip_(params: Sequence[torch.Tensor], max_norm: float, total_norm: torch.Tensor) -> None:
    coef = (max_norm / (total_norm + 1e-6)).clamp(max=1.0)
    for p in params:
        if p.grad is not None:
            p.grad.detach().mul_(coef.to(p.grad.device, p.grad.dtype))


def to_device(targets: list[dict[str, Any]], device: torch.device) -> list[dict[str, Any]]:
    return [
        {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in t.items()}
        for t in targets
    ]


@dataclass
class StepResult:
    """What :func:`forward_backward` measured: ``values`` (``total`` then each loss, floats),
    whether the loss and the gradients are finite, and the gradients' total norm."""

    values: dict[str, float]
    loss_ok: bool
    grads_ok: bool
    grad_norm: torch.Tensor


def forward_backward(
    runner: nn.Module,
    images: list[torch.Tensor],
    targets: list[dict[str, Any]],
    *,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    params: Sequence[torch.Tensor],
    device: torch.device,
    autocast_dtype: torch.dtype | None,
) -> StepResult:
    """Losses under autocast (summed in float32), fresh gradients (unscaled under fp16 AMP)."""
    with _autocast(device, autocast_dtype):
        loss_dict = runner(images, targets)
    losses = {k: v.float() for k, v in loss_dict.items()}
    total = torch.stack(list(losses.values())).sum()
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(total).backward()
        scaler.unscale_(optimizer)
    else:
        total.backward()
    gnorm = _grad_norm(params)
    vals = torch.stack([total.detach(), *(v.detach() for v in losses.values()), gnorm.to(total.device)]).tolist()
    values = {"total": vals[0], **dict(zip(losses, vals[1:-1]))}
    loss_ok = math.isfinite(vals[0])
    grads_ok = scaler is not None or math.isfinite(vals[-1])
    return StepResult(values, loss_ok, grads_ok, gnorm)


def optimizer_step(
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    params: Sequence[torch.Tensor],
    grad_norm: torch.Tensor,
    grad_clip_norm: float | None,
) -> None:
    """Clip the gradients to ``grad_clip_norm`` (if set) and update the weights."""
    if grad_clip_norm:
        _clip_(params, float(grad_clip_norm), grad_norm)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()


def skip_step(optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None) -> None:
    """Drop this iteration's gradients without updating the weights."""
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.update()
