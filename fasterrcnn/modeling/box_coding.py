"""Box regression parameterisation of R-CNN (the paper's eq. 2).

Shapes: N boxes. ``reference`` are anchors or proposals, ``deltas`` (dx, dy, dw, dh).

    t_x = wx (x - x_a) / w_a     t_y = wy (y - y_a) / h_a
    t_w = ww log(w / w_a)        t_h = wh log(h / h_a)

(x, y) are box centres, (w, h) sizes in continuous pixels (``x2 - x1``). The weights
(wx, wy, ww, wh) implement the usual target normalisation: (10, 10, 5, 5) divides the targets by
the standard deviations (0.1, 0.1, 0.2, 0.2) used for the Fast R-CNN head; (1, 1, 1, 1) for RPN.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

def at_least_float32(x: Tensor) -> Tensor:
    """``x`` in float32 if it is in a 16-bit float type (mixed precision), else unchanged
    (float64 stays float64)."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


# exp() of a larger dw/dh would give boxes 1000/16 times the reference: clamp like the reference
# implementations do, so that an untrained or diverging head never yields inf boxes.
DEFAULT_SCALE_CLAMP = math.log(1000.0 / 16.0)


def encode(
    reference: Tensor, target: Tensor, weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)
) -> Tensor:
    """Regression targets [N, 4] that move ``reference`` [N, 4] onto ``target`` [N, 4]."""
    wx, wy, ww, wh = weights
    ref_w = reference[:, 2] - reference[:, 0]
    ref_h = reference[:, 3] - reference[:, 1]
    ref_x = reference[:, 0] + 0.5 * ref_w
    ref_y = reference[:, 1] + 0.5 * ref_h
    tgt_w = target[:, 2] - target[:, 0]
    tgt_h = target[:, 3] - target[:, 1]
    tgt_x = target[:, 0] + 0.5 * tgt_w
    tgt_y = target[:, 1] + 0.5 * tgt_h
    return torch.stack(
        (
            wx * (tgt_x - ref_x) / ref_w,
            wy * (tgt_y - ref_y) / ref_h,
            ww * torch.log(tgt_w / ref_w),
            wh * torch.log(tgt_h / ref_h),
        ),
        dim=1,
    )


def decode(
    deltas: Tensor,
    reference: Tensor,
    weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0),
    scale_clamp: float = DEFAULT_SCALE_CLAMP,
) -> Tensor:
    """Boxes from ``deltas`` [N, 4*C] applied to ``reference`` [N, 4]; returns [N, 4*C].

    C > 1 decodes class-specific deltas (the Fast R-CNN head) against one reference per row.
    """
    wx, wy, ww, wh = weights
    reference = reference.to(deltas.dtype)
    ref_w = reference[:, 2:3] - reference[:, 0:1]
    ref_h = reference[:, 3:4] - reference[:, 1:2]
    ref_x = reference[:, 0:1] + 0.5 * ref_w
    ref_y = reference[:, 1:2] + 0.5 * ref_h
    dx = deltas[:, 0::4] / wx
    dy = deltas[:, 1::4] / wy
    dw = (deltas[:, 2::4] / ww).clamp(max=scale_clamp)
    dh = (deltas[:, 3::4] / wh).clamp(max=scale_clamp)
    cx = dx * ref_w + ref_x
    cy = dy * ref_h + ref_y
    w = torch.exp(dw) * ref_w
    h = torch.exp(dh) * ref_h
    out = torch.stack((cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h), dim=2)
    return out.reshape(deltas.shape)


@dataclass(frozen=True)
class BoxCoder:
    """``encode``/``decode`` bound to one set of weights (injected into the RPN and RoI head)."""

    weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)
    scale_clamp: float = DEFAULT_SCALE_CLAMP

    def encode(self, reference: Tensor, target: Tensor) -> Tensor:
        return encode(reference, target, self.weights)

    def decode(self, deltas: Tensor, reference: Tensor) -> Tensor:
        return decode(deltas, reference, self.weights, self.scale_clamp)
