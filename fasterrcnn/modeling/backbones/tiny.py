"""A small, fast backbone for CPU work (the demo preset): conv-BN-ReLU stages, stride 4, 8 or 16.

Shapes: x [B, 3, H, W] -> features [B, C, H/s, W/s].

Channels: stem w/2 at /2, w at /4, 2w at /8 (with a dilated conv for a larger receptive field),
and 4w at /16 when ``stride`` is 16. With ``stride`` 4 the /8 map is upsampled and added to a
1x1 projection of the /4 map (one top-down step, as in FPN), then smoothed by a 3x3 conv: a
finer map for small objects that still sees the /8 context. With ``fine_channels`` (stride 8 or
16) a shortcut of 3x3 stride-2 convs takes the /4 map straight down to the output stride and is
concatenated to the output: local detail (receptive field 15 px at /4) beside the deep features
(71 px at /8), so that a small object's RoI is not described only by what surrounds it.
Trained from scratch (random init).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .common import Backbone, load_matching, read_state_dict

STRIDES = (4, 8, 16)


def _conv_bn(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class Tiny(Backbone):
    def __init__(
        self,
        width: int = 48,
        stride: int = 8,
        weights: str | Path | None = None,
        *,
        extra_convs: int = 0,
        fine_channels: int = 0,
    ) -> None:
        super().__init__()
        if stride not in STRIDES:
            raise ValueError(f"the tiny backbone has stride 4, 8 or 16, got {stride}")
        if extra_convs < 0 or (extra_convs and stride == 4):
            raise ValueError(f"extra_convs must be >= 0 (and 0 at stride 4), got {extra_convs}")
        if fine_channels < 0 or (fine_channels and stride == 4):
            raise ValueError(f"fine_channels must be >= 0 (and 0 at stride 4), got {fine_channels}")
        w = int(width)
        fine = [_conv_bn(3, w // 2, 2), _conv_bn(w // 2, w, 2), _conv_bn(w, w)]  # /4
        coarse = [_conv_bn(w, 2 * w, 2), _conv_bn(2 * w, 2 * w), _conv_bn(2 * w, 2 * w, dilation=2)]
        out = 2 * w
        if stride == 16:
            coarse += [_conv_bn(2 * w, 4 * w, 2), _conv_bn(4 * w, 4 * w, dilation=2)]
            out = 4 * w
        coarse += [_conv_bn(out, out) for _ in range(int(extra_convs))]
        if stride == 4:
            self.fine = nn.Sequential(*fine)
            self.coarse = nn.Sequential(*coarse)
            self.lateral = nn.Conv2d(w, 2 * w, 1)
            self.smooth = _conv_bn(2 * w, 2 * w)
        else:  # one plain chain (the layout of checkpoints written before stride 4 existed)
            self.features = nn.Sequential(*fine, *coarse)
        self.num_fine = len(fine)
        self.shortcut: nn.Sequential | None = None
        if fine_channels:
            downs = [_conv_bn(w, int(fine_channels), 2)]
            downs += [_conv_bn(int(fine_channels), int(fine_channels), 2) for _ in range(stride // 8 - 1)]
            self.shortcut = nn.Sequential(*downs)
            out += int(fine_channels)
        self.out_channels = out
        self.stride = stride
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        if weights is not None:
            load_matching(self, read_state_dict(weights), str(weights))

    def forward(self, x: Tensor) -> Tensor:
        if self.stride != 4 and self.shortcut is None:
            return self.features(x)
        if self.stride != 4:
            for k, layer in enumerate(self.features):
                if k == self.num_fine:
                    c4 = x
                x = layer(x)
            return torch.cat((x, self.shortcut(c4)), dim=1)
        c4 = self.fine(x)
        c8 = self.coarse(c4)
        top = F.interpolate(c8, size=c4.shape[-2:], mode="nearest")
        return self.smooth(self.lateral(c4) + top)
