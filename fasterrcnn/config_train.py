"""The training settings (:class:`TrainConfig`): the schedule of the paper's §3.2, optimiser,
learning rate, augmentation, checkpoints. Re-exported by :mod:`fasterrcnn.config`, where the
model's configs and the conventions of the package are written."""

from __future__ import annotations

from dataclasses import dataclass

from .config_io import ConfigError


# train.schedule (the paper's §3.2; see fasterrcnn.engine): approximate joint, 4-step alternating,
# non-approximate joint (proposal coordinates carry gradient; RoIAlign pooling only)
SCHEDULES = ("joint", "alternating", "exact-joint")
OPTIMIZERS = ("sgd", "adamw")  # train.optimizer: the paper's SGD, or AdamW
# train.lr_schedule: the paper's step decay at train.lr_steps, or a half cosine from train.lr
# down to 0 at train.max_iter (train.lr_steps unused)
LR_SCHEDULES = ("step", "cosine")


@dataclass(frozen=True)
class TrainConfig:
    schedule: str = "joint"  # "joint" (approximate joint training) | "alternating" (4-step)
    images_per_batch: int = 1  # the paper: one image per mini-batch
    max_iter: int = 70000
    lr: float = 0.001
    optimizer: str = "sgd"  # "sgd" (the paper) | "adamw" (momentum is its beta1)
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_schedule: str = "step"  # "step" (the paper: x lr_gamma at each of lr_steps) | "cosine"
    lr_steps: tuple[int, ...] = (50000,)
    lr_gamma: float = 0.1
    warmup_iters: int = 0
    warmup_factor: float = 1.0 / 3.0
    hflip_prob: float = 0.5
    # upside-down flips and transposes (x and y swapped; decided per batch, so that the batch's
    # images keep one aspect), for data that has no "up" (aerial, microscopy, the built-in
    # shapes). 0 = off (the paper)
    vflip_prob: float = 0.0
    transpose_prob: float = 0.0
    grad_clip_norm: float | None = None
    checkpoint_period: int = 5000
    eval_period: int = 0  # 0 = only at the end
    log_period: int = 20
    num_workers: int = 2
    seed: int = 0
    amp: str = "none"  # "none" | "bf16" | "fp16"
    max_bad_steps: int = 5  # consecutive non-finite losses before the run stops
    include_difficult: bool = False  # train on VOC "difficult" objects
    # exponential moving average of the weights, updated every step (e.g. 0.998); the average
    # is what model_final.pt holds. 0 = off (the paper)
    ema_decay: float = 0.0
    sync_bn: bool = True  # multi-GPU (CUDA DDP): BatchNorm statistics over the global batch
    # 4-step alternating training: iterations of each step (lr schedule scaled per step)
    alternating_iters: tuple[int, int, int, int] = (80000, 40000, 80000, 40000)

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"train.schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"train.optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(
                f"train.lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}"
            )
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"train.ema_decay must be in [0, 1) (0 = off), got {self.ema_decay}")
