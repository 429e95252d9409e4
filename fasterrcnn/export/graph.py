"""``model.predict`` for a batch of same-size images, written in ops the TorchScript-based ONNX
exporter traces with a dynamic batch, height and width.

Shapes: N images [N, 3, H, W] (one size); L feature levels, A anchors of a level, k = pre-NMS
top-N, P proposals (all images), K object classes, D detections (all images).

:class:`ExportableDetector` covers the whole single pass: the rescale (shorter side, longer-side
cap, rounded as the model rounds), normalisation and padding; anchors from the feature maps' own
sizes; the RPN's proposal selection (top-N per image and level, NMS, post-NMS top-N per image);
RoI pooling (one level, or each RoI from its FPN level); the box head; and the final per-class
selection (score threshold, NMS, cap per image, optional box voting). Python branches on data
(``len(...)``, ``.item()``, loops over images) become masks, dynamic ``topk`` and NMS over the
whole batch with the image (and class) as the group: torchvision's ``batched_nms`` offset trick,
so boxes of different images never suppress each other. "The first n of each image" is a rank
within the image (:func:`_rank_within`). The parts that already are plain tensor functions (box
decoding, FPN level assignment, context boxes) are the model's own.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import box_iou, nms, roi_align, roi_pool

from ..modeling.pooler import assign_levels, scale_boxes_about_centre
from ..modeling.postprocess import DetectionSelector

INPUT_DTYPES = {"uint8": torch.uint8, "float32": torch.float32}


class ExportError(ValueError):
    """The model holds a part this exporter cannot express (named in the message)."""


def _shape(x: Tensor) -> Tensor:
    """The shape as an int64 tensor: traced as a graph value, not frozen into a constant."""
    return torch._shape_as_tensor(x)


def _clip(boxes: Tensor, size: Tensor) -> Tensor:
    """xyxy boxes [..., 4] clamped to an image of ``size`` [2] (H, W), like ``clip_boxes_to_image``."""
    h, w = size[0].to(boxes.dtype), size[1].to(boxes.dtype)
    return torch.minimum(boxes.clamp(min=0), torch.stack((w, h, w, h)))


def _not_small(boxes: Tensor, min_size: float) -> Tensor:
    """[...] bool: both sides at least ``min_size`` (``remove_small_boxes`` as a mask)."""
    return ((boxes[..., 2] - boxes[..., 0]) >= min_size) & ((boxes[..., 3] - boxes[..., 1]) >= min_size)


def _batched_nms(boxes: Tensor, scores: Tensor, groups: Tensor, iou: float) -> Tensor:
    """torchvision's ``batched_nms`` (offset trick) without its empty-input branch: the boxes
    are clipped (>= 0), so a 0 added to the max changes nothing and keeps an empty input valid.
    Indices best first."""
    top = torch.cat((boxes.reshape(-1), boxes.new_zeros(1))).max()
    return nms(boxes + (groups.to(boxes.dtype) * (top + 1))[:, None], scores, iou)


def _rank_within(groups: Tensor, count: Tensor) -> Tensor:
    """[M] int64: the position of each element among the elements of its group (0..count-1),
    in the given order (e.g. best first: rank < n keeps each image's first n)."""
    onehot = (groups[:, None] == torch.arange(count)[None, :]).to(torch.int64)  # [M, count]
    return (onehot.cumsum(0) * onehot).sum(1) - 1


def _gather_rows(x: Tensor, index: Tensor) -> Tensor:
    """x [N, A, C] at index [N, k] -> [N, k, C]."""
    return x.gather(1, index[..., None].expand(-1, -1, x.shape[2]))


class ExportableDetector(nn.Module):
    """``model.predict`` for a batch [N, 3, H, W] of one size in traceable ops:
    ``forward(images)`` -> (boxes [D, 4], labels [D], scores [D], image_index [D]), grouped by
    image, best first within each. ``selector`` replaces the model's final selection."""

    def __init__(self, model: nn.Module, *, input_dtype: str = "uint8",
                 selector: DetectionSelector | None = None) -> None:
        super().__init__()
        if input_dtype not in INPUT_DTYPES:
            raise ExportError(f"input dtype must be one of {tuple(INPUT_DTYPES)}, got {input_dtype!r}")
        if hasattr(model.roi_heads, "stages"):
            raise ExportError("cascade RoI heads (roi_head.cascade_ious) cannot be exported yet")
        self.model = model
        self.input_dtype = input_dtype
        self.selector = selector if selector is not None else model.roi_heads.selector

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        original = _shape(images)[2:]
        count = _shape(images)[0]
        batch, size = self.preprocess(images)
        features = self.model.features(batch)
        proposals, image = self.proposals(features, size, _shape(batch)[2:], count)
        scores, boxes = self.class_boxes(features, proposals, image, size)
        factor = original.to(torch.float64) / size.to(torch.float64)  # (sy, sx) as scale_boxes
        return self.select(scores, boxes * factor.flip(0).repeat(2).to(boxes.dtype), image, count)

    # ------------------------------------------------------------------ input
    def preprocess(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """(normalised, zero-padded batch [N, 3, Hp, Wp], rescaled size [2] (H, W) int64): the
        model's InputTransform at the test scale, with its arithmetic in float64 as Python's."""
        t = self.model.transform
        x = images.float() / 255.0 if self.input_dtype == "uint8" else images.float()
        hw = _shape(images)[2:].to(torch.float64)
        # float64 as Python's arithmetic, in 1-element tensors: the exporter casts 0-d values and
        # Python numbers to float32, which turns e.g. 257 * (160 / 257) into 159.99998 (floor: 159)
        short, long = hw.amin(dim=0, keepdim=True), hw.amax(dim=0, keepdim=True)
        lo, hi = (torch.full((1,), float(v), dtype=torch.float64) for v in (t.min_size_test, t.max_size_test))
        scale = lo / short
        scale = torch.where(long * scale > hi, hi / long, scale)
        scaled = hw * scale
        rounded = torch.floor(scaled) if getattr(t, "size_rounding", "round") == "floor" else torch.round(scaled)
        size = rounded.clamp(min=1).to(torch.int64)
        x = F.interpolate(x, size=[size[0], size[1]], mode="bilinear", align_corners=False)
        x = (x - t.mean) / t.std
        d = max(1, t.size_divisible)
        pad = (size + d - 1) // d * d - size
        return F.pad(x, [0, pad[1], 0, pad[0]]), size

    # ------------------------------------------------------------------ RPN
    def anchors(self, level: str, feature: Tensor, padded: Tensor) -> Tensor:
        """[Hl * Wl * A, 4] anchors of one level (``grid_anchors`` on the map's traced size)."""
        gen = self.model.rpn.anchor_generator
        hw = _shape(feature)[2:]
        if getattr(gen, "style", "paper") == "torchvision":
            stride = (padded // hw).to(torch.float32)  # (y, x): padded size // map size
        else:
            stride = torch.full((2,), float(gen.strides[level]))
        ys = (torch.arange(hw[0], dtype=torch.float32) + gen.offset) * stride[0]
        xs = (torch.arange(hw[1], dtype=torch.float32) + gen.offset) * stride[1]
        cy, cx = torch.meshgrid(ys, xs, indexing="ij")
        shifts = torch.stack((cx, cy, cx, cy), dim=-1).reshape(-1, 1, 4)
        base = getattr(gen, f"base_{level}")
        return (shifts + base.reshape(1, -1, 4)).reshape(-1, 4)

    def level_proposals(self, anchors: Tensor, scores: Tensor, deltas: Tensor, size: Tensor) -> tuple[Tensor, Tensor]:
        """One level's pre-NMS boxes [N, k, 4] and scores [N, k] (-inf: not a candidate), best
        first per image (proposals.py's two rules)."""
        rpn, s = self.model.rpn, self.model.rpn.test_settings
        k = torch.clamp(_shape(scores)[1], max=s.pre_nms_top_n)
        decode = lambda d, a: _clip(rpn.coder.decode(d.reshape(-1, 4), a.reshape(-1, 4)), size)  # noqa: E731
        if getattr(s, "top_n_first", False):  # the best anchors first, then drop the invalid
            top_scores, top = scores.topk(k, dim=1)
            top_deltas = _gather_rows(deltas, top)
            boxes = decode(top_deltas, anchors[top]).reshape_as(top_deltas)
            valid = torch.isfinite(top_scores) & torch.isfinite(boxes).all(dim=2) & _not_small(boxes, s.min_size)
            return boxes, torch.where(valid, top_scores, torch.full_like(top_scores, -math.inf))
        boxes = decode(deltas, anchors[None].expand_as(deltas)).reshape_as(deltas)
        valid = torch.isfinite(scores) & torch.isfinite(boxes).all(dim=2) & _not_small(boxes, s.min_size)
        top_scores, top = torch.where(valid, scores, torch.full_like(scores, -math.inf)).topk(k, dim=1)
        return _gather_rows(boxes, top), top_scores

    def proposals(self, features: dict[str, Tensor], size: Tensor, padded: Tensor,
                  count: Tensor) -> tuple[Tensor, Tensor]:
        """(proposals [P, 4] in rescaled-image pixels, their image [P]): ``RegionProposalNetwork.propose``."""
        rpn, s = self.model.rpn, self.model.rpn.test_settings
        top_n_first = getattr(s, "top_n_first", False)
        thresh = getattr(s, "score_thresh", 0.0)
        kept_boxes, kept_ranks, kept_images = [], [], []
        for level in rpn.anchor_generator.levels:
            logits, deltas = rpn.head(features[level])
            logits = logits.float()
            boxes, scores = self.level_proposals(self.anchors(level, features[level], padded),
                                                 logits[..., 1] - logits[..., 0], deltas.float(), size)
            image = torch.arange(count)[:, None].expand_as(scores).reshape(-1)
            boxes, scores = boxes.reshape(-1, 4), scores.reshape(-1)
            rank = scores.sigmoid() if top_n_first else scores  # torchvision ranks probabilities
            candidate = torch.isfinite(scores)
            if thresh > 0:
                candidate = candidate & (scores.sigmoid() >= thresh)
            boxes, rank, image = boxes[candidate], rank[candidate], image[candidate]
            keep = _batched_nms(boxes, rank, image, s.nms_thresh)  # within the image and level
            kept_boxes.append(boxes[keep])
            kept_ranks.append(rank[keep])
            kept_images.append(image[keep])
        boxes, image = torch.cat(kept_boxes), torch.cat(kept_images)
        order = torch.cat(kept_ranks).argsort(descending=True)
        order = order[_rank_within(image[order], count) < s.post_nms_top_n]  # each image's best
        return boxes[order], image[order]

    # ------------------------------------------------------------------ Fast R-CNN head
    def pool(self, features: dict[str, Tensor], rois: Tensor) -> Tensor:
        """[P, C x regions, S, S]: ``RoIPooler.forward`` for rois [P, 5] (image, box)."""
        pooler = self.model.roi_heads.pooler
        parts = [self._pool_levels(features, rois)]
        for f in pooler.context_scales:
            context = torch.cat((rois[:, :1], scale_boxes_about_centre(rois[:, 1:], f)), dim=1)
            parts.append(self._pool_levels(features, context))
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    def _pool_levels(self, features: dict[str, Tensor], rois: Tensor) -> Tensor:
        strides = self.model.roi_heads.pooler.strides
        levels = list(strides)
        if len(levels) == 1:
            return self._pool_op(features[levels[0]], rois, strides[levels[0]])
        which = assign_levels(rois[:, 1:], [strides[k] for k in levels])
        pieces, order = [], []
        for j, k in enumerate(levels):
            idx = (which == j).nonzero()[:, 0]
            pieces.append(self._pool_op(features[k], rois[idx], strides[k]))
            order.append(idx)
        return torch.cat(pieces)[torch.cat(order).argsort()]

    def _pool_op(self, feature: Tensor, rois: Tensor, stride: int) -> Tensor:
        pooler = self.model.roi_heads.pooler
        feature = feature.float()
        rois = rois.to(feature.dtype)
        if pooler.kind == "roi_pool":
            return roi_pool(feature, rois, pooler.output_size, 1.0 / stride)
        return roi_align(feature, rois, pooler.output_size, 1.0 / stride, pooler.sampling_ratio,
                         aligned=pooler.aligned)

    def class_boxes(self, features: dict[str, Tensor], proposals: Tensor, image: Tensor,
                    size: Tensor) -> tuple[Tensor, Tensor]:
        """scores [P, K] and clipped per-class boxes [P, K, 4] (rescaled-image pixels)."""
        heads = self.model.roi_heads
        rois = torch.cat((image[:, None].to(proposals.dtype), proposals), dim=1)
        logits, deltas = heads.predictor(heads.box_head(self.pool(features, rois)))
        classes = heads.predictor.num_classes + 1
        probs = torch.softmax(logits.float(), dim=-1)
        boxes = _clip(heads.coder.decode(deltas.float(), proposals.float()).reshape(-1, classes, 4), size)
        return probs[:, 1:], boxes[:, 1:]

    def select(self, scores: Tensor, boxes: Tensor, image: Tensor,
               count: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``select_detections`` per image with masks: threshold, non-empty, per-class NMS, cap,
        voting; the result grouped by image, best first within each."""
        sel = self.selector
        classes = scores.shape[1]
        labels = (torch.arange(classes) + 1)[None, :].expand_as(scores).reshape(-1)
        image = image[:, None].expand_as(scores).reshape(-1)
        scores, boxes = scores.reshape(-1), boxes.reshape(-1, 4)
        keep = (scores > sel.score_thresh) & torch.isfinite(scores) & torch.isfinite(boxes).all(dim=1)
        keep = keep & _not_small(boxes, 1e-2)
        boxes, scores, labels, image = boxes[keep], scores[keep], labels[keep], image[keep]
        groups = image * (classes + 1) + labels  # one NMS per image and class
        keep = _batched_nms(boxes, scores, groups, sel.nms_thresh)
        rank = _rank_within(image[keep], count)
        capped = rank < sel.detections_per_img
        keep, rank = keep[capped], rank[capped]
        keep = keep[(image[keep] * sel.detections_per_img + rank).argsort()]  # by image, then best first
        kept = boxes[keep]
        if sel.vote_iou > 0:
            weights = (box_iou(kept, boxes) >= sel.vote_iou) & (groups[keep][:, None] == groups[None, :])
            weights = weights.to(scores.dtype) * scores[None, :]
            kept = (weights @ boxes) / weights.sum(dim=1, keepdim=True).clamp_min(torch.finfo(scores.dtype).tiny)
        return kept.reshape(-1, 4), labels[keep], scores[keep], image[keep]  # reshape: a static 4
