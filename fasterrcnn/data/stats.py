"""Box statistics of a dataset and how well a set of anchor shapes fits its boxes.

Shapes: boxes ``[N, 4]`` xyxy (numpy or torch); ``sizes`` are anchor ``sqrt(area)`` in pixels and
``aspect_ratios`` are anchor ``height / width``, as in :class:`fasterrcnn.config.AnchorConfig`.

Anchor fit uses the *shape IoU*: a box and an anchor are placed at the same centre, so only
their widths and heights matter. This ignores the stride grid of anchor centres, so the
coverage it reports is an upper bound of what the RPN's anchors actually reach.

Anchors live in network-input pixels (after the image is resized so its shorter side is
``min_size``, capped by ``max_size`` on the longer side); :func:`input_boxes` rescales a dataset's
boxes to that space before they are compared with anchors.
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence, Union

import numpy as np
import torch

from fasterrcnn.data.dataset import Annotation

PERCENTILES: tuple[int, ...] = (5, 25, 50, 75, 95)

BoxesLike = Union[np.ndarray, torch.Tensor, Sequence[Sequence[float]]]


def as_boxes(boxes: BoxesLike) -> np.ndarray:
    """Boxes as a float64 numpy array ``[N, 4]``."""
    if isinstance(boxes, torch.Tensor):
        boxes = boxes.detach().cpu().numpy()
    arr = np.asarray(boxes, dtype=np.float64)
    if arr.size == 0:
        return np.zeros((0, 4), np.float64)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"boxes must have shape [N, 4], got {list(arr.shape)}")
    return arr


def box_sizes(boxes: BoxesLike) -> tuple[np.ndarray, np.ndarray]:
    """(widths [N], heights [N]) of xyxy boxes."""
    b = as_boxes(boxes)
    return b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]


def _boxes_of(data: Iterable[Annotation] | np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(data, (np.ndarray, torch.Tensor)):
        return as_boxes(data)
    chunks = [np.asarray(ann.boxes, np.float64).reshape(-1, 4) for ann in data]
    return np.concatenate(chunks) if chunks else np.zeros((0, 4), np.float64)


def _summary(values: np.ndarray, percentiles: Sequence[int]) -> dict[str, float]:
    if len(values) == 0:
        return {}
    out = {"min": float(values.min())}
    for p, v in zip(percentiles, np.percentile(values, list(percentiles))):
        out[f"p{p}"] = float(v)
    out["max"] = float(values.max())
    out["mean"] = float(values.mean())
    return out


def box_statistics(
    data: Iterable[Annotation] | np.ndarray | torch.Tensor,
    percentiles: Sequence[int] = PERCENTILES,
) -> dict:
    """Summary of box sizes: ``count``, ``num_degenerate`` and, over the non-degenerate boxes,
    min / percentiles (``p5`` ...) / max / mean of ``sqrt_area``, ``aspect_ratio`` (h / w),
    ``width`` and ``height``.

    ``data`` is either boxes ``[N, 4]`` or an iterable of :class:`Annotation`.
    Degenerate boxes (width or height <= 0) are counted but left out of the summaries.
    """
    boxes = _boxes_of(data)
    w, h = box_sizes(boxes)
    ok = (w > 0) & (h > 0) & np.isfinite(w) & np.isfinite(h)
    w, h = w[ok], h[ok]
    return {
        "count": int(len(boxes)),
        "num_degenerate": int((~ok).sum()),
        "sqrt_area": _summary(np.sqrt(w * h), percentiles),
        "aspect_ratio": _summary(h / w if len(w) else w, percentiles),
        "width": _summary(w, percentiles),
        "height": _summary(h, percentiles),
    }


def anchor_shapes(sizes: Sequence[float], aspect_ratios: Sequence[float]) -> np.ndarray:
    """Anchor (width, height) pairs ``[len(sizes) * len(aspect_ratios), 2]``: area ``size**2``,
    ``height / width = ratio``; sizes vary slowest."""
    if not sizes or not aspect_ratios:
        raise ValueError("need at least one anchor size and one aspect ratio")
    out = []
    for s in sizes:
        for r in aspect_ratios:
            if s <= 0 or r <= 0:
                raise ValueError(f"anchor sizes and ratios must be > 0, got size {s}, ratio {r}")
            out.append((s / math.sqrt(r), s * math.sqrt(r)))
    return np.asarray(out, np.float64)


def best_anchor_iou(
    boxes: BoxesLike,
    sizes: Sequence[float],
    aspect_ratios: Sequence[float],
) -> np.ndarray:
    """Best shape IoU ``[N]`` of each box with any anchor shape (box and anchor share a centre).

    Degenerate boxes get 0.
    """
    w, h = box_sizes(boxes)
    w = np.clip(np.nan_to_num(w), 0.0, None)[:, None]
    h = np.clip(np.nan_to_num(h), 0.0, None)[:, None]
    shapes = anchor_shapes(sizes, aspect_ratios)
    aw, ah = shapes[None, :, 0], shapes[None, :, 1]
    inter = np.minimum(w, aw) * np.minimum(h, ah)
    union = w * h + aw * ah - inter
    iou = inter / union
    return iou.max(axis=1) if len(iou) else np.zeros(0, np.float64)


def anchor_coverage(
    boxes: BoxesLike,
    sizes: Sequence[float],
    aspect_ratios: Sequence[float],
    thresholds: Sequence[float] = (0.5, 0.7),
) -> dict[float, float]:
    """``{threshold: fraction of boxes whose best shape IoU with an anchor is >= threshold}``.

    An upper bound (see the module docstring). With no boxes every fraction is ``nan``.
    """
    best = best_anchor_iou(boxes, sizes, aspect_ratios)
    if len(best) == 0:
        return {float(t): float("nan") for t in thresholds}
    return {float(t): float((best >= t - 1e-9).mean()) for t in thresholds}


def suggest_anchors(
    boxes: BoxesLike,
    num_sizes: int = 3,
    ratios_count: int = 3,
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Anchor ``(sizes, aspect_ratios)`` spread over the data's boxes.

    Sizes are the ``(i + 0.5) / num_sizes`` quantiles of ``sqrt(area)``, rounded to integers;
    ratios are the ``(i + 0.5) / ratios_count`` quantiles of ``log(h / w)``, exponentiated and
    rounded to two decimals. Degenerate boxes are ignored; ValueError when none is left.
    Equal quantiles (very uniform data) give repeated values; they are kept so that the
    number of anchors is the one asked for.
    """
    if num_sizes < 1 or ratios_count < 1:
        raise ValueError(
            f"num_sizes and ratios_count must be >= 1, got {num_sizes}, {ratios_count}"
        )
    w, h = box_sizes(boxes)
    ok = (w > 0) & (h > 0) & np.isfinite(w) & np.isfinite(h)
    w, h = w[ok], h[ok]
    if len(w) == 0:
        raise ValueError("suggest_anchors: no non-degenerate boxes")
    qs = (np.arange(num_sizes) + 0.5) / num_sizes
    sizes = np.quantile(np.sqrt(w * h), qs)
    qr = (np.arange(ratios_count) + 0.5) / ratios_count
    ratios = np.exp(np.quantile(np.log(h / w), qr))
    return (
        tuple(float(max(1, round(float(s)))) for s in sizes),
        tuple(float(max(0.01, round(float(r), 2))) for r in ratios),
    )


def input_scale(height: int, width: int, min_size: float, max_size: float) -> float:
    """Resize factor the model applies: shorter side to ``min_size``, longer side at most
    ``max_size``."""
    short, long = min(height, width), max(height, width)
    if short <= 0:
        return 1.0
    return min(min_size / short, max_size / long)


def input_boxes(
    annotations: Iterable[Annotation],
    min_size: float | None = None,
    max_size: float | None = None,
    include_crowd: bool = False,
) -> np.ndarray:
    """All boxes ``[N, 4]`` of ``annotations``, rescaled to network-input pixels when
    ``min_size`` is given (``max_size`` defaults to no cap). Crowd boxes are left out unless
    ``include_crowd``."""
    chunks = []
    for ann in annotations:
        b = np.asarray(ann.boxes, np.float64).reshape(-1, 4)
        if not include_crowd and len(ann.iscrowd):
            b = b[~np.asarray(ann.iscrowd, bool)]
        if min_size is not None:
            b = b * input_scale(ann.height, ann.width, min_size, max_size or math.inf)
        chunks.append(b)
    return np.concatenate(chunks) if chunks else np.zeros((0, 4), np.float64)
