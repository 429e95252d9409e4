"""The multi-task losses of both stages (paper eq. 1): log loss + smooth L1.

Shapes: S sampled examples, F foreground among them.

Normalisation follows the reference implementation: the classification loss is the mean over the
sampled examples, the regression loss the sum over foreground examples divided by the number of
sampled examples (so lambda = 1 balances the two terms, as the paper's lambda = 10 with
N_reg ~ 2400 does). Optional per-example weights (see :func:`box_balanced_weights`) scale the
terms inside those sums; the paper weighs every example 1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import generalized_box_iou_loss


def smooth_l1(input: Tensor, target: Tensor, beta: float) -> Tensor:
    """Element-wise smooth L1: 0.5 x^2 / beta if |x| < beta else |x| - 0.5 beta (beta 0 = L1)."""
    diff = (input - target).abs()
    if beta <= 0:
        return diff
    return torch.where(diff < beta, 0.5 * diff * diff / beta, diff - 0.5 * beta)


def box_balanced_weights(matched_gt: Tensor) -> Tensor:
    """[F] float weights of F positive examples from the gt box each one matches ([F] int64).

    Every matched box gets the same total weight, shared equally by its examples, and the weights
    sum to F: a small box with one positive anchor counts as much as a big box with thirty.
    """
    if matched_gt.numel() == 0:
        return torch.zeros(0, device=matched_gt.device)
    _, inverse, counts = torch.unique(matched_gt, return_inverse=True, return_counts=True)
    return (matched_gt.numel() / counts.numel()) / counts[inverse].float()


def box_balanced_example_weights(matched_gt: Tensor, num_examples: int) -> Tensor:
    """[num_examples] weights of one image's sampled examples, positives first: the F =
    ``len(matched_gt)`` positives get :func:`box_balanced_weights`, the negatives 1."""
    w = box_balanced_weights(matched_gt)
    return torch.cat([w, w.new_ones(num_examples - len(w))])


def detection_losses(
    class_logits: Tensor,
    class_targets: Tensor,
    box_deltas: Tensor,
    box_targets: Tensor | None,
    *,
    beta: float,
    class_weights: Tensor | None = None,
    box_weights: Tensor | None = None,
    box_losses: Tensor | None = None,
    focal_gamma: float = 0.0,
) -> tuple[Tensor, Tensor]:
    """(classification, regression) losses of one stage.

    ``class_logits`` [S, C] (C = 2 for the RPN, K+1 for Fast R-CNN), ``class_targets`` [S] int64
    (0 = background); ``box_deltas`` and ``box_targets`` [F, 4] for the foreground examples.
    ``class_weights`` [S] and ``box_weights`` [F] scale each example's term (default 1).
    ``box_losses`` [F], when given, replaces the smooth L1 of each foreground example's deltas
    (e.g. :func:`giou_losses`); the normalisation stays the same, and ``box_targets`` may then be
    None.
    ``focal_gamma`` > 0 multiplies each example's log loss by ``(1 - p)^focal_gamma``, p its
    probability of the true class (softmax focal loss, Lin et al. 2017); 0 is the log loss.
    With no sampled example both losses are 0 (still connected to the graph).
    """
    num = class_targets.numel()
    if num == 0:
        zero = class_logits.sum() * 0.0 + box_deltas.sum() * 0.0
        return zero, zero
    if class_weights is None and focal_gamma == 0:
        cls = F.cross_entropy(class_logits.float(), class_targets)
    else:
        ce = F.cross_entropy(class_logits.float(), class_targets, reduction="none")
        if focal_gamma > 0:
            ce = ce * (1.0 - torch.exp(-ce)).pow(focal_gamma)  # exp(-ce) = p of the true class
        if class_weights is not None:
            ce = ce * class_weights.float()
        cls = ce.sum() / num
    if box_losses is None:
        if box_targets is None:
            raise ValueError("detection_losses needs box_targets or box_losses")
        per_box = smooth_l1(box_deltas.float(), box_targets.float(), beta).sum(dim=1)
    else:
        per_box = box_losses.float()
    if box_weights is not None:
        per_box = per_box * box_weights.float()
    return cls, per_box.sum() / num


def giou_losses(boxes: Tensor, gt_boxes: Tensor) -> Tensor:
    """[F] 1 - generalized IoU (Rezatofighi et al. 2019) of decoded boxes [F, 4] with their gt
    boxes [F, 4], both xyxy: 0 for a perfect box, up to 2 for a far one. Scale-free, so a 3 px
    error costs a 16 px box as much as a 30 px error costs a 160 px one."""
    return generalized_box_iou_loss(boxes.float(), gt_boxes.float(), reduction="none")


def example_losses(
    class_logits: Tensor, class_targets: Tensor, box_deltas: Tensor, box_targets: Tensor, *, beta: float
) -> Tensor:
    """[S] loss of each example: log loss plus, for foreground ones (target > 0), the smooth L1 of
    its box (``box_deltas`` / ``box_targets`` [S, 4]; background rows are ignored). What online
    hard example mining ranks by."""
    ce = F.cross_entropy(class_logits.float(), class_targets, reduction="none")
    reg = smooth_l1(box_deltas.float(), box_targets.float(), beta).sum(dim=1)
    return ce + torch.where(class_targets > 0, reg, torch.zeros_like(reg))
