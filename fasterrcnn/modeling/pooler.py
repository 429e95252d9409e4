"""RoI pooling for the Fast R-CNN head: each RoI's features on one map, P x P.

Shapes: N images, C channels, R RoIs in the batch, P x P output cells.

:class:`RoIPooler` wraps the paper's RoI pooling (quantised) and RoIAlign, optionally with
context boxes (each RoI also pooled enlarged, :func:`scale_boxes_about_centre`).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn
from torchvision.ops import roi_align, roi_pool

from .sparse_roi_align import sparse_roi_align


class RoIPooler(nn.Module):
    """RoI pooling (the paper; quantised) or RoIAlign on a single feature map of given stride.

    ``aligned`` (RoIAlign only): feature cell ``i`` sits at image coordinate ``(i + 0.5) * stride``
    (True, detectron2's choice) or ``i * stride`` (False, torchvision's default). Which one is right
    depends on the backbone: a chain of 3x3 stride-2 convs with padding 1 centres cell ``i`` at
    ``i * stride + 0.5``, so False fits it (see :class:`~fasterrcnn.config.AnchorConfig` ``offset``).

    ``context_scales``: also pool each RoI enlarged by these factors about its centre and
    concatenate the results along the channels (a "foveal" head, as in Zagoruyko et al.'s
    MultiPath network): the head then sees around the RoI, e.g. the rest of a partly hidden
    object whose proposal covers only one part. Empty (the paper): the RoI alone.

    RoIAlign on float32 CPU features with a fixed ``sampling_ratio`` runs as a sparse matrix
    product (:func:`~fasterrcnn.modeling.sparse_roi_align.sparse_roi_align`: the same results,
    a training step's pooling about 3x faster); everything else goes to ``torchvision.ops``.
    """

    def __init__(
        self,
        kind: str,
        output_size: int,
        stride: int,
        sampling_ratio: int = 2,
        aligned: bool = True,
        context_scales: Sequence[float] = (),
    ) -> None:
        super().__init__()
        if kind not in ("roi_pool", "roi_align"):
            raise ValueError(f"unknown pooler {kind!r}: use 'roi_pool' or 'roi_align'")
        if any(not s > 0 for s in context_scales):
            raise ValueError(f"context_scales must be positive, got {tuple(context_scales)}")
        self.context_scales = tuple(float(s) for s in context_scales)
        self.kind = kind
        self.output_size = (output_size, output_size)
        self.spatial_scale = 1.0 / stride
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned

    @property
    def num_regions(self) -> int:
        """Pooled regions per RoI: the RoI and its context boxes (output channels = C x this)."""
        return 1 + len(self.context_scales)

    def forward(
        self, features: Tensor, boxes: Sequence[Tensor], feature_sizes: Sequence[tuple[int, int]] | None = None
    ) -> Tensor:
        """[R, C x num_regions, P, P]: the RoI's pooled features, then each context box's.

        ``feature_sizes`` (h, w) per image: pool image i's RoIs from ``features[i, :, :h, :w]``
        only, as if the image had not been padded into a batch (see :mod:`.padding`); ``None``:
        from the whole map.
        """
        parts = [self._pool_images(features, boxes, feature_sizes)] + [
            self._pool_images(features, [scale_boxes_about_centre(b, s) for b in boxes], feature_sizes)
            for s in self.context_scales
        ]
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    def _pool_images(
        self, features: Tensor, boxes: Sequence[Tensor], feature_sizes: Sequence[tuple[int, int]] | None
    ) -> Tensor:
        h, w = features.shape[-2:]
        if feature_sizes is None or all(e[0] >= h and e[1] >= w for e in feature_sizes):
            return self._pool(features, boxes)
        if self.kind == "roi_align" and self._sparse_ok(features):  # one product, limits per RoI
            return sparse_roi_align(
                features, [b.to(features.dtype) for b in boxes], self.output_size[0], self.spatial_scale,
                self.sampling_ratio, aligned=self.aligned, feature_sizes=feature_sizes,
            )
        return torch.cat([
            self._pool(features[i : i + 1, :, : e[0], : e[1]], [b])
            for i, (b, e) in enumerate(zip(boxes, feature_sizes))
        ])

    def _pool(self, features: Tensor, boxes: Sequence[Tensor]) -> Tensor:
        if self.kind == "roi_pool" and features.dtype not in (torch.float32, torch.float64):
            features = features.float()  # torchvision has no reduced-precision roi_pool on CPU
        boxes = [b.to(features.dtype) for b in boxes]
        if self.kind == "roi_pool":
            return roi_pool(features, boxes, self.output_size, self.spatial_scale)
        if self._sparse_ok(features):
            return sparse_roi_align(
                features, boxes, self.output_size[0], self.spatial_scale, self.sampling_ratio,
                aligned=self.aligned,
            )
        return roi_align(
            features, boxes, self.output_size, self.spatial_scale, self.sampling_ratio,
            aligned=self.aligned,
        )

    def _sparse_ok(self, features: Tensor) -> bool:
        return (
            features.device.type == "cpu"
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
