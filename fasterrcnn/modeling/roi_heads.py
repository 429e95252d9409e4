"""The Fast R-CNN detector on the shared features (paper §3, after Fast R-CNN).

Shapes: N images, R RoIs in the batch, C x P x P pooled features, K object classes (K + 1 with
background).

RoI pooling (7x7, :mod:`.pooler`) -> fc6 -> fc7 -> sibling outputs: ``class_logits`` [R, K+1] (softmax) and
``box_deltas`` [R, 4(K+1)] (class-specific regression, normalised targets).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn
from torchvision.ops import box_iou

from ..config import BOX_LOSSES
from .box_coding import BoxCoder
from .cascade import RefineStage, most_likely_classes, refine_boxes
from .losses import box_balanced_example_weights, detection_losses, example_losses, giou_losses
from .matching import BACKGROUND, Matcher
from .postprocess import class_boxes, select_detections
from .proposals import add_gt_boxes
from .quality import IoUPredictor, quality_loss, quality_targets, rescore
from .pooler import RoIPooler, scale_boxes_about_centre  # noqa: F401 (re-exported)
from .sampling import HardExampleMiner, Sampler


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


def _match_rois(proposals: Tensor, gt_boxes: Tensor, matcher: Matcher) -> Tensor:
    """[P] gt index of each proposal, or BACKGROUND / IGNORE (see :mod:`.matching`)."""
    if len(gt_boxes):
        iou = box_iou(gt_boxes.to(proposals.dtype), proposals)
    else:
        iou = proposals.new_zeros((0, len(proposals)))
    return matcher(iou)


def _take_rois(
    proposals: Tensor, gt_boxes: Tensor, gt_labels: Tensor, matched: Tensor, pos: Tensor, neg: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """(rois, labels, matched gt boxes) of the proposals ``pos`` (foreground) then ``neg``."""
    idx = torch.cat((pos, neg))
    rois = proposals[idx]
    labels = torch.zeros(len(idx), dtype=torch.int64, device=proposals.device)
    matched_boxes = rois.clone()
    if len(pos):
        labels[: len(pos)] = gt_labels[matched[pos]]
        matched_boxes[: len(pos)] = gt_boxes[matched[pos]].to(rois.dtype)
    return rois, labels, matched_boxes


def sample_rois(
    proposals: Tensor,
    gt_boxes: Tensor,
    gt_labels: Tensor,
    *,
    matcher: Matcher,
    sampler: Sampler,
) -> tuple[Tensor, Tensor, Tensor]:
    """Training RoIs of one image: (rois [S, 4], labels [S] 0..K, matched gt boxes [S, 4]).

    Foreground RoIs come first and take their gt box's class; background RoIs label 0 (their gt
    box is irrelevant and set to the RoI itself so that no NaN can arise downstream).
    """
    matched = _match_rois(proposals, gt_boxes, matcher)
    pos, neg = sampler(matched >= 0, matched == BACKGROUND)
    return _take_rois(proposals, gt_boxes, gt_labels, matched, pos, neg)


def label_rois(
    proposals: Tensor, gt_boxes: Tensor, gt_labels: Tensor, *, matcher: Matcher
) -> tuple[Tensor, Tensor, Tensor]:
    """Like :func:`sample_rois` but every foreground and background proposal (ignored ones are
    dropped): the candidates of hard example mining."""
    matched = _match_rois(proposals, gt_boxes, matcher)
    pos = (matched >= 0).nonzero(as_tuple=True)[0]
    neg = (matched == BACKGROUND).nonzero(as_tuple=True)[0]
    return _take_rois(proposals, gt_boxes, gt_labels, matched, pos, neg)


class RoIHeads(nn.Module):
    def __init__(
        self,
        pooler: RoIPooler,
        box_head: BoxHead,
        predictor: BoxPredictor,
        *,
        matcher: Matcher,
        sampler: Sampler,
        coder: BoxCoder,
        add_gt_as_proposals: bool = True,
        smooth_l1_beta: float = 1.0,
        box_loss: str = "smooth_l1",
        focal_gamma: float = 0.0,
        score_thresh: float = 0.05,
        nms_thresh: float = 0.3,
        detections_per_img: int = 100,
        loss_weight_cls: float = 1.0,
        loss_weight_reg: float = 1.0,
        positive_weighting: str = "roi",
        vote_iou: float = 0.0,
        miner: HardExampleMiner | None = None,
        stages: Sequence[RefineStage] = (),
        quality: IoUPredictor | None = None,
        quality_weight: float = 0.5,
        quality_min_iou: float = 0.1,
        quality_loss_weight: float = 1.0,
    ) -> None:
        super().__init__()
        if quality is not None and len(stages):
            raise ValueError("the IoU quality branch and cascade stages cannot be combined")
        if not 0.0 <= quality_weight <= 1.0:
            raise ValueError(f"quality_weight must be in [0, 1], got {quality_weight}")
        if positive_weighting not in ("roi", "box"):
            raise ValueError(f"positive_weighting must be 'roi' or 'box', got {positive_weighting!r}")
        if not 0.0 <= vote_iou <= 1.0:
            raise ValueError(f"vote_iou must be in [0, 1] (0 = no box voting), got {vote_iou}")
        if box_loss not in BOX_LOSSES:
            raise ValueError(f"box_loss must be one of {BOX_LOSSES}, got {box_loss!r}")
        self.pooler = pooler
        self.box_head = box_head
        self.predictor = predictor
        self.matcher = matcher
        self.sampler = sampler
        self.coder = coder
        self.add_gt_as_proposals = add_gt_as_proposals
        self.smooth_l1_beta = smooth_l1_beta
        self.box_loss = box_loss  # "smooth_l1" on the deltas (the paper) | "giou" on the boxes
        self.focal_gamma = focal_gamma  # > 0: focal modulation of the log loss (0: the paper)
        self.score_thresh = score_thresh
        self.nms_thresh = nms_thresh
        self.detections_per_img = detections_per_img
        self.loss_weight_cls = loss_weight_cls
        self.loss_weight_reg = loss_weight_reg
        self.positive_weighting = positive_weighting
        self.vote_iou = vote_iou
        self.miner = miner
        self.stages = nn.ModuleList(stages)  # later cascade stages (.cascade); empty: the paper
        self.quality = quality  # predicted IoU per class (.quality); None: the paper
        self.quality_weight = quality_weight
        self.quality_min_iou = quality_min_iou
        self.quality_loss_weight = quality_loss_weight

    def forward(
        self, features: Tensor, rois: Sequence[Tensor], feature_sizes: Sequence[tuple[int, int]] | None = None
    ) -> tuple[Tensor, Tensor]:
        """(class_logits [R, K+1], box_deltas [R, 4(K+1)]) for the RoIs of every image.

        ``feature_sizes``: each image's (h, w) part of the padded map (see :mod:`.padding`), passed
        to the pooler here and in every method below; ``None``: the whole map.
        """
        return self.predictor(self.box_head(self.pooler(features, rois, feature_sizes)))

    def loss(
        self,
        features: Tensor,
        proposals: Sequence[Tensor],
        gt_boxes: Sequence[Tensor],
        gt_labels: Sequence[Tensor],
        image_sizes: Sequence[tuple[int, int]] | None = None,
        feature_sizes: Sequence[tuple[int, int]] | None = None,
    ) -> dict[str, Tensor]:
        """``roi_cls`` (log loss over K+1) and ``roi_reg`` (smooth L1 on the true class's deltas).

        With ``positive_weighting="box"`` each image's foreground RoIs are weighted so that every
        gt box counts the same (:func:`box_balanced_example_weights`); background RoIs weigh 1.
        The RoIs are a random sample (``sampler``) or, with a ``miner``, the hardest ones
        (:meth:`mine_rois`). Each later cascade stage ``k`` (2, 3, ...) adds ``roi{k}_cls`` and
        ``roi{k}_reg`` on the boxes the stage before it regressed (clipped to ``image_sizes``
        when given), relabelled at its own IoU. The IoU branch adds ``roi_iou``
        (:mod:`.quality`).
        """
        if self.add_gt_as_proposals:
            proposals = add_gt_boxes(proposals, gt_boxes)
        proposals = [p.detach() for p in proposals]
        if self.miner is not None:
            sampled = self.mine_rois(features, proposals, gt_boxes, gt_labels, feature_sizes)
        else:
            sampled = [
                sample_rois(p, g, lab, matcher=self.matcher, sampler=self.sampler)
                for p, g, lab in zip(proposals, gt_boxes, gt_labels)
            ]
        rois = [r for r, _, _ in sampled]
        x = self.box_head(self.pooler(features, rois, feature_sizes))
        class_logits, box_deltas = self.predictor(x)
        losses = self._stage_losses(class_logits, box_deltas, sampled, self.coder, "roi", 1.0)
        if self.quality is not None:
            targets = quality_targets(rois, box_deltas, gt_boxes, gt_labels, coder=self.coder,
                                      min_iou=self.quality_min_iou)
            losses["roi_iou"] = quality_loss(self.quality(x), *targets) * self.quality_loss_weight
        coder = self.coder
        for k, stage in enumerate(self.stages, start=2):
            labels = torch.cat([lab for _, lab, _ in sampled])
            classes = torch.where(labels > 0, labels, most_likely_classes(class_logits.detach()))
            boxes = refine_boxes(box_deltas.detach(), [r for r, _, _ in sampled], classes, image_sizes,
                                 coder=coder)
            coder = stage.coder
            sampled = [label_rois(b, g, lab, matcher=stage.matcher)
                       for b, g, lab in zip(boxes, gt_boxes, gt_labels)]
            class_logits, box_deltas = stage(self.pooler(features, [b for b, _, _ in sampled], feature_sizes))
            losses.update(self._stage_losses(class_logits, box_deltas, sampled, stage.coder,
                                             f"roi{k}", stage.loss_weight))
        return losses

    def _stage_losses(
        self,
        class_logits: Tensor,
        box_deltas: Tensor,
        sampled: Sequence[tuple[Tensor, Tensor, Tensor]],
        coder: BoxCoder,
        prefix: str,
        weight: float,
    ) -> dict[str, Tensor]:
        """``{prefix}_cls`` and ``{prefix}_reg`` of one stage's (rois, labels, matched gt boxes)
        per image (foreground first), scaled by ``weight``."""
        labels = [lab for _, lab, _ in sampled]
        matched = [m for _, _, m in sampled]
        labels_t = torch.cat(labels)
        rois_t, matched_t = torch.cat([r for r, _, _ in sampled]), torch.cat(matched)
        fg = (labels_t > 0).nonzero(as_tuple=True)[0]
        deltas = box_deltas.view(len(labels_t), -1, 4)[fg, labels_t[fg]]
        cls_w = box_w = None
        if self.positive_weighting == "box":
            parts = []
            for lab, m in zip(labels, matched):  # per image: foreground RoIs come first
                ids = torch.unique(m[: int((lab > 0).sum())], dim=0, return_inverse=True)[1]
                parts.append(box_balanced_example_weights(ids, len(lab)))
            cls_w = torch.cat(parts)
            box_w = cls_w[fg]
        targets = box_losses = None
        if self.box_loss == "giou":
            box_losses = giou_losses(coder.decode(deltas, rois_t[fg]), matched_t[fg])
        else:
            targets = coder.encode(rois_t[fg], matched_t[fg])
        cls, reg = detection_losses(class_logits, labels_t, deltas, targets, beta=self.smooth_l1_beta,
                                    class_weights=cls_w, box_weights=box_w, box_losses=box_losses,
                                    focal_gamma=self.focal_gamma)
        return {f"{prefix}_cls": cls * self.loss_weight_cls * weight,
                f"{prefix}_reg": reg * self.loss_weight_reg * weight}

    def mine_rois(
        self,
        features: Tensor,
        proposals: Sequence[Tensor],
        gt_boxes: Sequence[Tensor],
        gt_labels: Sequence[Tensor],
        feature_sizes: Sequence[tuple[int, int]] | None = None,
    ) -> list[tuple[Tensor, Tensor, Tensor]]:
        """Online hard example mining: per image, the ``miner``'s choice of the RoIs with the
        highest loss under the current weights (one forward pass without gradients over every
        labelled proposal), foreground first; (rois, labels, matched gt boxes) as
        :func:`sample_rois`."""
        assert self.miner is not None
        candidates = [
            label_rois(p, g, lab, matcher=self.matcher)
            for p, g, lab in zip(proposals, gt_boxes, gt_labels)
        ]
        rois = torch.cat([r for r, _, _ in candidates])
        labels = torch.cat([lab for _, lab, _ in candidates])
        matched = torch.cat([m for _, _, m in candidates])
        with torch.no_grad():
            class_logits, box_deltas = self(features.detach(), [r for r, _, _ in candidates], feature_sizes)
            deltas = box_deltas.view(len(labels), -1, 4)[torch.arange(len(labels)), labels]
            targets = torch.zeros_like(deltas)
            fg = labels > 0
            targets[fg] = self.coder.encode(rois[fg], matched[fg]).to(targets.dtype)
            losses = example_losses(class_logits, labels, deltas, targets, beta=self.smooth_l1_beta)
        out = []
        start = 0
        for r, lab, m in candidates:
            keep = self.miner(losses[start : start + len(r)], r)
            start += len(r)
            keep = keep[(lab[keep] == 0).to(torch.int8).argsort(stable=True)]  # foreground first
            out.append((r[keep], lab[keep], m[keep]))
        return out

    def predict(
        self,
        features: Tensor,
        proposals: Sequence[Tensor],
        image_sizes: Sequence[tuple[int, int]],
        feature_sizes: Sequence[tuple[int, int]] | None = None,
    ) -> list[dict[str, Tensor]]:
        """Detections per image in input-image coordinates: boxes, labels (1..K), scores."""
        return [self.select(s, b) for s, b in self.class_boxes(features, proposals, image_sizes, feature_sizes)]

    def class_boxes(
        self,
        features: Tensor,
        proposals: Sequence[Tensor],
        image_sizes: Sequence[tuple[int, int]],
        feature_sizes: Sequence[tuple[int, int]] | None = None,
    ) -> list[tuple[Tensor, Tensor]]:
        """Per image, before selection: scores [P, K] and per-class boxes [P, K, 4] (input pixels).

        With cascade stages: the boxes of the last stage and the mean of every stage's scores.
        With the IoU branch: the scores rescored by the predicted IoU (:func:`.quality.rescore`).
        """
        x = self.box_head(self.pooler(features, proposals, feature_sizes))
        class_logits, box_deltas = self.predictor(x)
        if not len(self.stages):
            out = class_boxes(class_logits, box_deltas, proposals, image_sizes, coder=self.coder)
            if self.quality is None:
                return out
            quality = self.quality(x).split([len(p) for p in proposals])
            return [(rescore(s, q, self.quality_weight), b) for (s, b), q in zip(out, quality)]
        probs = torch.softmax(class_logits.float(), dim=-1)
        rois, coder = list(proposals), self.coder
        for stage in self.stages:
            rois = refine_boxes(box_deltas, rois, most_likely_classes(class_logits), image_sizes,
                                coder=coder)
            class_logits, box_deltas = stage(self.pooler(features, rois, feature_sizes))
            probs = probs + torch.softmax(class_logits.float(), dim=-1)
            coder = stage.coder
        out = class_boxes(class_logits, box_deltas, rois, image_sizes, coder=coder)
        mean = (probs[:, 1:] / (1 + len(self.stages))).split([len(r) for r in rois])
        return [(m, b) for m, (_, b) in zip(mean, out)]

    def select(self, scores: Tensor, boxes: Tensor) -> dict[str, Tensor]:
        """Detections from pooled candidates (scores [M, K], boxes [M, K, 4]) with this head's
        score threshold, NMS, cap and box voting."""
        return select_detections(
            scores, boxes, score_thresh=self.score_thresh, nms_thresh=self.nms_thresh,
            detections_per_img=self.detections_per_img, vote_iou=self.vote_iou,
        )
