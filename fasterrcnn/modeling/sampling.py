"""Sampling a mini-batch of positive and negative examples (RPN anchors or RoIs).

Shapes: N candidates.

The RPN takes 256 anchors per image with up to half positive (paper §3.1.3); the Fast R-CNN head
128 RoIs with 25% foreground. When there are too few positives the rest is filled with negatives.

Online hard example mining (OHEM; Shrivastava, Gupta and Girshick, CVPR 2016) instead keeps the
examples with the highest current loss, after NMS over their boxes so that one hard object does
not fill the batch with near-copies of itself; there is no positive fraction.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision.ops import nms


def subsample(
    positive: Tensor,
    negative: Tensor,
    num_samples: int,
    positive_fraction: float,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Random indices (pos_idx, neg_idx) of at most ``num_samples`` examples.

    ``positive`` and ``negative`` are [N] bool masks (disjoint). At most
    ``int(num_samples * positive_fraction)`` positives are taken; negatives fill the remainder.
    """
    if (positive & negative).any():
        raise ValueError("an example cannot be both positive and negative")
    pos = positive.nonzero(as_tuple=True)[0]
    neg = negative.nonzero(as_tuple=True)[0]
    num_pos = min(int(num_samples * positive_fraction), pos.numel())
    num_neg = min(num_samples - num_pos, neg.numel())
    pos = pos[torch.randperm(pos.numel(), generator=generator, device="cpu")[:num_pos].to(pos.device)]
    neg = neg[torch.randperm(neg.numel(), generator=generator, device="cpu")[:num_neg].to(neg.device)]
    return pos, neg


@dataclass(frozen=True)
class Sampler:
    """:func:`subsample` with its batch size and positive fraction bound."""

    num_samples: int
    positive_fraction: float

    def __call__(self, positive: Tensor, negative: Tensor) -> tuple[Tensor, Tensor]:
        return subsample(positive, negative, self.num_samples, self.positive_fraction)


def hard_examples(losses: Tensor, boxes: Tensor, num_samples: int, nms_thresh: float) -> Tensor:
    """Indices of at most ``num_samples`` examples, highest loss first (``losses`` [N],
    ``boxes`` [N, 4]); an example overlapping a harder kept one at IoU > ``nms_thresh`` is
    skipped (``nms_thresh`` >= 1 keeps all)."""
    if nms_thresh >= 1.0:
        order = losses.argsort(descending=True, stable=True)
    else:
        order = nms(boxes.float(), losses.float(), nms_thresh)
    return order[:num_samples]


@dataclass(frozen=True)
class HardExampleMiner:
    """:func:`hard_examples` with its batch size and NMS threshold bound."""

    num_samples: int
    nms_thresh: float = 0.7

    def __call__(self, losses: Tensor, boxes: Tensor) -> Tensor:
        return hard_examples(losses, boxes, self.num_samples, self.nms_thresh)
