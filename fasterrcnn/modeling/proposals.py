"""Turning RPN outputs into proposals (paper §3.1, "proposal layer").

Shapes: N images, R anchors per image (all levels and positions x A), P proposals kept per image.

Per image and feature level: decode the anchors, clip to the image, drop boxes smaller than
``min_size``, keep the ``pre_nms_top_n`` highest-scoring (in practice only the best-scored anchors
are decoded, with the same result). Then NMS at ``nms_thresh`` (within each level when there are
several, as FPN detectors do) and keep the ``post_nms_top_n`` best of the image.
With ``top_n_first`` (torchvision, detectron2) the ``pre_nms_top_n`` best-scored anchors are taken
first and the small ones dropped from those; NMS then ranks by objectness probability and
proposals below ``score_thresh`` are dropped, as torchvision's RPN does.
Non-finite scores or boxes (a diverging network) are dropped, never passed on.

``differentiable`` (non-approximate joint training, paper §3.2): which anchors become proposals
is decided exactly as above, on detached scores and deltas (top-N, size filter, NMS are discrete
choices and carry no gradient); the chosen anchors' boxes are then decoded again from the
attached ``deltas`` (same anchors, same clipping), so the proposals' coordinates carry the
gradient of the RPN's regression output. The values are exactly the detached ones (the attached
decode enters as ``boxes + (attached - attached.detach())``); clipping passes no gradient to a
coordinate that is clipped to the image border.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor
from torchvision.ops import batched_nms, clip_boxes_to_image, nms, remove_small_boxes

from .box_coding import BoxCoder, at_least_float32


def select_proposals(
    anchors: Tensor,
    scores: Tensor,
    deltas: Tensor,
    image_sizes: Sequence[tuple[int, int]],
    *,
    coder: BoxCoder,
    level_counts: Sequence[int] | None = None,
    pre_nms_top_n: int,
    post_nms_top_n: int,
    nms_thresh: float,
    min_size: float,
    top_n_first: bool = False,
    score_thresh: float = 0.0,
    differentiable: bool = False,
) -> tuple[list[Tensor], list[Tensor]]:
    """Proposals per image: (boxes [P, 4], objectness scores [P]), best first.

    ``anchors`` [R, 4] (shared by the batch), ``scores`` [N, R] objectness (any monotone score,
    e.g. fg - bg logits), ``deltas`` [N, R, 4]; ``level_counts``: anchors of each level in order
    (default: one level). ``pre_nms_top_n`` applies per level, ``post_nms_top_n`` per image.
    ``differentiable``: the boxes carry the gradient of ``deltas`` (see the module docstring);
    otherwise (the default) they are constants. Scores never carry gradient.
    """
    counts = list(level_counts) if level_counts is not None else [len(anchors)]
    anchors_l = anchors.split(counts)
    out_boxes: list[Tensor] = []
    out_scores: list[Tensor] = []
    starts = [sum(counts[:k]) for k in range(len(counts))]
    select = _top_then_valid_anchors if top_n_first else _top_valid_anchors
    for i, size in enumerate(image_sizes):
        parts = [
            select(a, s, d, tuple(size), coder=coder, top_n=pre_nms_top_n, min_size=min_size)
            for a, s, d in zip(anchors_l, scores[i].detach().split(counts), deltas[i].detach().split(counts))
        ]
        boxes, s = torch.cat([b for b, _, _ in parts]), torch.cat([x for _, x, _ in parts])
        index = torch.cat([j + start for (_, _, j), start in zip(parts, starts)])  # into anchors [R]
        rank = at_least_float32(s).sigmoid() if top_n_first else at_least_float32(s)  # torchvision ranks probabilities
        if score_thresh > 0:
            above = (rank if top_n_first else rank.sigmoid()) >= score_thresh
            boxes, s, rank, index = boxes[above], s[above], rank[above], index[above]
            parts = [(b[a], x[a], j[a]) for (b, x, j), a in zip(parts, above.split([len(b) for b, _, _ in parts]))]
        if len(parts) == 1 and not top_n_first:  # ranked best first by _top_valid_anchors
            keep = first_kept(at_least_float32(boxes), rank, nms_thresh, post_nms_top_n)
        else:
            levels = torch.cat([torch.full((len(b),), k, device=b.device) for k, (b, _, _) in enumerate(parts)])
            keep = batched_nms(at_least_float32(boxes), rank, levels, nms_thresh)[:post_nms_top_n]
        kept = boxes[keep]
        if differentiable:
            j = index[keep]
            attached = clip_boxes_to_image(coder.decode(deltas[i][j], anchors[j]), tuple(size))
            kept = kept + (attached - attached.detach())  # the detached values, the attached gradient
        out_boxes.append(kept)
        out_scores.append(s[keep])
    return out_boxes, out_scores


def first_kept(boxes: Tensor, scores: Tensor, iou_thresh: float, count: int) -> Tensor:
    """``nms(boxes, scores, iou_thresh)[:count]`` for ``scores`` sorted best first: the first
    ``count`` boxes that greedy NMS keeps, best first.

    NMS over all P boxes costs about (boxes kept) x P IoUs, and the paper's test setting keeps
    300 of 6000. Greedy NMS never lets a box suppress a better-scored one, so the boxes it keeps
    among the best m are exactly those that NMS over the best m alone keeps: NMS runs on the best
    ``2 * count`` boxes; a prefix that keeps too few grows to where the share it kept would
    reach ``count`` with a quarter to spare (at least doubling), until every box is in. When the
    first prefix is more than half of all boxes (training: 300 of 1000 kept), NMS runs on all of
    them at once, as a prefix that fell short would cost most of that run again. (Equal scores
    are ordered as the stable sort inside ``nms`` orders them; the prefix keeps that order.)
    """
    n = len(scores)
    m = n if 4 * count >= n else 2 * count
    while True:
        keep = nms(boxes[:m], scores[:m], iou_thresh)
        if len(keep) >= count or m == n:
            return keep[:count]
        m = min(n, max(2 * m, (5 * m * count) // (4 * max(len(keep), 1))))


def _decode_valid(
    anchors: Tensor, deltas: Tensor, s: Tensor, top: Tensor, size: tuple[int, int], coder: BoxCoder,
    min_size: float,
) -> tuple[Tensor, Tensor]:
    """(boxes of the anchors ``top`` decoded and clipped, the positions among them of the valid
    ones: finite score ``s`` and box, at least ``min_size`` on both sides), in ``top``'s order."""
    boxes = clip_boxes_to_image(coder.decode(deltas[top], anchors[top]), size)
    valid = torch.isfinite(s) & torch.isfinite(boxes).all(dim=1)
    keep = valid.nonzero(as_tuple=True)[0]
    return boxes, keep[remove_small_boxes(boxes[keep], min_size)]


