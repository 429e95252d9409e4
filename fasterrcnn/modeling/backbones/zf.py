"""ZF net (Zeiler & Fergus), the paper's 5-conv backbone: conv5 is the shared 256-d map, stride 16.

conv1 7x7/2 (96) -> LRN -> max-pool 3x3/2 -> conv2 5x5/2 (256) -> LRN -> max-pool 3x3/2 ->
conv3 3x3 (384) -> conv4 3x3 (384) -> conv5 3x3 (256), each conv followed by ReLU.
Weights load from a state dict in this module's layout (``features.N.*``).
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor, nn

from .common import Backbone, freeze, load_matching, read_state_dict


class ZF(Backbone):
    out_channels = 256
    stride = 16

    def __init__(self, weights: str | Path | None = None, frozen_stages: int = 0) -> None:
        super().__init__()
        lrn = dict(size=3, alpha=5e-5, beta=0.75, k=1.0)
        self.features = nn.Sequential(
            nn.Conv2d(3, 96, 7, stride=2, padding=3), nn.ReLU(inplace=True),  # conv1
            nn.LocalResponseNorm(**lrn), nn.MaxPool2d(3, 2, padding=1),
            nn.Conv2d(96, 256, 5, stride=2, padding=2), nn.ReLU(inplace=True),  # conv2
            nn.LocalResponseNorm(**lrn), nn.MaxPool2d(3, 2, padding=1),
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
