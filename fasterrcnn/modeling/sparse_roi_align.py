"""RoIAlign as a sparse matrix product: the CPU path of the Fast R-CNN head's pooler.

Shapes: N images, C channels, H x W feature map, R RoIs, P x P output bins, S x S samples per
bin; M = R * P * P output cells.

RoIAlign (He et al., Mask R-CNN) is linear in the features: each output cell is a weighted sum of
at most S * S * 4 feature cells (S * S bilinear samples, four neighbours each). Written as a sparse
[M, N*H*W] matrix ``A`` applied to the channels-last features [N*H*W, C], the forward pass is
``A @ F`` and the backward pass ``A.T @ G``: two multithreaded sparse-dense products. On a CPU this
computes the same numbers as ``torchvision.ops.roi_align`` (same sample points, same border rules;
the sums differ only in floating-point order) with a backward pass several times faster than
torchvision's, which scatters one value at a time (on the demo preset it was a quarter of a
training step, 44 ms of 177 ms). ``A.T`` is built directly in CSR form (:func:`transpose_csr`).

Only a fixed ``sampling_ratio`` (> 0) is supported; :class:`~fasterrcnn.modeling.roi_heads.RoIPooler`
uses torchvision for the adaptive one, on GPUs, in reduced precision and while tracing/exporting.
"""

from __future__ import annotations

import warnings
from typing import Sequence

import torch
from torch import Tensor


def _as_rois(boxes: Tensor | Sequence[Tensor]) -> Tensor:
    """[R, 5] (image index, x1, y1, x2, y2) from a [R, 5] tensor or one [R_i, 4] tensor per image."""
    if isinstance(boxes, Tensor):
        return boxes
    parts = [torch.cat((b.new_full((len(b), 1), float(i)), b), dim=1) for i, b in enumerate(boxes)]
    return torch.cat(parts) if parts else torch.zeros((0, 5))


