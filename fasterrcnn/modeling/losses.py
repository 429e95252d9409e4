"""The multi-task losses of both stages (paper eq. 1): log loss + smooth L1.

Shapes: S sampled examples, F foreground among them.

Normalisation follows the reference implementation: the classification loss is the mean over the
sampled examples, the regression loss the sum over foreground examples divided by the number of
sampled examples (so lambda = 1 balances the two terms, as the paper's lambda = 10 with
N_reg ~ 2400 does).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def smooth_l1(input: Tensor, target: Tensor, beta: float) -> Tensor:
    """Element-wise smooth L1: 0.5 x^2 / beta if |x| < beta else |x| - 0.5 beta (beta 0 = L1)."""
    diff = (input - target).abs()
    if beta <= 0:
        return diff
    return torch.where(diff < beta, 0.5 * diff * diff / beta, diff - 0.5 * beta)


def detection_losses(
    class_logits: Tensor,
    class_targets: Tensor,
    box_deltas: Tensor,
    box_targets: Tensor,
    *,
    beta: float,
) -> tuple[Tensor, Tensor]:
    """(classification, regression) losses of one stage.

    ``class_logits`` [S, C] (C = 2 for the RPN, K+1 for Fast R-CNN), ``class_targets`` [S] int64
    (0 = background); ``box_deltas`` and ``box_targets`` [F, 4] for the foreground examples.
    With no sampled example both losses are 0 (still connected to the graph).
    """
    num = class_targets.numel()
    if num == 0:
        zero = class_logits.sum() * 0.0 + box_deltas.sum() * 0.0
        return zero, zero
    cls = F.cross_entropy(class_logits.float(), class_targets)
    reg = smooth_l1(box_deltas.float(), box_targets.float(), beta).sum() / num
    return cls, reg
