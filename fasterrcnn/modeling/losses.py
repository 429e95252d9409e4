"""The multi-task losses of both stages (paper eq. 1): log loss + smooth L1.

Shapes: S sampled examples, F foreground among them.

Normalisation follows the reference implementation: the classification loss is the mean over the
sampled examples, the regression loss the sum over foreground examples divided by the number of
sampled examples (so lambda = 1 balances the two terms, as the paper's lambda = 10 with
N_reg ~ 2400 does). Optional per-example weights (see :func:`box_balanced_weights`) scale the
terms inside those sums; the paper weighs every example 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import generalized_box_iou_loss

from ..config import BOX_LOSSES
from .box_coding import BoxCoder


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
) -> tuple[Tensor, Tensor]:
    """(classification, regression) losses of one stage.

    ``class_logits`` [S, C] (C = 2 for the RPN, K+1 for Fast R-CNN), ``class_targets`` [S] int64
    (0 = background); ``box_deltas`` and ``box_targets`` [F, 4] for the foreground examples.
    ``class_weights`` [S] and ``box_weights`` [F] scale each example's term (default 1).
    ``box_losses`` [F], when given, replaces the smooth L1 of each foreground example's deltas
    (e.g. :func:`giou_losses`); the normalisation stays the same, and ``box_targets`` may then be
    None.
    With no sampled example both losses are 0 (still connected to the graph).
    """
    num = class_targets.numel()
    if num == 0:
        zero = class_logits.sum() * 0.0 + box_deltas.sum() * 0.0
        return zero, zero
    if class_weights is None:
        cls = F.cross_entropy(class_logits.float(), class_targets)
    else:
        ce = F.cross_entropy(class_logits.float(), class_targets, reduction="none")
        cls = (ce * class_weights.float()).sum() / num
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


@dataclass(frozen=True)
class FastRCNNLoss:
    """The Fast R-CNN head's losses on sampled RoIs: ``{prefix}_cls`` (log loss over K+1) and
    ``{prefix}_reg`` (smooth L1 on the true class's deltas, or 1 - GIoU of the decoded box with
    ``box_loss="giou"``).

    With ``positive_weighting="box"`` each image's foreground RoIs are weighted so that every gt
    box counts the same (:func:`box_balanced_example_weights`); background RoIs weigh 1.
    """

    smooth_l1_beta: float = 1.0
    box_loss: str = "smooth_l1"
    loss_weight_cls: float = 1.0
    loss_weight_reg: float = 1.0
    positive_weighting: str = "roi"

    def __post_init__(self) -> None:
        if self.positive_weighting not in ("roi", "box"):
            raise ValueError(f"positive_weighting must be 'roi' or 'box', got {self.positive_weighting!r}")
        if self.box_loss not in BOX_LOSSES:
            raise ValueError(f"box_loss must be one of {BOX_LOSSES}, got {self.box_loss!r}")

    def __call__(
        self,
        class_logits: Tensor,
        box_deltas: Tensor,
        sampled: Sequence[tuple[Tensor, Tensor, Tensor]],
        coder: BoxCoder,
        prefix: str = "roi",
        weight: float = 1.0,
    ) -> dict[str, Tensor]:
        """Losses of one stage's outputs ([R, K+1], [R, 4(K+1)]) on its (rois, labels, matched gt
        boxes) per image (foreground first), scaled by ``weight``."""
        labels = [lab for _, lab, _ in sampled]
        matched = [m for _, _, m in sampled]
        labels_t = torch.cat(labels)
        rois_t, matched_t = torch.cat([r for r, _, _ in sampled]), torch.cat(matched)
        fg = (labels_t > 0).nonzero(as_tuple=True)[0]
        deltas = box_deltas.view(len(labels_t), -1, 4)[fg, labels_t[fg]]
        cls_w = box_w = None
        if self.positive_weighting == "box":
            parts = []
            for lab, m in zip(labels, matched):  # per image: foreground RoIs come first
                ids = torch.unique(m[: int((lab > 0).sum())], dim=0, return_inverse=True)[1]
                parts.append(box_balanced_example_weights(ids, len(lab)))
            cls_w = torch.cat(parts)
            box_w = cls_w[fg]
        targets = box_losses = None
        if self.box_loss == "giou":
            box_losses = giou_losses(coder.decode(deltas, rois_t[fg]), matched_t[fg])
        else:
            targets = coder.encode(rois_t[fg], matched_t[fg])
        cls, reg = detection_losses(class_logits, labels_t, deltas, targets, beta=self.smooth_l1_beta,
                                    class_weights=cls_w, box_weights=box_w, box_losses=box_losses)
        return {f"{prefix}_cls": cls * self.loss_weight_cls * weight,
                f"{prefix}_reg": reg * self.loss_weight_reg * weight}

    def example_losses(self, class_logits: Tensor, box_deltas: Tensor, rois: Tensor, labels: Tensor,
                       matched: Tensor, coder: BoxCoder) -> Tensor:
        """[S] each RoI's log loss plus its smooth L1 when foreground: what hard mining ranks by
        (smooth L1 whatever ``box_loss`` is)."""
        deltas = box_deltas.view(len(labels), -1, 4)[torch.arange(len(labels), device=labels.device), labels]
        targets = torch.zeros_like(deltas)
        fg = labels > 0
        targets[fg] = coder.encode(rois[fg], matched[fg]).to(targets.dtype)
        return example_losses(class_logits, labels, deltas, targets, beta=self.smooth_l1_beta)
