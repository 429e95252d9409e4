"""Region Proposal Network (paper §3.1): a small network slid over the shared feature map.

Shapes: N images; L feature levels, level l a C x Hl x Wl map; A anchors per position;
R = sum_l Hl * Wl * A anchors per image (level by level, see :mod:`.anchors`); G ground-truth
boxes of an image. The paper's model has one level; with several (FPN) one head is shared by all.

Naming: ``objectness_logits`` [N, R, 2] (background, object) — the paper's 2k cls outputs as a
two-class softmax; ``anchor_deltas`` [N, R, 4] — the 4k reg outputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
from torch import Tensor, nn

from .anchors import AnchorGenerator, inside_image
from .box_coding import BoxCoder, at_least_float32
from .losses import box_balanced_example_weights, detection_losses
from .matching import BACKGROUND, IGNORE, Matcher, pairwise_iou
from .proposals import select_proposals
from .sampling import Sampler

POSITIVE_WEIGHTINGS = ("anchor", "box")  # see RegionProposalNetwork.loss


class RPNHead(nn.Module):
    """3x3 conv + ReLU (``conv_depth`` of them: ``conv``, then ``extra_convs``), then sibling 1x1
    convs: cls (2A channels) and reg (4A channels).

    cls channels are laid out as [background of anchors 0..A-1, object of anchors 0..A-1].
    ``conv_depth=2`` is torchvision's ``RPNHead(..., conv_depth=2)`` of ``fasterrcnn_resnet50_fpn_v2``.
    """

    def __init__(self, in_channels: int, mid_channels: int, num_anchors: int, conv_depth: int = 1) -> None:
        super().__init__()
        if conv_depth < 1:
            raise ValueError(f"conv_depth must be >= 1, got {conv_depth}")
        self.num_anchors = num_anchors
        self.conv = nn.Conv2d(in_channels, mid_channels, 3, padding=1)
        self.extra_convs = nn.ModuleList(nn.Conv2d(mid_channels, mid_channels, 3, padding=1)
                                         for _ in range(conv_depth - 1))
        self.cls_logits = nn.Conv2d(mid_channels, 2 * num_anchors, 1)
        self.bbox_pred = nn.Conv2d(mid_channels, 4 * num_anchors, 1)
        for layer in (self.conv, *self.extra_convs, self.cls_logits, self.bbox_pred):
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.zeros_(layer.bias)

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """(logits [N, Hf * Wf * A, 2], deltas [N, Hf * Wf * A, 4]) of one level's map."""
        n, _, h, w = features.shape
        a = self.num_anchors
        t = torch.relu(self.conv(features))
        for conv in self.extra_convs:
            t = torch.relu(conv(t))
        logits = self.cls_logits(t).view(n, 2, a, h, w).permute(0, 3, 4, 2, 1).reshape(n, -1, 2)
        deltas = self.bbox_pred(t).view(n, a, 4, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, 4)
        return logits, deltas


@dataclass(frozen=True)
class ProposalSettings:
    """How many proposals to keep, and how: one instance for training, one for testing (see
    :func:`~.proposals.select_proposals`)."""

    pre_nms_top_n: int
    post_nms_top_n: int
    nms_thresh: float
    min_size: float
    top_n_first: bool = False
    score_thresh: float = 0.0


@dataclass
class RPNOutput:
    anchors: Tensor  # [R, 4], shared by the batch (images are padded to one size)
    objectness_logits: Tensor  # [N, R, 2]
    anchor_deltas: Tensor  # [N, R, 4]
    level_counts: list[int]  # anchors of each level, in order (sum R)


def label_anchors(
    anchors: Tensor,
    gt_boxes: Tensor,
    image_size: tuple[int, int],
    *,
    matcher: Matcher,
    straddle_thresh: float | None,
) -> Tensor:
    """[R] matched gt index, BACKGROUND or IGNORE for each anchor of one image.

    Anchors crossing the image boundary (by more than ``straddle_thresh``) are ignored and never
    take part in matching, as in the paper's training.
    """
    inside = inside_image(anchors, image_size, straddle_thresh).nonzero(as_tuple=True)[0]
    # only the anchors inside take part: IoU and matching over that subset (often half of them)
    matched = torch.full((len(anchors),), IGNORE, dtype=torch.int64, device=anchors.device)
    if len(gt_boxes):
        iou = pairwise_iou(gt_boxes.to(anchors.dtype), anchors[inside])
    else:
        iou = anchors.new_zeros((0, len(inside)))
    matched[inside] = matcher(iou)
    return matched


