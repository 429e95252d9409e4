"""Sampling a mini-batch of positive and negative examples (RPN anchors or RoIs).

Shapes: N candidates.

The RPN takes 256 anchors per image with up to half positive (paper §3.1.3); the Fast R-CNN head
128 RoIs with 25% foreground. When there are too few positives the rest is filled with negatives.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


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
