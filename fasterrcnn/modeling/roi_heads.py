"""The Fast R-CNN detector on the shared features (paper §3, after Fast R-CNN).

Shapes: N images, R RoIs in the batch, C x P x P pooled features, K object classes (K + 1 with
background).

RoI pooling (7x7, :mod:`.pooler`) -> fc6 -> fc7 (:class:`BoxHead`; or 3x3 convs, then fc layers:
:class:`ConvFCBoxHead`) -> sibling outputs: ``class_logits`` [R, K+1] (softmax) and
``box_deltas`` [R, 4(K+1)] (class-specific regression, normalised targets).
Training RoIs come from :mod:`.roi_sampling`, the losses from
:class:`~.losses.FastRCNNLoss`, the final detections from :class:`~.postprocess.DetectionSelector`.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import Tensor, nn

from .box_coding import BoxCoder
from .losses import FastRCNNLoss
from .pooler import RoIPooler
from .postprocess import DetectionSelector, class_boxes
from .roi_sampling import RoISampling, Sampled

Features = Mapping[str, Tensor]


class BoxHead(nn.Module):
    """fc6 and fc7 (each Linear + ReLU [+ dropout]) on the flattened pooled features."""

    def __init__(self, in_features: int, representation_size: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.fc6 = nn.Linear(in_features, representation_size)
        self.fc7 = nn.Linear(representation_size, representation_size)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.out_features = representation_size

    def forward(self, x: Tensor) -> Tensor:
        x = self.dropout(torch.relu(self.fc6(x.flatten(1))))
        return self.dropout(torch.relu(self.fc7(x)))


def _conv_bn(in_channels: int, out_channels: int) -> nn.Sequential:
    conv = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)  # the BatchNorm has the bias
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    return nn.Sequential(conv, nn.BatchNorm2d(out_channels))


class ConvFCBoxHead(nn.Module):
    """3x3 conv (no bias) + BatchNorm + ReLU layers on the pooled features [R, C, P, P]
    (``convs``, widths ``conv_channels``), then flatten and ``num_fc`` layers of Linear + ReLU
    [+ dropout] (``fcs``, width ``representation_size``).

    torchvision's ``fasterrcnn_resnet50_fpn_v2`` head (detectron2's "4conv1fc") is
    ``ConvFCBoxHead(256, 7, (256,) * 4, 1024, num_fc=1)``. The BatchNorm layers train with the
    head (statistics over the batch's RoIs) and use their running statistics in eval mode.
    """

    def __init__(
        self,
        in_channels: int,
        pool_size: int,
        conv_channels: Sequence[int],
        representation_size: int,
        num_fc: int = 1,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if num_fc < 1:
            raise ValueError(f"num_fc must be >= 1, got {num_fc}")
        widths = (in_channels, *conv_channels)
        self.convs = nn.ModuleList(_conv_bn(cin, cout) for cin, cout in zip(widths, widths[1:]))
        flat = widths[-1] * pool_size**2
        self.fcs = nn.ModuleList(
            nn.Linear(flat if i == 0 else representation_size, representation_size) for i in range(num_fc)
        )
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.out_features = representation_size

    def forward(self, x: Tensor) -> Tensor:
        for block in self.convs:
            x = torch.relu(block(x))
        x = x.flatten(1)
        for fc in self.fcs:
            x = self.dropout(torch.relu(fc(x)))
        return x


class BoxPredictor(nn.Module):
    """cls_score (K+1) and class-specific bbox_pred (4(K+1)).

    With ``class_agnostic`` bbox_pred has 4 outputs, one box for every class (detectron2's
    ``CLS_AGNOSTIC_BBOX_REG``, mmdetection's ``reg_class_agnostic``): every foreground RoI trains
    the same regressor. The output is still [R, 4(K+1)] (the 4 deltas repeated per class), so
    losses, decoding and cascade stages do not change.
    """

    def __init__(self, in_features: int, num_classes: int, class_agnostic: bool = False) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.class_agnostic = class_agnostic
        self.cls_score = nn.Linear(in_features, num_classes + 1)
        self.bbox_pred = nn.Linear(in_features, 4 if class_agnostic else 4 * (num_classes + 1))
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        deltas = self.bbox_pred(x)
        if self.class_agnostic:
            deltas = deltas.repeat(1, self.num_classes + 1)
        return self.cls_score(x), deltas


class RoIHeads(nn.Module):
    """The detector: ``pooler`` -> ``box_head`` -> ``predictor``, boxes coded by ``coder``;
    trained on the RoIs ``sampling`` picks with ``loss``; detections chosen by ``selector``."""

    def __init__(
        self,
        pooler: RoIPooler,
        box_head: nn.Module,
        predictor: BoxPredictor,
        coder: BoxCoder,
        *,
        sampling: RoISampling,
        loss: FastRCNNLoss,
        selector: DetectionSelector,
    ) -> None:
        super().__init__()
        self.pooler = pooler
        self.box_head = box_head
        self.predictor = predictor
        self.coder = coder
        self.sampling = sampling
        self.loss_fn = loss
        self.selector = selector

    def forward(self, features: Features, rois: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        """(class_logits [R, K+1], box_deltas [R, 4(K+1)]) for the RoIs of every image."""
        return self.predictor(self.box_head(self.pooler(features, rois)))

    def sample(
        self, features: Features, proposals: Sequence[Tensor], gt_boxes: Sequence[Tensor],
        gt_labels: Sequence[Tensor], *, keep_graph: bool = False,
    ) -> list[Sampled]:
        """The training RoIs of each image (hard mining scores them with this head, no gradient);
        ``keep_graph``: the RoIs keep the proposals' autograd graph."""

        def example_losses(rois: list[Tensor], labels: Tensor, matched: Tensor) -> Tensor:
            logits, deltas = self({k: f.detach() for k, f in features.items()}, rois)
            return self.loss_fn.example_losses(logits, deltas, torch.cat(rois), labels, matched, self.coder)

        if keep_graph:
            return self.sampling(proposals, gt_boxes, gt_labels, example_losses, keep_graph=True)
        return self.sampling(proposals, gt_boxes, gt_labels, example_losses)

    def loss(
        self,
        features: Features,
        proposals: Sequence[Tensor],
        gt_boxes: Sequence[Tensor],
        gt_labels: Sequence[Tensor],
        image_sizes: Sequence[tuple[int, int]],
        *,
        box_gradient: bool = False,
    ) -> dict[str, Tensor]:
        """``roi_cls`` and ``roi_reg`` on the sampled RoIs (see :class:`~.losses.FastRCNNLoss`).

        ``box_gradient`` (non-approximate joint training): ``proposals`` carry gradient and the
        sampled RoIs keep it into the pooling (:class:`~.pooler.RoIPooler` then warps them
        differentiably), so both losses reach the proposals' coordinates through the pooled
        features, and only that way: the regression targets are encoded from the detached RoIs
        (the head's regression loss is a function of its own deltas, as detectron2 and
        mmdetection detach their targets), so no gradient flows through the targets.
        """
        sampled = self.sample(features, proposals, gt_boxes, gt_labels, keep_graph=box_gradient)
        class_logits, box_deltas = self(features, [r for r, _, _ in sampled])
        if box_gradient:
            sampled = [(r.detach(), lab, m) for r, lab, m in sampled]
        return self.loss_fn(class_logits, box_deltas, sampled, self.coder, "roi")

    def class_boxes(
        self, features: Features, proposals: Sequence[Tensor], image_sizes: Sequence[tuple[int, int]]
    ) -> list[tuple[Tensor, Tensor]]:
        """Per image, before selection: scores [P, K] and per-class boxes [P, K, 4] (input pixels)."""
        class_logits, box_deltas = self(features, proposals)
        return class_boxes(class_logits, box_deltas, proposals, image_sizes, coder=self.coder)
