"""Training RoIs of the Fast R-CNN head: label proposals against the gt boxes, then sample (the
paper: 25% foreground) or mine the hardest (OHEM, Shrivastava et al. 2016).

Shapes: P proposals of one image, G gt boxes, S sampled RoIs; K object classes.

A sampled image is a triple ``(rois [S, 4], labels [S] 0..K, matched gt boxes [S, 4])`` with the
foreground RoIs first; a background RoI's "matched box" is the RoI itself, so that no NaN can
arise downstream.

Proposals that carry gradient (non-approximate joint training, ``keep_graph=True``) are labelled
and sampled on their detached values, and the kept RoIs are taken from the attached proposals, so
they keep their graph (the appended gt boxes carry none); by default everything is detached.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor

from .matching import BACKGROUND, Matcher, pairwise_iou
from .proposals import add_gt_boxes
from .sampling import HardExampleMiner, Sampler

Sampled = tuple[Tensor, Tensor, Tensor]  # (rois, labels, matched gt boxes) of one image
# per-example losses [S] of the RoIs (rois, labels, matched boxes: all images concatenated)
ExampleLossFn = Callable[[list[Tensor], Tensor, Tensor], Tensor]


def match_rois(proposals: Tensor, gt_boxes: Tensor, matcher: Matcher) -> Tensor:
    """[P] gt index of each proposal, or BACKGROUND / IGNORE (see :mod:`.matching`)."""
    proposals = proposals.detach()  # matching is a discrete choice
    if len(gt_boxes):
        iou = pairwise_iou(gt_boxes.to(proposals.dtype), proposals)
    else:
        iou = proposals.new_zeros((0, len(proposals)))
    return matcher(iou)


def take_rois(
    proposals: Tensor, gt_boxes: Tensor, gt_labels: Tensor, matched: Tensor, pos: Tensor, neg: Tensor
) -> Sampled:
    """(rois, labels, matched gt boxes) of the proposals ``pos`` (foreground) then ``neg``."""
    idx = torch.cat((pos, neg))
    rois = proposals[idx]
    labels = torch.zeros(len(idx), dtype=torch.int64, device=proposals.device)
    matched_boxes = rois.detach().clone()
    if len(pos):
        labels[: len(pos)] = gt_labels[matched[pos]]
        matched_boxes[: len(pos)] = gt_boxes[matched[pos]].to(rois.dtype)
    return rois, labels, matched_boxes


def sample_rois(proposals: Tensor, gt_boxes: Tensor, gt_labels: Tensor, *, matcher: Matcher,
                sampler: Sampler) -> Sampled:
    """A random sample of one image's labelled proposals (``sampler``'s size and fraction)."""
    matched = match_rois(proposals, gt_boxes, matcher)
    pos, neg = sampler(matched >= 0, matched == BACKGROUND)
    return take_rois(proposals, gt_boxes, gt_labels, matched, pos, neg)


def label_rois(proposals: Tensor, gt_boxes: Tensor, gt_labels: Tensor, *, matcher: Matcher) -> Sampled:
    """Every foreground and background proposal of one image (ignored ones are dropped): the
    candidates of hard example mining, and a cascade stage's RoIs."""
    matched = match_rois(proposals, gt_boxes, matcher)
    pos = (matched >= 0).nonzero(as_tuple=True)[0]
    neg = (matched == BACKGROUND).nonzero(as_tuple=True)[0]
    return take_rois(proposals, gt_boxes, gt_labels, matched, pos, neg)


@dataclass(frozen=True)
class RoISampling:
    """How the head's training RoIs are chosen: the gt boxes join the proposals
    (``add_gt_as_proposals``, as in the paper's code), proposals are labelled by ``matcher``,
    then sampled by ``sampler`` or, with a ``miner``, the hardest are kept."""

    matcher: Matcher
    sampler: Sampler
    add_gt_as_proposals: bool = True
    miner: HardExampleMiner | None = None

    def __call__(
        self,
        proposals: Sequence[Tensor],
        gt_boxes: Sequence[Tensor],
        gt_labels: Sequence[Tensor],
        example_losses: ExampleLossFn | None = None,
        *,
        keep_graph: bool = False,
    ) -> list[Sampled]:
        """Per image (rois, labels, matched gt boxes). Mining needs ``example_losses``, the
        current head's loss of each candidate (computed without gradients). ``keep_graph``: the
        rois keep the proposals' autograd graph (the labels and matched boxes never have one)."""
        if self.add_gt_as_proposals:
            proposals = add_gt_boxes(proposals, gt_boxes)
        if not keep_graph:
            proposals = [p.detach() for p in proposals]
        if self.miner is None:
            return [sample_rois(p, g, lab, matcher=self.matcher, sampler=self.sampler)
                    for p, g, lab in zip(proposals, gt_boxes, gt_labels)]
        if example_losses is None:
            raise ValueError("hard example mining needs the head's example losses")
        candidates = [label_rois(p, g, lab, matcher=self.matcher)
                      for p, g, lab in zip(proposals, gt_boxes, gt_labels)]
        with torch.no_grad():
            losses = example_losses([r.detach() for r, _, _ in candidates],
                                    torch.cat([lab for _, lab, _ in candidates]),
                                    torch.cat([m for _, _, m in candidates]))
        out, start = [], 0
        for r, lab, m in candidates:
            keep = self.miner(losses[start : start + len(r)], r)
            start += len(r)
            keep = keep[(lab[keep] == 0).to(torch.int8).argsort(stable=True)]  # foreground first
            out.append((r[keep], lab[keep], m[keep]))
        return out