def _top_valid_anchors(
    anchors: Tensor,
    scores: Tensor,
    deltas: Tensor,
    size: tuple[int, int],
    *,
    coder: BoxCoder,
    top_n: int,
    min_size: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """The ``top_n`` highest-scoring valid boxes of one image (decoded and clipped; valid:
    finite score and box, at least ``min_size`` on both sides), best first: (boxes, scores, their
    anchors' indices).

    The same boxes as decoding every anchor, dropping the invalid ones and taking the top
    ``top_n`` (up to the order among exactly equal scores, which ``topk`` leaves open either
    way), but only the best-scored anchors are decoded: first twice ``top_n`` of them, more only
    when too few of those are valid.
    """
    ranked = torch.where(torch.isfinite(scores), scores, torch.full_like(scores, -torch.inf))
    k = min(len(scores), 2 * top_n)
    while True:
        s, top = ranked.topk(k)  # sorted, best first
        boxes, keep = _decode_valid(anchors, deltas, s, top, size, coder, min_size)
        if len(keep) >= top_n or k == len(scores):
            keep = keep[:top_n]
            return boxes[keep], scores[top[keep]], top[keep]
        k = min(len(scores), 2 * k)


def _top_then_valid_anchors(
    anchors: Tensor,
    scores: Tensor,
    deltas: Tensor,
    size: tuple[int, int],
    *,
    coder: BoxCoder,
    top_n: int,
    min_size: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """Of the ``top_n`` highest-scoring anchors of one image (best first), the decoded, clipped
    boxes that are finite and at least ``min_size`` on both sides (torchvision's order): (boxes,
    scores, their anchors' indices)."""
    s, top = scores[None].topk(min(len(scores), top_n), dim=1)  # [1, R] as torchvision: same order of ties
    s, top = s[0], top[0]
    boxes, keep = _decode_valid(anchors, deltas, s, top, size, coder, min_size)
    return boxes[keep], s[keep], top[keep]


def add_gt_boxes(proposals: Sequence[Tensor], gt_boxes: Sequence[Tensor]) -> list[Tensor]:
    """Append the ground-truth boxes to each image's proposals (training only)."""
    return [torch.cat((p, g.to(p.dtype)), dim=0) for p, g in zip(proposals, gt_boxes)]
