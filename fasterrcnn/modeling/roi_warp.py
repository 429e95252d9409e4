"""RoI warping: RoIAlign that is differentiable w.r.t. the box coordinates (paper §3.2).

Shapes: N images, C channels, H x W feature map, R RoIs, Ph x Pw output bins, S x S sample
points per bin (S = ``sampling_ratio``; adaptive: the largest count), K = 4 * S * S feature cells
read per output bin.

Non-approximate joint training (Faster R-CNN §3.2) needs "an RoI pooling layer that is
differentiable w.r.t. the box coordinates". :func:`roi_warp` computes exactly the numbers of
``torchvision.ops.roi_align`` with a fixed ``sampling_ratio`` (same sample points, same border
rules, same mean over the S x S samples of a bin; sums differ only in floating-point order), but
builds them from PyTorch ops, so autograd carries the gradient into the boxes as well as into
the features.

How: per RoI and per axis the S sample coordinates of every bin are an affine function of the
box (``y = y1 + (b + (k + 0.5) / S) * (y2 - y1) / Ph`` in feature-map cells). Each coordinate has
two neighbouring rows with the bilinear weights ``1 - frac`` and ``frac``. The outer product of
the row taps and the column taps gives the K (cell index, weight) pairs of each output bin, and
``embedding_bag(mode="sum", per_sample_weights=...)`` on the channels-last map [N*H*W, C] sums
them in one batched pass (no loop over RoIs, the same code on CPU and CUDA). Neither an
[R, C, H, W] tensor nor the [R*Ph*Pw, K, C] gathered samples are kept: the backward pass scatters
the feature gradient and computes the weight gradient as K dot products over C per bin.

What the box gradient includes:
- motion of every sample point: through the RoI's start (x1, y1) and its bin size
  ((x2 - x1) / Pw, (y2 - y1) / Ph), i.e. both translation and scaling of the sampling grid,
  times ``spatial_scale``;
- within one cell the interpolation is bilinear, so d(value)/dy is the difference of the two
  neighbouring rows (blended by the x weights): piecewise constant in y, with jumps (undefined
  derivative, autograd returns a one-sided value) whenever a sample crosses an integer
  coordinate.

Where it is zero or undefined (torchvision's edge rules, kept exactly):
- a sample with y < -1 or y > H (or x < -1 or x > W) contributes 0: zero gradient, and a jump
  in the value at -1 and at H (undefined derivative there);
- y in [-1, 0] is clamped to row 0, and y >= H - 1 reads the last row alone: the value is
  constant there, so the gradient w.r.t. that coordinate is zero (kinks at 0 and at H - 1);
- ``aligned=False`` forces the RoI's width and height to >= 1 cell (torchvision's legacy
  rule): below that the size, hence x2 (y2), gets zero gradient; only the start moves the grid;
- the image-index column of an [R, 5] ``boxes`` tensor is an index: its gradient is zero;
- the discrete choices made upstream (anchor top-N, NMS, sampling of RoIs) carry no gradient;
  only the coordinates of the boxes that reach this op do.

The adaptive ``sampling_ratio`` of roi_align (<= 0: ceil(RoI size / bins) samples per bin and
axis, as the C4 presets use) is supported: every RoI is sampled with the largest count among the
RoIs and the samples past its own count weigh 0. The count is a discrete, piecewise-constant
function of the box size, so it carries no gradient: within one count the gradient is exact, and
where a growing box gains a sample the value jumps (undefined derivative, as at a cell border).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def _as_rois(boxes: Tensor | Sequence[Tensor], dtype: torch.dtype, device: torch.device) -> Tensor:
    """[R, 5] (image index, x1, y1, x2, y2) from a [R, 5] tensor or one [R_i, 4] tensor per
    image; differentiable w.r.t. the coordinates."""
    if isinstance(boxes, Tensor):
        if boxes.dim() != 2 or boxes.shape[1] != 5:
            raise ValueError(
                f"a boxes tensor must be [R, 5] (image index, x1, y1, x2, y2), got {tuple(boxes.shape)}"
            )
        return boxes.to(dtype)
    parts = []
    for i, b in enumerate(boxes):
        if b.dim() != 2 or b.shape[1] != 4:
            raise ValueError(f"boxes of image {i} must be [R_i, 4] (x1, y1, x2, y2), got {tuple(b.shape)}")
        b = b.to(dtype)
        parts.append(torch.cat((b.new_full((b.shape[0], 1), float(i)), b), dim=1))
    return torch.cat(parts) if parts else torch.zeros((0, 5), dtype=dtype, device=device)


def _taps(start: Tensor, size: Tensor, bins: int, counts: tuple[Tensor, int], length: int) -> tuple[Tensor, Tensor]:
    """Along one axis of ``length`` cells: (index [R, bins, 2 * M] long, weight [R, bins, 2 * M])
    of the two neighbours of each sample of every bin of RoIs that start at ``start`` [R] and are
    ``size`` [R] cells long, with roi_align's border rules. ``counts`` = (count, M): RoI r has
    ``count[r]`` samples per bin (M = the largest count; the samples past a RoI's own count weigh
    0). The weights include the 1 / count of the mean and are differentiable w.r.t. start and
    size."""
    count, m = counts
    ratio = count.to(start.dtype)[:, None, None]
    bin_size = (size / bins)[:, None, None]
    b = torch.arange(bins, dtype=start.dtype, device=start.device)[None, :, None]
    k = torch.arange(m, dtype=start.dtype, device=start.device)[None, None, :]
    v = start[:, None, None] + b * bin_size + (k + 0.5) * bin_size / ratio.clamp(min=1.0)  # [R, bins, M]
    inside = (v >= -1.0) & (v <= length) & (k < ratio)
    v = v.clamp(min=0.0)  # [-1, 0] reads row 0 (zero gradient there)
    low = v.detach().floor().long()
    last = low >= length - 1  # at or past the last row: that row alone (zero gradient)
    low = low.clamp(max=length - 1)
    high = torch.where(last, low, low + 1)
    frac = torch.where(last, torch.zeros_like(v), v - low.to(v.dtype))
    scale = inside.to(v.dtype) / ratio.clamp(min=1.0)  # outside the map or past the count: weight 0
    index = torch.stack((low, high), dim=-1).flatten(2)
    weight = torch.stack(((1.0 - frac) * scale, frac * scale), dim=-1).flatten(2)
    return index, weight


def _counts(size: Tensor, bins: int, sampling_ratio: int) -> tuple[Tensor, int]:
    """([R] samples per bin along one axis, their maximum M >= 1): ``sampling_ratio``, or where it
    is <= 0 roi_align's adaptive ceil(RoI size / bins) (0 for an empty RoI: no sample, value 0).
    A fixed ratio needs no device-to-host read of the maximum."""
    if sampling_ratio > 0:
        return torch.full(size.shape, sampling_ratio, dtype=torch.long, device=size.device), sampling_ratio
    count = torch.ceil(size.detach() / bins).clamp(min=0).long()
    return count, max(int(count.max()), 1) if count.numel() else 1


def roi_warp(
    features: Tensor,
    boxes: Tensor | Sequence[Tensor],
    output_size: int | tuple[int, int],
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool,
) -> Tensor:
    """[R, C, Ph, Pw] RoIAlign of ``boxes`` on ``features`` [N, C, H, W], differentiable w.r.t.
    both the features and the box coordinates.

    ``boxes``: a [R, 5] tensor (image index, x1, y1, x2, y2) or one [R_i, 4] tensor per image, in
    input pixels (``spatial_scale`` maps them onto the map). Same arguments and results as
    ``torchvision.ops.roi_align(features, boxes, output_size, spatial_scale, sampling_ratio,
    aligned)``, the adaptive ``sampling_ratio <= 0`` included. Coordinates are computed in float32 at least
    (float64 if the boxes or features are), the bilinear weights in the features' dtype.
    """
    if features.dim() != 4:
        raise ValueError(f"features must be [N, C, H, W], got {tuple(features.shape)}")
    if isinstance(output_size, int):
        ph, pw = output_size, output_size
    else:
        ph, pw = int(output_size[0]), int(output_size[1])
    if ph <= 0 or pw <= 0:
        raise ValueError(f"output_size must be positive, got {output_size}")
    n, c, h, w = features.shape
    box_dtype = boxes.dtype if isinstance(boxes, Tensor) else (boxes[0].dtype if len(boxes) else features.dtype)
    coord_dtype = torch.promote_types(torch.promote_types(box_dtype, features.dtype), torch.float32)
    rois = _as_rois(boxes, coord_dtype, features.device)
    offset = 0.5 if aligned else 0.0
    x1 = rois[:, 1] * spatial_scale - offset
    y1 = rois[:, 2] * spatial_scale - offset
    width = (rois[:, 3] * spatial_scale - offset) - x1
    height = (rois[:, 4] * spatial_scale - offset) - y1
    if not aligned:  # torchvision's legacy rule: RoIs at least one cell wide and high
        width, height = width.clamp(min=1.0), height.clamp(min=1.0)
    y_index, y_weight = _taps(y1, height, ph, _counts(height, ph, sampling_ratio), h)  # [R, Ph, 2S]
    x_index, x_weight = _taps(x1, width, pw, _counts(width, pw, sampling_ratio), w)  # [R, Pw, 2S]
    r, k = rois.shape[0], y_index.shape[-1] * x_index.shape[-1]
    image = rois[:, 0].detach().long()
    cell = (
        (image * (h * w))[:, None, None, None, None]
        + (y_index * w)[:, :, None, :, None]
        + x_index[:, None, :, None, :]
    ).reshape(r * ph * pw, k)  # [R*Ph*Pw, K]
    weight = (y_weight[:, :, None, :, None] * x_weight[:, None, :, None, :]).reshape(r * ph * pw, k)
    flat = features.permute(0, 2, 3, 1).reshape(n * h * w, c)
    out = F.embedding_bag(cell, flat, mode="sum", per_sample_weights=weight.to(features.dtype))
    return out.view(r, ph, pw, c).permute(0, 3, 1, 2).contiguous()