def _axis(v: Tensor, n: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Bilinear neighbours along one axis of length ``n`` (torchvision's border rules):
    (low index, high index, low weight, high weight, inside mask)."""
    inside = (v >= -1.0) & (v <= n)
    v = v.clamp(min=0.0)
    low = v.floor().long()
    top = low >= n - 1
    low = low.clamp(max=n - 1)
    high = torch.where(top, low, low + 1)
    frac = torch.where(top, torch.zeros_like(v), v - low.to(v.dtype))
    return low, high, 1.0 - frac, frac, inside


def _pair_terms(p: int, s: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """For every entry of a RoI's P * P rows, in the order (y bin, x bin, y sample, x sample,
    y corner, x corner): the index of its y term and of its x term among the P * S * 2 terms of
    each axis (ordered bin, sample, corner)."""
    y_bin, x_bin, y_smp, x_smp, y_cor, x_cor = torch.meshgrid(
        *(torch.arange(k, device=device) for k in (p, p, s, s, 2, 2)), indexing="ij"
    )
    return ((y_bin * s + y_smp) * 2 + y_cor).reshape(-1), ((x_bin * s + x_smp) * 2 + x_cor).reshape(-1)


def roi_align_matrix(
    rois: Tensor,
    feature_shape: tuple[int, int, int],
    output_size: int,
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool,
) -> Tensor:
    """The sparse CSR matrix [R * P * P, N * H * W] of RoIAlign for ``rois`` [R, 5]
    (image index, x1, y1, x2, y2 in input pixels) on features of shape (N, H, W).
    """
    if sampling_ratio <= 0:
        raise ValueError(f"the sparse RoIAlign needs a fixed sampling_ratio > 0, got {sampling_ratio}")
    n, h, w = feature_shape
    p, s = int(output_size), int(sampling_ratio)
    r = rois.shape[0]
    offset = 0.5 if aligned else 0.0
    image = rois[:, 0].long()
    x1 = rois[:, 1] * spatial_scale - offset
    y1 = rois[:, 2] * spatial_scale - offset
    width = rois[:, 3] * spatial_scale - offset - x1
    height = rois[:, 4] * spatial_scale - offset - y1
    if not aligned:  # torchvision's legacy rule: RoIs at least one cell wide
        width, height = width.clamp(min=1.0), height.clamp(min=1.0)
    # sample k of bin b sits at (b + (k + 0.5) / s) bin sizes from the RoI's corner
    steps = torch.arange(p, dtype=rois.dtype, device=rois.device)[:, None]
    steps = (steps + (torch.arange(s, dtype=rois.dtype, device=rois.device) + 0.5) / s).reshape(-1)
    ys = y1[:, None] + steps * (height / p)[:, None]  # [R, P * S]
    xs = x1[:, None] + steps * (width / p)[:, None]
    # per axis: the two neighbours of every sample and their weights (1/s each: the mean over
    # the samples; 0 outside the map), then all 4 corners of all s x s samples of a bin at once
    y_lo, y_hi, y_wlo, y_whi, y_in = _axis(ys, h)
    x_lo, x_hi, x_wlo, x_whi, x_in = _axis(xs, w)
    y_off = (image * (h * w))[:, None, None] + torch.stack((y_lo, y_hi), dim=-1) * w  # [R, P*S, 2]
    x_idx = torch.stack((x_lo, x_hi), dim=-1)
    y_wt = torch.stack((y_wlo, y_whi), dim=-1) * (y_in.to(rois.dtype) / s)[..., None]
    x_wt = torch.stack((x_wlo, x_whi), dim=-1) * (x_in.to(rois.dtype) / s)[..., None]
    index_dtype = torch.int32 if n * h * w < 2**31 else torch.int64
    # entry (y bin, x bin, y sample, x sample, y corner, x corner) of a RoI's rows pairs y term
    # (y bin, y sample, y corner) with x term (x bin, x sample, x corner): gathered along the
    # terms, then one flat product (a 7-d broadcast of 2-long dims was most of the build time)
    pick_y, pick_x = _pair_terms(p, s, rois.device)
    cols = (y_off.to(index_dtype).view(r, -1).index_select(1, pick_y)
            + x_idx.to(index_dtype).view(r, -1).index_select(1, pick_x))  # [R, P * P * S * S * 4]
    vals = y_wt.reshape(r, -1).index_select(1, pick_y) * x_wt.reshape(r, -1).index_select(1, pick_x)
    per_row = s * s * 4
    rows = r * p * p
    crow = torch.arange(0, rows * per_row + 1, per_row, device=rois.device, dtype=index_dtype)
    with warnings.catch_warnings():  # torch calls its CSR support "beta"; this use is tested
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(
            crow, cols.reshape(-1), vals.reshape(-1), (rows, n * h * w), check_invariants=False
        )


def transpose_csr(matrix: Tensor) -> Tensor:
    """The CSR matrix ``A.T`` of a CSR matrix ``A``, built with one stable sort of the column
    indices (``A.t()`` is a CSC view that ``torch.sparse.mm`` first converts, several times
    slower). Entries of a row keep their order, so products are deterministic. When every row
    of ``A`` has the same number of entries (RoIAlign's), an entry's row is its position // that
    number."""
    rows, cols = matrix.shape
    crow, col, vals = matrix.crow_indices(), matrix.col_indices(), matrix.values()
    order = col.argsort(stable=True)
    lengths = crow[1:] - crow[:-1]
    per_row = col.numel() // rows if rows else 0
    if per_row and bool((lengths == per_row).all()):  # RoIAlign's: S * S * 4 a row
        row_of_entry = order.div(per_row, rounding_mode="floor").to(col.dtype)
    else:
        rows_index = torch.arange(rows, device=col.device, dtype=col.dtype)
        row_of_entry = torch.repeat_interleave(rows_index, lengths)[order]
    counts = torch.bincount(col, minlength=cols)
    t_crow = torch.zeros(cols + 1, dtype=torch.int64, device=col.device)
    torch.cumsum(counts, 0, out=t_crow[1:])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(
            t_crow.to(col.dtype), row_of_entry, vals[order], (cols, rows), check_invariants=False
        )


class _SparseProduct(torch.autograd.Function):
    """``A @ F`` with the gradient ``A.T @ G`` for F (A is constant)."""

    @staticmethod
    def forward(ctx, matrix: Tensor, flat: Tensor) -> Tensor:  # type: ignore[override]
        ctx.matrix = matrix
        return torch.sparse.mm(matrix, flat)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[None, Tensor]:  # type: ignore[override]
        return None, torch.sparse.mm(transpose_csr(ctx.matrix), grad.contiguous())


def sparse_roi_align(
    features: Tensor,
    boxes: Tensor | Sequence[Tensor],
    output_size: int,
    spatial_scale: float,
    sampling_ratio: int = 2,
    aligned: bool = False,
) -> Tensor:
    """[R, C, P, P] RoIAlign of ``boxes`` (a [R, 5] tensor or one [R_i, 4] tensor per image) on
    ``features`` [N, C, H, W]; the same arguments and results as ``torchvision.ops.roi_align``.
    """
    rois = _as_rois(boxes).to(features.dtype)
    n, c, h, w = features.shape
    p = int(output_size)
    if rois.shape[0] == 0:
        return features.new_zeros((0, c, p, p)) + features.sum() * 0.0
    matrix = roi_align_matrix(rois, (n, h, w), p, spatial_scale, sampling_ratio, aligned)
    flat = features.permute(0, 2, 3, 1).reshape(n * h * w, c)
    out = _SparseProduct.apply(matrix, flat)  # [R * P * P, C]
    return out.view(-1, p, p, c).permute(0, 3, 1, 2)
