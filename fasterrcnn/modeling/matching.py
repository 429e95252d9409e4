"""Matching predictions (anchors or proposals) to ground-truth boxes by IoU.

Shapes: G ground-truth boxes, N anchors/proposals; ``iou`` is [G, N].

The result gives, for each of the N, the index of its ground-truth box (>= 0) or one of the two
sentinels below. One rule serves both stages:
  * foreground:  IoU >= ``fg_thresh``                      (RPN 0.7, Fast R-CNN 0.5)
  * background:  ``bg_thresh_lo`` <= IoU < ``bg_thresh_hi`` (RPN [0, 0.3), Fast R-CNN [0, 0.5))
  * ignored:     anything else (neither a positive nor a negative training example)
With ``allow_low_quality`` (RPN), the highest-IoU prediction(s) of every ground-truth box are
foreground too, even below ``fg_thresh`` ("the anchor with the highest IoU with a gt box").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

BACKGROUND = -1  # matched to no object: a negative example
IGNORE = -2  # neither positive nor negative: excluded from the loss


def match(
    iou: Tensor,
    *,
    fg_thresh: float,
    bg_thresh_hi: float,
    bg_thresh_lo: float = 0.0,
    allow_low_quality: bool = False,
) -> Tensor:
    """[N] int64: gt index for foreground, BACKGROUND or IGNORE for the rest.

    Columns of ``iou`` set to a negative value (e.g. -1 for cross-boundary anchors) are IGNORE and
    never take part in low-quality matching. With G = 0 everything valid is background.
    """
    if bg_thresh_hi > fg_thresh:
        raise ValueError(f"bg_thresh_hi {bg_thresh_hi} must not exceed fg_thresh {fg_thresh}")
    n = iou.shape[1]
    if n == 0:
        return torch.zeros(0, dtype=torch.int64, device=iou.device)
    valid = (iou >= 0).all(dim=0) if iou.shape[0] else torch.ones(n, dtype=torch.bool, device=iou.device)
    if iou.shape[0] == 0:
        out = torch.full((n,), BACKGROUND, dtype=torch.int64, device=iou.device)
        if bg_thresh_lo > 0:
            out[:] = IGNORE  # IoU 0 < lo
        out[~valid] = IGNORE
        return out
    best_iou, best_gt = iou.max(dim=0)
    out = best_gt.clone()
    is_bg = (best_iou >= bg_thresh_lo) & (best_iou < bg_thresh_hi)
    is_fg = best_iou >= fg_thresh
    out[~is_fg] = IGNORE
    out[is_bg & ~is_fg] = BACKGROUND
    if allow_low_quality:
        gt_best = iou.max(dim=1, keepdim=True).values  # [G, 1]
        # every prediction tied with the best IoU of some gt box (which has any overlap at all)
        ties = (iou == gt_best) & (gt_best > 0)
        rows, cols = ties.nonzero(as_tuple=True)
        # a prediction that is the best of several gts goes to the one it overlaps most
        out[cols] = best_gt[cols]
        del rows
    out[~valid] = IGNORE
    return out


@dataclass(frozen=True)
class Matcher:
    """:func:`match` with its thresholds bound (injected into the RPN and RoI head)."""

    fg_thresh: float
    bg_thresh_hi: float
    bg_thresh_lo: float = 0.0
    allow_low_quality: bool = False

    def __call__(self, iou: Tensor) -> Tensor:
        return match(
            iou,
            fg_thresh=self.fg_thresh,
            bg_thresh_hi=self.bg_thresh_hi,
            bg_thresh_lo=self.bg_thresh_lo,
            allow_low_quality=self.allow_low_quality,
        )
