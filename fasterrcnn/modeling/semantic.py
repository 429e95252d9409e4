"""A dense auxiliary loss on the shared feature map: per-cell class labels painted from the
ground-truth boxes (off by default; not in the paper).

Shapes: N images, C feature channels, h x w feature cells (stride s), G gt boxes, K object
classes (K + 1 with background).

Faster R-CNN's two heads supervise the shared convolutions sparsely: 256 sampled anchors and a
few dozen RoIs per image. Here every feature cell gets a target too. The label of a cell is the
class of the *smallest* gt box that contains its centre ((j + 0.5) * s, (i + 0.5) * s), so an
object lying on or inside a larger one keeps its own cells; 0 (background) where no box does,
and ``IGNORE`` in the padding outside the image. A box too small to contain any cell centre
labels the cell under its own centre. A 1x1 convolution (optionally after a 3x3 conv + ReLU)
predicts the K + 1 classes per cell, trained with cross-entropy; nothing of it runs at test
time. This is box-level ("weak") segmentation supervision as in Zhang et al., "Single-Shot
Object Detection with Enriched Semantics" (CVPR 2018), used here as a loss only.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

IGNORE = -1  # label of cells outside the image (batch padding): no loss


def box_label_map(
    boxes: Tensor, labels: Tensor, image_size: tuple[int, int], grid: tuple[int, int], stride: int
) -> Tensor:
    """[h, w] int64 cell labels of one image: 0 background, 1..K the class of the smallest box
    holding the cell centre, IGNORE for cells whose centre lies outside ``image_size`` (H, W).

    ``boxes`` [G, 4] xyxy in the (resized) image's pixels, ``labels`` [G] in 1..K; ``grid`` is
    the feature map's (h, w) (of the padded batch).
    """
    h, w = grid
    device = boxes.device
    cy = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) * stride  # [h]
    cx = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) * stride  # [w]
    out = torch.zeros((h, w), dtype=torch.int64, device=device)
    if len(boxes):
        b = boxes.to(torch.float32)
        inside_y = (cy[None, :] >= b[:, 1:2]) & (cy[None, :] < b[:, 3:4])  # [G, h]
        inside_x = (cx[None, :] >= b[:, 0:1]) & (cx[None, :] < b[:, 2:3])  # [G, w]
        inside = inside_y[:, :, None] & inside_x[:, None, :]  # [G, h, w]
        # a box holding no cell centre claims the cell under its own centre
        empty = ~inside.flatten(1).any(dim=1)
        if empty.any():
            ci = (((b[:, 1] + b[:, 3]) / 2) / stride).floor().long().clamp(0, h - 1)
            cj = (((b[:, 0] + b[:, 2]) / 2) / stride).floor().long().clamp(0, w - 1)
            g = torch.nonzero(empty).flatten()
            inside[g, ci[g], cj[g]] = True
        area = ((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]))[:, None, None]  # [G, 1, 1]
        cost = torch.where(inside, area, torch.full((), float("inf"), device=device))
        best_cost, best = cost.min(dim=0)  # [h, w]
        out = torch.where(torch.isfinite(best_cost), labels.to(device)[best], out)
    valid_y = cy < image_size[0]
    valid_x = cx < image_size[1]
    out[~(valid_y[:, None] & valid_x[None, :])] = IGNORE
    return out


def semantic_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean cross-entropy over the labelled cells. ``logits`` [N, K+1, h, w], ``targets``
    [N, h, w] (IGNORE: skipped). 0 (with a graph) when no cell is labelled."""
    if not (targets != IGNORE).any():
        return logits.sum() * 0.0
    return F.cross_entropy(logits.float(), targets, ignore_index=IGNORE)


class SemanticHead(nn.Module):
    """Per-cell class logits [N, K+1, h, w] from the shared features [N, C, h, w]: a 1x1 conv,
    after a 3x3 conv + ReLU of ``conv_channels`` when that is > 0."""

    def __init__(self, in_channels: int, num_classes: int, *, stride: int, conv_channels: int = 0,
                 loss_weight: float = 1.0) -> None:
        super().__init__()
        self.stride = int(stride)
        self.loss_weight = float(loss_weight)
        layers: list[nn.Module] = []
        width = in_channels
        if conv_channels > 0:
            layers += [nn.Conv2d(in_channels, conv_channels, 3, padding=1), nn.ReLU(inplace=True)]
            width = conv_channels
        self.logits = nn.Conv2d(width, num_classes + 1, 1)
        self.body = nn.Sequential(*layers)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.zeros_(m.bias)

    def forward(self, features: Tensor) -> Tensor:
        return self.logits(self.body(features))

    def loss(
        self,
        features: Tensor,
        image_sizes: Sequence[tuple[int, int]],
        gt_boxes: Sequence[Tensor],
        gt_labels: Sequence[Tensor],
    ) -> Tensor:
        """``loss_weight`` x :func:`semantic_loss` of the batch against :func:`box_label_map`."""
        logits = self(features)
        grid = (logits.shape[-2], logits.shape[-1])
        targets = torch.stack([
            box_label_map(b, l, size, grid, self.stride)
            for b, l, size in zip(gt_boxes, gt_labels, image_sizes)
        ])
        return self.loss_weight * semantic_loss(logits, targets)
