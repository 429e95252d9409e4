"""ZF net (Zeiler & Fergus), the paper's 5-conv backbone: conv5 is the shared 256-d map, stride 16.

conv1 7x7/2 (96) -> LRN -> max-pool 3x3/2 -> conv2 5x5/2 (256) -> LRN -> max-pool 3x3/2 ->
conv3 3x3 (384) -> conv4 3x3 (384) -> conv5 3x3 (256), each conv followed by ReLU.
Weights load from a state dict in this module's layout (``features.N.*``).

Shapes: N images, C channels, H x W map.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .common import Backbone, freeze, load_matching, read_state_dict


class LocalResponseNorm(nn.Module):
    """``torch.nn.LocalResponseNorm`` (Krizhevsky et al. 2012) across channels, computed with
    shifted sums of the squares instead of torch's channel-wise ``avg_pool3d``: the same values
    to float rounding (a relative 3e-7) at about a third of the time on a CPU (torch's version was
    40% of a ZF inference at 600x1000). ``x / (k + alpha / size * sum of x^2 over the ``size``
    channels around)^beta``, the window as torch's (``size // 2`` before, ``(size - 1) // 2``
    after, zeros beyond the ends)."""

    def __init__(self, size: int, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0) -> None:
        super().__init__()
        self.size, self.alpha, self.beta, self.k = int(size), float(alpha), float(beta), float(k)

    def forward(self, x: Tensor) -> Tensor:  # [N, C, H, W]
        if torch.onnx.is_in_onnx_export():  # torch's ops: onnxruntime runs them fastest (101 ms
            # for conv1's LRN at 600x1000, against 136 ms for these sums and 242 for ONNX's LRN op)
            return F.local_response_norm(x, self.size, self.alpha, self.beta, self.k)
        sq = x * x
        window = sq.clone()
        for d in range(1, self.size // 2 + 1):
            window[:, d:] += sq[:, :-d]
        for d in range(1, (self.size - 1) // 2 + 1):
            window[:, :-d] += sq[:, d:]
        base = window.mul_(self.alpha / self.size).add_(self.k)
        # in place without autograd (inference); the gradient of pow needs its input kept
        div = base.pow(self.beta) if torch.is_grad_enabled() and x.requires_grad else base.pow_(self.beta)
        return x / div

    def extra_repr(self) -> str:
        return f"{self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}"


class ZF(Backbone):
    out_channels = 256
    stride = 16

    def __init__(self, weights: str | Path | None = None, frozen_stages: int = 0) -> None:
        super().__init__()
        lrn = dict(size=3, alpha=5e-5, beta=0.75, k=1.0)
        self.features = nn.Sequential(
            nn.Conv2d(3, 96, 7, stride=2, padding=3), nn.ReLU(inplace=True),  # conv1
            LocalResponseNorm(**lrn), nn.MaxPool2d(3, 2, padding=1),
            nn.Conv2d(96, 256, 5, stride=2, padding=2), nn.ReLU(inplace=True),  # conv2
            LocalResponseNorm(**lrn), nn.MaxPool2d(3, 2, padding=1),
            nn.Conv2d(256, 384, 3, padding=1), nn.ReLU(inplace=True),  # conv3
            nn.Conv2d(384, 384, 3, padding=1), nn.ReLU(inplace=True),  # conv4
            nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(inplace=True),  # conv5
        )
        block_ends = (4, 8, 10, 12, 14)
        if weights is not None:
            state = read_state_dict(weights)
            load_matching(self, {k: v for k, v in state.items() if k.startswith("features.")}, str(weights))
        if not 0 <= frozen_stages <= 5:
            raise ValueError(f"frozen_stages must be in 0..5, got {frozen_stages}")
        if frozen_stages:
            freeze([self.features[: block_ends[frozen_stages - 1]]])

    def map(self, x: Tensor) -> Tensor:
        return self.features(x)