class RegionProposalNetwork(nn.Module):
    def __init__(
        self,
        head: RPNHead,
        anchor_generator: AnchorGenerator,
        *,
        matcher: Matcher,
        sampler: Sampler,
        coder: BoxCoder,
        train_settings: ProposalSettings,
        test_settings: ProposalSettings,
        straddle_thresh: float | None = 0.0,
        smooth_l1_beta: float = 1.0 / 9.0,
        loss_weight_cls: float = 1.0,
        loss_weight_reg: float = 1.0,
        positive_weighting: str = "anchor",
    ) -> None:
        super().__init__()
        if positive_weighting not in POSITIVE_WEIGHTINGS:
            raise ValueError(
                f"positive_weighting must be one of {POSITIVE_WEIGHTINGS}, got {positive_weighting!r}"
            )
        if head.num_anchors != anchor_generator.num_anchors:
            raise ValueError("RPN head and anchor generator disagree on the number of anchors")
        self.head = head
        self.anchor_generator = anchor_generator
        self.matcher = matcher
        self.sampler = sampler
        self.coder = coder
        self.train_settings = train_settings
        self.test_settings = test_settings
        self.straddle_thresh = straddle_thresh
        self.smooth_l1_beta = smooth_l1_beta
        self.loss_weight_cls = loss_weight_cls
        self.loss_weight_reg = loss_weight_reg
        self.positive_weighting = positive_weighting

    def forward(self, features: Mapping[str, Tensor], image_size: tuple[int, int] | None = None) -> RPNOutput:
        """The head's outputs on every level of ``features`` the anchor generator knows
        (``image_size``: the padded batch's (H, W), for anchors that need it)."""
        levels = self.anchor_generator.levels
        outs = [self.head(features[k]) for k in levels]
        anchors = self.anchor_generator({k: tuple(features[k].shape[-2:]) for k in levels}, image_size)
        device = features[levels[0]].device
        if len(levels) == 1:
            return RPNOutput(anchors[0].to(device), outs[0][0], outs[0][1], [len(anchors[0])])
        return RPNOutput(
            torch.cat(anchors).to(device),
            torch.cat([o[0] for o in outs], dim=1),
            torch.cat([o[1] for o in outs], dim=1),
            [len(a) for a in anchors],
        )

    def propose(
        self, out: RPNOutput, image_sizes: Sequence[tuple[int, int]], *, training: bool,
        differentiable: bool = False,
    ) -> tuple[list[Tensor], list[Tensor]]:
        """Proposals (boxes, objectness probabilities) per image with the train or test settings.

        ``differentiable`` (non-approximate joint training): the boxes carry the gradient of
        ``out.anchor_deltas`` (the same boxes; see :func:`~.proposals.select_proposals`)."""
        s = self.train_settings if training else self.test_settings
        logits = at_least_float32(out.objectness_logits)
        boxes, scores = select_proposals(
            out.anchors,
            logits[..., 1] - logits[..., 0],
            at_least_float32(out.anchor_deltas),
            image_sizes,
            coder=self.coder,
            level_counts=out.level_counts,
            pre_nms_top_n=s.pre_nms_top_n,
            post_nms_top_n=s.post_nms_top_n,
            nms_thresh=s.nms_thresh,
            min_size=s.min_size,
            top_n_first=s.top_n_first,
            score_thresh=s.score_thresh,
            differentiable=differentiable,
        )
        return boxes, [torch.sigmoid(x) for x in scores]  # sigmoid(fg - bg) = softmax fg prob

    def loss(
        self,
        out: RPNOutput,
        image_sizes: Sequence[tuple[int, int]],
        gt_boxes: Sequence[Tensor],
    ) -> dict[str, Tensor]:
        """``rpn_cls`` (log loss over the sampled anchors) and ``rpn_reg`` (smooth L1).

        With ``positive_weighting="box"`` each image's positive anchors are weighted so that every
        gt box counts the same (:func:`box_balanced_weights`); negatives always weigh 1.
        """
        balanced = self.positive_weighting == "box"
        logits, labels, deltas, targets, weights = [], [], [], [], []
        for i, size in enumerate(image_sizes):
            gt = gt_boxes[i]
            matched = label_anchors(
                out.anchors, gt, size, matcher=self.matcher, straddle_thresh=self.straddle_thresh
            )
            pos, neg = self.sampler(matched >= 0, matched == BACKGROUND)
            idx = torch.cat((pos, neg))
            logits.append(out.objectness_logits[i, idx])
            labels.append((torch.arange(len(idx), device=idx.device) < len(pos)).long())
            deltas.append(out.anchor_deltas[i, pos])
            targets.append(self.coder.encode(out.anchors[pos], gt[matched[pos]].to(out.anchors.dtype)))
            if balanced:
                weights.append(box_balanced_example_weights(matched[pos], len(idx)))
        labels_t = torch.cat(labels)
        cls_weights = torch.cat(weights) if balanced else None
        cls, reg = detection_losses(
            torch.cat(logits),
            labels_t,
            torch.cat(deltas),
            torch.cat(targets),
            beta=self.smooth_l1_beta,
            class_weights=cls_weights,
            box_weights=cls_weights[labels_t == 1] if cls_weights is not None else None,
        )
        return {"rpn_cls": cls * self.loss_weight_cls, "rpn_reg": reg * self.loss_weight_reg}
