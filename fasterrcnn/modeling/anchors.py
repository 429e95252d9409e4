"""Anchors: k reference boxes at every position of the stride-s feature map (paper §3.1.1).

Shapes: A anchors per position (k in the paper), Hf x Wf feature map, s the stride.
All anchors of an image are ordered (y, x, a): index ``(y * Wf + x) * A + a``, the order in which
the RPN head flattens its outputs.

An anchor of size s (= sqrt(area)) and aspect ratio r (= h / w) has w = s / sqrt(r) and
h = s * sqrt(r), so its area is exactly s^2. Anchor centres sit at ``(x + offset) * stride``:
offset 0.5 centres them on the receptive field of the feature cell, as in the paper's code.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn


def base_anchors(sizes: Sequence[float], aspect_ratios: Sequence[float]) -> Tensor:
    """[A, 4] anchors centred on (0, 0), ratios outer, sizes inner (A = len(sizes) * len(ratios))."""
    rows = []
    for ratio in aspect_ratios:
        for size in sizes:
            w = size / math.sqrt(ratio)
            h = size * math.sqrt(ratio)
            rows.append((-w / 2, -h / 2, w / 2, h / 2))
    return torch.tensor(rows, dtype=torch.float32)


def grid_anchors(base: Tensor, feature_size: tuple[int, int], stride: int, offset: float = 0.5) -> Tensor:
    """[Hf * Wf * A, 4] anchors for a feature map of ``feature_size`` (Hf, Wf)."""
    hf, wf = feature_size
    ys = (torch.arange(hf, dtype=torch.float32, device=base.device) + offset) * stride
    xs = (torch.arange(wf, dtype=torch.float32, device=base.device) + offset) * stride
    cy, cx = torch.meshgrid(ys, xs, indexing="ij")
    shifts = torch.stack((cx, cy, cx, cy), dim=-1).reshape(-1, 1, 4)
    return (shifts + base.reshape(1, -1, 4)).reshape(-1, 4)


def inside_image(anchors: Tensor, image_size: tuple[int, int], straddle_thresh: float | None) -> Tensor:
    """[N] bool: anchors within the image (H, W), allowing ``straddle_thresh`` pixels outside.

    ``None`` keeps every anchor (no cross-boundary filtering).
    """
    if straddle_thresh is None:
        return torch.ones(len(anchors), dtype=torch.bool, device=anchors.device)
    h, w = image_size
    t = straddle_thresh
    return (
        (anchors[:, 0] >= -t)
        & (anchors[:, 1] >= -t)
        & (anchors[:, 2] <= w + t)
        & (anchors[:, 3] <= h + t)
    )


class AnchorGenerator(nn.Module):
    """Anchors for a feature map; caches the grid per feature size."""

    def __init__(self, sizes: Sequence[float], aspect_ratios: Sequence[float], stride: int, offset: float = 0.5):
        super().__init__()
        self.stride = int(stride)
        self.offset = float(offset)
        self.register_buffer("base", base_anchors(sizes, aspect_ratios), persistent=False)
        self._cache: dict[tuple[int, int, str], Tensor] = {}

    @property
    def num_anchors(self) -> int:
        return int(self.base.shape[0])

    def forward(self, feature_size: tuple[int, int]) -> Tensor:
        key = (int(feature_size[0]), int(feature_size[1]), str(self.base.device))
        if key not in self._cache:
            if len(self._cache) > 64:
                self._cache.clear()
            self._cache[key] = grid_anchors(self.base, key[:2], self.stride, self.offset)
        return self._cache[key]
