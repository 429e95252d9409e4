"""Run set-up shared by the training schedules: seeds, the device, deterministic kernels."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from ..config import ConfigError


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), numpy and python's ``random``."""
    import random

    import numpy as np

    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def resolve_device(device: str | torch.device, local_rank: int = 0) -> torch.device:
    """``"cuda"`` becomes this process's GPU (``cuda:LOCAL_RANK``); clear error without CUDA."""
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {device!r} requested but CUDA is not available")
        if dev.index is None:
            dev = torch.device("cuda", local_rank)
    elif dev.type != "cpu":
        raise ConfigError(f"unsupported device {device!r}; use 'cpu' or 'cuda'")
    return dev


@dataclass
class _Determinism:
    """Global determinism switches, captured so that :func:`train` can restore them."""

    enabled: bool
    warn_only: bool
    cudnn_deterministic: bool
    cudnn_benchmark: bool

    @classmethod
    def capture(cls) -> "_Determinism":
        return cls(
            torch.are_deterministic_algorithms_enabled(),
            torch.is_deterministic_algorithms_warn_only_enabled(),
            torch.backends.cudnn.deterministic,
            torch.backends.cudnn.benchmark,
        )

    def restore(self) -> None:
        torch.use_deterministic_algorithms(self.enabled, warn_only=self.warn_only)
        torch.backends.cudnn.deterministic = self.cudnn_deterministic
        torch.backends.cudnn.benchmark = self.cudnn_benchmark


def enable_determinism() -> None:
    """Deterministic kernels (warn-only: an op without one warns instead of failing a long run).

    On CUDA set ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` before CUDA is first used (done here too,
    which is enough when nothing touched cuBLAS yet). Note: torchvision's RoI pooling backward
    on CUDA has no deterministic implementation, so GPU runs are close but not bit-exact.
    """
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
