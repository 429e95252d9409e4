"""RoI pooling for the Fast R-CNN head: each RoI's features, P x P, from one feature level.

Shapes: N images, C channels, R RoIs in the batch, P x P output cells; L feature levels.

:class:`RoIPooler` wraps the paper's RoI pooling (quantised) and RoIAlign, optionally with
context boxes (each RoI also pooled enlarged, :func:`scale_boxes_about_centre`). With one level
(the paper) every RoI is pooled from it; with several (FPN) each RoI is pooled from the level its
size calls for, :func:`assign_levels`.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch
from torch import Tensor, nn
from torchvision.ops import roi_align, roi_pool

from .roi_warp import roi_warp
from .sparse_roi_align import sparse_roi_align

POOLERS = ("roi_pool", "roi_align")


def assign_levels(boxes: Tensor, strides: Sequence[int], canonical_size: float = 224.0,
                  canonical_stride: int = 16) -> Tensor:
    """[R] index into ``strides`` of the level each box [R, 4] is pooled from (FPN, Lin et al.
    2017, eq. 1): a box of ``canonical_size`` (sqrt of its area) goes to stride
    ``canonical_stride``, each halving of the size one level finer, clamped to the levels given."""
    size = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).clamp(min=0).sqrt()
    target = math.log2(canonical_stride) + torch.log2(size / canonical_size) + 1e-6  # as torchvision
    logs = torch.tensor([math.log2(s) for s in strides], device=boxes.device)
    k = torch.floor(target).clamp(float(logs.min()), float(logs.max()))
    return (k[:, None] == logs[None, :]).float().argmax(dim=1)


class RoIPooler(nn.Module):
    """RoI pooling (the paper; quantised) or RoIAlign over feature levels of given strides.

    ``aligned`` (RoIAlign only): feature cell ``i`` sits at image coordinate ``(i + 0.5) * stride``
    (True, detectron2's choice) or ``i * stride`` (False, torchvision's default). Which one is right
    depends on the backbone: a chain of 3x3 stride-2 convs with padding 1 centres cell ``i`` at
    ``i * stride + 0.5``, so False fits it (see :class:`~fasterrcnn.config.AnchorConfig` ``offset``).

    ``context_scales``: also pool each RoI enlarged by these factors about its centre and
    concatenate the results along the channels (a "foveal" head, as in Zagoruyko et al.'s
    MultiPath network): the head then sees around the RoI, e.g. the rest of a partly hidden
    object whose proposal covers only one part. Empty (the paper): the RoI alone.

    RoIAlign on float32 CPU features with a fixed ``sampling_ratio`` runs as a sparse matrix
    product (:func:`~fasterrcnn.modeling.sparse_roi_align.sparse_roi_align`: the same results up
    to float rounding, a training step's pooling about 3x faster) with one level, and with several
    levels (FPN) when gradients are on (training); multi-level inference and everything else go to
    ``torchvision.ops``, so that imported torchvision detectors give torchvision's detections.

    Boxes that carry gradient (non-approximate joint training: proposals attached to the RPN's
    deltas) are pooled with :func:`~fasterrcnn.modeling.roi_warp.roi_warp`, RoIAlign's numbers
    built from differentiable ops, so the gradient reaches the box coordinates as well (roi_align
    would drop it silently). RoI max pooling has no useful box gradient (a quantised grid and an
    arg-max): such boxes are refused there.
    """

    def __init__(
        self,
        kind: str,
        output_size: int,
        strides: Mapping[str, int],
        sampling_ratio: int = 2,
        aligned: bool = True,
        context_scales: Sequence[float] = (),
    ) -> None:
        super().__init__()
        if kind not in POOLERS:
            raise ValueError(f"unknown pooler {kind!r}: use 'roi_pool' or 'roi_align'")
        if any(not s > 0 for s in context_scales):
            raise ValueError(f"context_scales must be positive, got {tuple(context_scales)}")
        self.context_scales = tuple(float(s) for s in context_scales)
        self.kind = kind
        self.output_size = (output_size, output_size)
        self.strides = {k: int(v) for k, v in strides.items()}
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned

    @property
    def num_regions(self) -> int:
        """Pooled regions per RoI: the RoI and its context boxes (output channels = C x this)."""
        return 1 + len(self.context_scales)

    def forward(self, features: Mapping[str, Tensor], boxes: Sequence[Tensor]) -> Tensor:
        """[R, C x num_regions, P, P]: the RoI's pooled features, then each context box's."""
        levels = [k for k in self.strides]
        if len(levels) == 1:
            pool = lambda b: self._pool(features[levels[0]], b, self.strides[levels[0]])  # noqa: E731
        else:
            pool = lambda b: self._pool_levels(features, levels, b)  # noqa: E731
        parts = [pool(boxes)] + [pool([scale_boxes_about_centre(b, s) for b in boxes]) for s in self.context_scales]
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    def _pool_levels(self, features: Mapping[str, Tensor], levels: list[str], boxes: Sequence[Tensor]) -> Tensor:
        """Each RoI from the level :func:`assign_levels` picks for it."""
        flat = torch.cat(list(boxes))
        image = torch.cat([torch.full((len(b),), i, device=flat.device) for i, b in enumerate(boxes)])
        which = assign_levels(flat, [self.strides[k] for k in levels])
        first = features[levels[0]]
        out = first.new_zeros((len(flat), first.shape[1], *self.output_size))
        for j, k in enumerate(levels):
            idx = (which == j).nonzero(as_tuple=True)[0]
            if len(idx):
                rois = torch.cat((image[idx, None].to(flat.dtype), flat[idx]), dim=1)
                out[idx] = self._pool(features[k], rois, self.strides[k]).to(out.dtype)
        return out

    def _pool(self, features: Tensor, boxes: Sequence[Tensor] | Tensor, stride: int) -> Tensor:
        if self.kind == "roi_pool" and features.dtype not in (torch.float32, torch.float64):
            features = features.float()  # torchvision has no reduced-precision roi_pool on CPU
        boxes = boxes.to(features.dtype) if isinstance(boxes, Tensor) else [b.to(features.dtype) for b in boxes]
        scale = 1.0 / stride
        box_grad = torch.is_grad_enabled() and (
            boxes.requires_grad if isinstance(boxes, Tensor) else any(b.requires_grad for b in boxes)
        )
        if box_grad:
            if self.kind == "roi_pool":
                raise ValueError("boxes that carry gradient need RoIAlign-style pooling: RoI max pooling "
                                 "('roi_pool') has no useful gradient w.r.t. the box coordinates")
            return roi_warp(features, boxes, self.output_size, scale, self.sampling_ratio, self.aligned)
        if self.kind == "roi_pool":
            return roi_pool(features, boxes, self.output_size, scale)
        if self._sparse_ok(features):
            return sparse_roi_align(features, boxes, self.output_size[0], scale, self.sampling_ratio,
                                    aligned=self.aligned)
        return roi_align(features, boxes, self.output_size, scale, self.sampling_ratio, aligned=self.aligned)

    def _sparse_ok(self, features: Tensor) -> bool:
        return (
            features.device.type == "cpu"
            and (len(self.strides) == 1 or torch.is_grad_enabled())
            and features.dtype == torch.float32
            and self.sampling_ratio > 0
            and not torch.jit.is_scripting()
            and not torch.jit.is_tracing()
            and not torch.onnx.is_in_onnx_export()
        )


def scale_boxes_about_centre(boxes: Tensor, factor: float) -> Tensor:
    """[R, 4] xyxy boxes with width and height multiplied by ``factor``, centres kept."""
    centre = (boxes[:, :2] + boxes[:, 2:]) * 0.5
    half = (boxes[:, 2:] - boxes[:, :2]) * (0.5 * factor)
    return torch.cat((centre - half, centre + half), dim=1)
