"""Anchors: k reference boxes at every position of each feature level (paper §3.1.1).

Shapes: L feature levels; level l is an Hl x Wl map of stride s_l with A anchors per position
(k in the paper); R = sum over levels of Hl * Wl * A anchors per image.
Anchors are ordered level by level, and within a level (y, x, a): index ``(y * Wl + x) * A + a``,
the order in which the RPN head flattens its outputs.

An anchor of size s (= sqrt(area)) and aspect ratio r (= h / w) has w = s / sqrt(r) and
h = s * sqrt(r), so its area is exactly s^2. Anchor centres sit at ``(x + offset) * stride``:
offset 0.5 centres them on the receptive field of the feature cell, as in the paper's code.
The paper's model has one level (stride 16, 3 sizes x 3 ratios); an FPN has one size per level.
Style "torchvision" reproduces torchvision's AnchorGenerator: base anchors rounded to whole pixels
and each level's stride (per axis) the padded image size // the map size (64 for P6 only when the
padded size is a multiple of 64).
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

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


def grid_anchors(base: Tensor, feature_size: tuple[int, int], stride: int | tuple[int, int],
                 offset: float = 0.5) -> Tensor:
    """[Hf * Wf * A, 4] anchors for a feature map of ``feature_size`` (Hf, Wf); ``stride`` one
    number or (y, x)."""
    hf, wf = feature_size
    sy, sx = (stride, stride) if isinstance(stride, int) else stride
    ys = (torch.arange(hf, dtype=torch.float32, device=base.device) + offset) * sy
    xs = (torch.arange(wf, dtype=torch.float32, device=base.device) + offset) * sx
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
    """Anchors for each feature level; caches the grids per feature size.

    ``sizes`` and ``strides`` map each level name to its anchor sizes and its stride; every level
    has the same ``aspect_ratios``, so the same number of anchors per position (one RPN head
    serves all levels). ``style``: "paper" or "torchvision" (see the module docstring).
    """

    def __init__(
        self,
        sizes: Mapping[str, Sequence[float]],
        aspect_ratios: Sequence[float],
        strides: Mapping[str, int],
        offset: float = 0.5,
        style: str = "paper",
    ) -> None:
        super().__init__()
        if style not in ("paper", "torchvision"):
            raise ValueError(f"anchor style must be 'paper' or 'torchvision', got {style!r}")
        self.style = style
        if set(sizes) != set(strides):
            raise ValueError(f"anchor sizes are given for levels {sorted(sizes)}, strides for {sorted(strides)}")
        counts = {len(s) for s in sizes.values()}
        if len(counts) != 1:
            raise ValueError(f"every level needs the same number of anchor sizes, got {dict(sizes)}")
        self.levels = tuple(strides)
        self.strides = {k: int(strides[k]) for k in self.levels}
        self.offset = float(offset)
        for k in self.levels:
            base = base_anchors(sizes[k], aspect_ratios)
            self.register_buffer(f"base_{k}", base.round() if style == "torchvision" else base, persistent=False)
        self._cache: dict[tuple, Tensor] = {}

    @property
    def num_anchors(self) -> int:
        """A: anchors per position (the same on every level)."""
        return int(getattr(self, f"base_{self.levels[0]}").shape[0])

    def forward(
        self, feature_sizes: Mapping[str, tuple[int, int]], image_size: tuple[int, int] | None = None
    ) -> list[Tensor]:
        """Per level (in ``levels`` order): [Hl * Wl * A, 4] anchors for maps of these (Hl, Wl);
        ``image_size``: the padded batch's (H, W), which style "torchvision" needs."""
        out = []
        for k in self.levels:
            base = getattr(self, f"base_{k}")
            hf, wf = int(feature_sizes[k][0]), int(feature_sizes[k][1])
            stride: int | tuple[int, int] = self.strides[k]
            if self.style == "torchvision":
                if image_size is None:
                    raise ValueError("torchvision-style anchors need the padded image size")
                stride = (int(image_size[0]) // hf, int(image_size[1]) // wf)
            key = (k, hf, wf, stride, str(base.device))
            if key not in self._cache:
                if len(self._cache) > 64 * len(self.levels):
                    self._cache.clear()
                self._cache[key] = grid_anchors(base, (hf, wf), stride, self.offset)
            out.append(self._cache[key])
        return out
