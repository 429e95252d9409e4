"""A small, fast backbone for CPU work (the demo preset): conv-BN-ReLU stages, stride 8 or 16.

Shapes: x [B, 3, H, W] -> one level, ``p3`` [B, 2w, H/8, W/8] or ``p4`` [B, 4w, H/16, W/16].

Channels: stem w/2 at /2, w at /4, 2w at /8 (with a dilated conv for a larger receptive field),
and 4w at /16 when ``stride`` is 16; ``extra_convs`` more 3x3 conv-BN-ReLU layers at the output
stride. Trained from scratch (random init).
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor, nn

from .common import Backbone, load_matching, read_state_dict

STRIDES = (8, 16)


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
    ) -> None:
        super().__init__()
        if stride not in STRIDES:
            raise ValueError(f"the tiny backbone has stride 8 or 16, got {stride}")
        if extra_convs < 0:
            raise ValueError(f"extra_convs must be >= 0, got {extra_convs}")
        w = int(width)
        fine = [_conv_bn(3, w // 2, 2), _conv_bn(w // 2, w, 2), _conv_bn(w, w)]  # /4
        coarse = [_conv_bn(w, 2 * w, 2), _conv_bn(2 * w, 2 * w), _conv_bn(2 * w, 2 * w, dilation=2)]
        out = 2 * w
        if stride == 16:
            coarse += [_conv_bn(2 * w, 4 * w, 2), _conv_bn(4 * w, 4 * w, dilation=2)]
            out = 4 * w
        coarse += [_conv_bn(out, out) for _ in range(int(extra_convs))]
        self.features = nn.Sequential(*fine, *coarse)
        self.out_channels = out
        self.stride = stride
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        if weights is not None:
            load_matching(self, read_state_dict(weights), str(weights))

    def map(self, x: Tensor) -> Tensor:
        return self.features(x)
