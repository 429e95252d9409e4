"""Sliced inference: detect objects in an image far larger than the network input.

Shapes: the image is float ``[3, H, W]`` in 0..1; detections are ``boxes [D, 4]`` (xyxy, in the
image's pixels), ``labels [D]`` (1..K), ``scores [D]``.

The image is cut into overlapping ``tile x tile`` windows (:func:`fasterrcnn.data.tiling.tile_grid`,
last tiles flush with the border), the windows go through ``model.predict`` in batches of
``batch_size`` (each tile is handled by the model's own input transform: configure
``min_size_test = max_size_test = tile`` for native resolution), their boxes are shifted back to
image coordinates and merged:

1. *cut objects* (``drop_cut=True``): a box that touches an inner tile border (one with a
   neighbouring tile, within ``margin`` px) is the visible part of an object the tile cut; it is
   dropped when its extent across that border is smaller than the overlap, because then the
   neighbouring tile sees the object whole (when the overlap is at least the size of the
   largest object, every object lies wholly inside some tile). Wider boxes are kept: no tile
   sees such an object whole, and step 2 merges its parts as well as it can;
2. class-wise NMS at ``nms_thresh`` over all tiles removes the duplicates of objects that
   several tiles see whole; the best ``max_detections`` remain.

Per-tile detections are capped by the model's ``roi_head.detections_per_img`` (raise it for
crowded imagery: e.g. 300 per tile). Images no larger than one tile go through ``model.predict``
unchanged (one call, the model's own cap).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchvision.ops import batched_nms

from fasterrcnn.data.tiling import tile_grid


def cut_mask(
    boxes: Tensor, window: tuple[int, int, int, int], height: int, width: int, overlap: int,
    margin: float = 2.0,
) -> Tensor:
    """[D] bool: which tile-local ``boxes`` (window coordinates) are cut objects to drop (pure).

    See rule 1 of the module docstring; borders of the image itself never cut.
    """
    y0, x0, y1, x1 = window
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    cut = torch.zeros(len(boxes), dtype=torch.bool, device=boxes.device)
    if x0 > 0:
        cut |= (boxes[:, 0] <= margin) & (w < overlap)
    if x1 < width:
        cut |= (boxes[:, 2] >= (x1 - x0) - margin) & (w < overlap)
    if y0 > 0:
        cut |= (boxes[:, 1] <= margin) & (h < overlap)
    if y1 < height:
        cut |= (boxes[:, 3] >= (y1 - y0) - margin) & (h < overlap)
    return cut


def merge_detections(
    boxes: Tensor, labels: Tensor, scores: Tensor, nms_thresh: float, max_detections: int
) -> dict[str, Tensor]:
    """Class-wise NMS, then the ``max_detections`` best, sorted by score (pure)."""
    if len(boxes) == 0:
        return {"boxes": boxes.reshape(0, 4), "labels": labels, "scores": scores}
    keep = batched_nms(boxes.float(), scores.float(), labels, float(nms_thresh))
    keep = keep[: int(max_detections)]  # batched_nms returns indices by decreasing score
    return {"boxes": boxes[keep], "labels": labels[keep], "scores": scores[keep]}


def predict_sliced(
    model: Any,
    image: Tensor,
    *,
    tile: int,
    overlap: int,
    batch_size: int = 4,
    nms_thresh: float = 0.5,
    max_detections: int = 1000,
    drop_cut: bool = True,
    margin: float = 2.0,
) -> dict[str, Tensor]:
    """Detections in ``image`` (float [3, H, W], 0..1) from overlapping tiles; see the module
    docstring. ``model`` needs ``predict(list of images) -> list of dicts`` (a FasterRCNN)."""
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"image must be [3, H, W], got {list(image.shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    height, width = int(image.shape[-2]), int(image.shape[-1])
    if height <= tile and width <= tile:
        return model.predict([image])[0]
    windows = tile_grid(height, width, tile, overlap)
    all_boxes, all_labels, all_scores = [], [], []
    with torch.no_grad():
        for start in range(0, len(windows), batch_size):
            chunk = windows[start : start + batch_size]
            crops = [image[:, y0:y1, x0:x1] for y0, x0, y1, x1 in chunk]
            for window, det in zip(chunk, model.predict(crops)):
                boxes, labels, scores = det["boxes"], det["labels"], det["scores"]
                if drop_cut and len(boxes):
                    keep = ~cut_mask(boxes, window, height, width, overlap, margin)
                    boxes, labels, scores = boxes[keep], labels[keep], scores[keep]
                y0, x0 = window[0], window[1]
                all_boxes.append(boxes + boxes.new_tensor([x0, y0, x0, y0]))
                all_labels.append(labels)
                all_scores.append(scores)
    return merge_detections(
        torch.cat(all_boxes), torch.cat(all_labels), torch.cat(all_scores),
        nms_thresh, max_detections,
    )
