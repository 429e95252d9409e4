"""Faster R-CNN: backbone -> RPN -> Fast R-CNN head, one network with shared convs (Figure 2).

Shapes: N images; per image G ground-truth boxes, P proposals, D detections.

Entry points (no hidden train/eval switch):
  * ``model.loss(images, targets)`` -> dict of losses (``rpn_cls``, ``rpn_reg``, ``roi_cls``,
    ``roi_reg``; ``semantic`` with the optional dense auxiliary head): approximate joint
    training, proposals treated as constants;
  * ``model.predict(images)`` -> one dict per image: ``boxes`` [D, 4] xyxy in the image's own
    pixels, ``labels`` [D] (1..K), ``scores`` [D]; runs in inference mode (BN/dropout in eval);
  * ``model.propose(images)`` -> RPN proposals per image (``boxes``, ``scores``).
Test-time augmentation (``model.views``, off by default): ``predict`` runs every view (a scale and
an orientation: mirrored, upside down, transposed or plain), maps each view's per-class candidate boxes back to the image and pools them
before the detector's NMS. A zoomed view (``InferenceView.max_box``) contributes only candidates
smaller than its ``max_box``.
``images`` are float tensors [3, H, W] in 0..1 of any sizes; targets are dicts with ``boxes``
[G, 4] and ``labels`` [G]. With ``mask_padding`` (off by default) each image's features,
proposals and detections are those it gets alone, whatever its batch mates (:mod:`.padding`).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
from torch import Tensor, nn

from ..config import SCORE_FUSIONS, ModelConfig
from .anchors import AnchorGenerator
from .backbones import Backbone, build_backbone
from .box_coding import BoxCoder
from .cascade import RefineStage
from .quality import IoUPredictor
from .matching import Matcher
from .padding import PaddingMasker, check_maskable, zero_padding
from .pooler import RoIPooler
from .postprocess import box_sizes, view_agreement_scores
from .roi_heads import BoxHead, BoxPredictor, RoIHeads
from .rpn import ProposalSettings, RegionProposalNetwork, RPNHead
from .sampling import HardExampleMiner, Sampler
from .semantic import SemanticHead
from .transform import ImageBatch, InputTransform, Orientation, scale_boxes
from .views import InferenceView, inference_views, zoom_views  # noqa: F401  (re-exported)

STAGES = ("rpn", "roi")


@contextmanager
def inference_mode(module: nn.Module) -> Iterator[None]:
    """Eval mode and no autograd for the duration; the previous mode is restored afterwards."""
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        module.train(was_training)


class FasterRCNN(nn.Module):
    def __init__(
        self,
        backbone: Backbone,
        rpn: RegionProposalNetwork,
        roi_heads: RoIHeads,
        transform: InputTransform,
        *,
        num_classes: int,
        views: Sequence[InferenceView] = (),
        score_fusion: str = "max",
        channels_last: bool = False,
        semantic: SemanticHead | None = None,
        mask_padding: bool = False,
    ) -> None:
        super().__init__()
        if mask_padding:
            check_maskable(backbone)
        self.mask_padding = mask_padding  # batch padding changes nothing (see ModelConfig)
        self.backbone = backbone
        self.rpn = rpn
        self.semantic = semantic  # dense auxiliary loss on the features (training only), or None
        self.channels_last = channels_last  # NHWC memory for the convolutions (see ModelConfig)
        if channels_last:
            backbone.to(memory_format=torch.channels_last)
            rpn.to(memory_format=torch.channels_last)
            if semantic is not None:
                semantic.to(memory_format=torch.channels_last)
        self.roi_heads = roi_heads
        self.transform = transform
        self.num_classes = num_classes
        self.views = tuple(views)  # test-time augmentation; () = the test scale, not mirrored
        if score_fusion not in SCORE_FUSIONS:
            raise ValueError(f"score_fusion must be one of {SCORE_FUSIONS}, got {score_fusion!r}")
        self.score_fusion = score_fusion  # how the views' scores combine (see TestAugConfig)

    # ------------------------------------------------------------------ training
    def loss(
        self,
        images: Sequence[Tensor],
        targets: Sequence[dict],
        *,
        proposals: Sequence[Tensor] | None = None,
        stages: Sequence[str] = STAGES,
    ) -> dict[str, Tensor]:
        """Training losses. ``proposals`` (original-image coordinates) replace the RPN's own for
        the RoI head; ``stages`` selects which losses to compute (both by default)."""
        unknown = set(stages) - set(STAGES)
        if unknown or not stages:
            raise ValueError(f"stages must be a non-empty subset of {STAGES}, got {tuple(stages)}")
        if len(images) != len(targets):
            raise ValueError(f"{len(images)} images but {len(targets)} targets")
        batch = self.transform(images, training=True)
        gt_boxes, gt_labels = self._scaled_targets(targets, batch)
        features, feature_sizes = self._shared_features(batch)
        losses: dict[str, Tensor] = {}
        out = None
        if "rpn" in stages or proposals is None:
            out = self.rpn(features)
        if "rpn" in stages:
            losses.update(self.rpn.loss(out, batch.image_sizes, gt_boxes, feature_sizes))
        if "roi" in stages:
            if proposals is None:
                props, _ = self.rpn.propose(out, batch.image_sizes, training=True, feature_sizes=feature_sizes)
            else:
                props = self._scaled_proposals(proposals, batch)
            losses.update(self.roi_heads.loss(features, props, gt_boxes, gt_labels, batch.image_sizes,
                                              feature_sizes=feature_sizes))
        if self.semantic is not None:
            losses["semantic"] = self.semantic.loss(features, batch.image_sizes, gt_boxes, gt_labels)
        return losses

    def forward(self, images: Sequence[Tensor], targets: Sequence[dict] | None = None):
        """``loss`` when targets are given (this is what DDP wraps), else ``predict``."""
        if targets is not None:
            return self.loss(images, targets)
        return self.predict(images)

    # ------------------------------------------------------------------ inference
    def predict(
        self, images: Sequence[Tensor], *, proposals: Sequence[Tensor] | None = None
    ) -> list[dict[str, Tensor]]:
        """Detections per image in original-image coordinates.

        Given ``proposals`` (original-image coordinates) replace the RPN's, and test-time views are
        not used (one plain view at the test scale).
        """
        views: Sequence[InferenceView | None] = self.views if (self.views and proposals is None) else (None,)
        scores: list[list[Tensor]] = [[] for _ in images]
        boxes: list[list[Tensor]] = [[] for _ in images]
        with inference_mode(self):
            for view in views:
                orient = Orientation() if view is None else view.orientation
                inputs = images if orient.identity else [orient.image(im) for im in images]
                size = None if view is None else (view.min_size, view.max_size)
                batch = self.transform(inputs, training=False, size=size)
                features, feature_sizes = self._shared_features(batch)
                if proposals is None:
                    props, _ = self.rpn.propose(self.rpn(features), batch.image_sizes, training=False,
                                                feature_sizes=feature_sizes)
                else:
                    props = self._scaled_proposals(proposals, batch)
                candidates = self.roi_heads.class_boxes(features, props, batch.image_sizes, feature_sizes)
                for i, ((s, b), size_in, orig) in enumerate(
                    zip(candidates, batch.image_sizes, batch.original_sizes)
                ):
                    b = scale_boxes(b.reshape(-1, 4), size_in, orig).view(b.shape)
                    if not orient.identity:
                        b = orient.inverse_boxes(b, orient.size(orig))
                    if view is not None and view.max_box < math.inf:  # outside its valid range
                        s = torch.where(box_sizes(b) < view.max_box, s, torch.zeros((), dtype=s.dtype))
                    boxes[i].append(b)
                    scores[i].append(s)
            out = []
            fuse = self.score_fusion == "agreement" and len(views) > 1  # then no view is None
            max_box = (torch.tensor([v.max_box for v in views], device=scores[0][0].device)  # each view's range
                       if fuse and images else None)
            for per_view, b in zip(scores, boxes):
                s, b = torch.cat(per_view), torch.cat(b)
                dets = self.roi_heads.select(s, b)
                if fuse:
                    view_ids = torch.cat([torch.full((len(x),), k, device=x.device) for k, x in enumerate(per_view)])
                    dets = view_agreement_scores(dets, s, b, view_ids, len(per_view),
                                                 score_thresh=self.roi_heads.score_thresh,
                                                 view_max_box=max_box)
                out.append(dets)
            return out

    def propose(self, images: Sequence[Tensor], *, training_settings: bool = False) -> list[dict[str, Tensor]]:
        """RPN proposals per image (original-image coordinates), best first.

        ``training_settings`` uses the training top-N (e.g. 2000) instead of the test one (300),
        both on the test-scale input.
        """
        with inference_mode(self):
            batch = self.transform(images, training=False)
            features, feature_sizes = self._shared_features(batch)
            boxes, scores = self.rpn.propose(self.rpn(features), batch.image_sizes, training=training_settings,
                                             feature_sizes=feature_sizes)
        return [
            {"boxes": scale_boxes(b, size, orig), "scores": s}
            for b, s, size, orig in zip(boxes, scores, batch.image_sizes, batch.original_sizes)
        ]

    # ------------------------------------------------------------------ helpers
    def features(self, images: Tensor, image_sizes: Sequence[tuple[int, int]] | None = None) -> Tensor:
        """The backbone's feature map [N, C, H/s, W/s] of a padded batch [N, 3, H, W], in
        channels-last memory when the model is (the values are the same either way).

        With ``mask_padding`` and the ``image_sizes`` (H, W) inside the padding, the padding
        changes nothing: each image's part of the map is what the backbone gives for that image
        alone, and the rest is zero.
        """
        return self._features(images, image_sizes)[0]

    def _shared_features(self, batch: ImageBatch) -> tuple[Tensor, list[tuple[int, int]] | None]:
        """(the shared map of ``batch``, each image's (h, w) part of it with ``mask_padding``, else None)."""
        return self._features(batch.tensor, batch.image_sizes)

    def _features(
        self, images: Tensor, image_sizes: Sequence[tuple[int, int]] | None
    ) -> tuple[Tensor, list[tuple[int, int]] | None]:
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        if not self.mask_padding or image_sizes is None:
            return self.backbone(images), None
        with PaddingMasker(self.backbone, image_sizes, (images.shape[-2], images.shape[-1])) as masker:
            features = self.backbone(images)
        feature_sizes = masker.extents(features)
        return zero_padding(features, feature_sizes), feature_sizes

    def _scaled_targets(self, targets: Sequence[dict], batch: ImageBatch) -> tuple[list[Tensor], list[Tensor]]:
        device = batch.tensor.device
        boxes_out, labels_out = [], []
        for i, (t, size, orig) in enumerate(zip(targets, batch.image_sizes, batch.original_sizes)):
            boxes = torch.as_tensor(t["boxes"], dtype=torch.float32, device=device).reshape(-1, 4)
            labels = torch.as_tensor(t["labels"], dtype=torch.int64, device=device).reshape(-1)
            where = f"target {i}" + (f" ({t['file_name']})" if "file_name" in t else "")
            if len(boxes) != len(labels):
                raise ValueError(f"{where}: {len(boxes)} boxes but {len(labels)} labels")
            if not torch.isfinite(boxes).all():
                raise ValueError(f"{where}: boxes contain NaN or inf")
            if len(boxes) and ((boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])).any():
                raise ValueError(f"{where}: degenerate box (x2 <= x1 or y2 <= y1)")
            if len(labels) and (labels.min() < 1 or labels.max() > self.num_classes):
                raise ValueError(
                    f"{where}: labels must be in 1..{self.num_classes} (0 is background), "
                    f"got {labels.tolist()}"
                )
            boxes_out.append(scale_boxes(boxes, orig, size))
            labels_out.append(labels)
        return boxes_out, labels_out

    @staticmethod
    def _scaled_proposals(proposals: Sequence[Tensor], batch: ImageBatch) -> list[Tensor]:
        device = batch.tensor.device
        return [
            scale_boxes(torch.as_tensor(p, dtype=torch.float32, device=device).reshape(-1, 4), orig, size)
            for p, size, orig in zip(proposals, batch.image_sizes, batch.original_sizes)
        ]


def build_model(cfg: ModelConfig, *, load_backbone_weights: bool = True) -> FasterRCNN:
    """The network a ModelConfig describes (random init unless backbone weights are given).

    ``load_backbone_weights=False`` leaves ``cfg.backbone.weights`` unread (the architecture is
    the same): for loading a checkpoint, whose state dict has every weight.
    """
    backbone = build_backbone(cfg.backbone, load_weights=load_backbone_weights)
    anchors = AnchorGenerator(cfg.anchors.sizes, cfg.anchors.aspect_ratios, backbone.stride, cfg.anchors.offset)
    r = cfg.rpn
    rpn = RegionProposalNetwork(
        RPNHead(backbone.out_channels, r.conv_channels or backbone.out_channels, anchors.num_anchors),
        anchors,
        matcher=Matcher(r.fg_iou_thresh, r.bg_iou_thresh, 0.0, r.allow_low_quality_matches),
        sampler=Sampler(r.batch_size_per_image, r.positive_fraction),
        coder=BoxCoder(r.box_weights),
        train_settings=ProposalSettings(r.pre_nms_top_n_train, r.post_nms_top_n_train, r.nms_thresh, r.min_size),
        test_settings=ProposalSettings(r.pre_nms_top_n_test, r.post_nms_top_n_test, r.nms_thresh, r.min_size),
        straddle_thresh=r.straddle_thresh,
        smooth_l1_beta=r.smooth_l1_beta,
        loss_weight_cls=r.loss_weight_cls,
        loss_weight_reg=r.loss_weight_reg,
        positive_weighting=r.positive_weighting,
    )
    h = cfg.roi_head
    pooler = RoIPooler(h.pooler, h.pool_size, backbone.stride, h.sampling_ratio, h.aligned,
                       context_scales=h.context_scales)
    box_head = BoxHead(backbone.out_channels * pooler.num_regions * h.pool_size**2,
                       h.representation_size, h.dropout)
    if backbone.box_head_state is not None:
        state = backbone.box_head_state
        if tuple(state["fc6.weight"].shape) == tuple(box_head.fc6.weight.shape) and tuple(
            state["fc7.weight"].shape
        ) == tuple(box_head.fc7.weight.shape):
            box_head.load_state_dict(state)
    in_features = box_head.fc6.in_features
    stages = [
        RefineStage(
            BoxHead(in_features, h.representation_size, h.dropout),
            BoxPredictor(h.representation_size, cfg.num_classes, h.class_agnostic_reg),
            matcher=Matcher(iou, iou, 0.0, False),
            coder=BoxCoder(tuple(w * k for w in h.box_weights)),
            loss_weight=h.cascade_loss_weight ** (k - 1),
        )
        for k, iou in enumerate(h.cascade_ious, start=2)
    ]
    roi_heads = RoIHeads(
        pooler,
        box_head,
        BoxPredictor(h.representation_size, cfg.num_classes, h.class_agnostic_reg),
        matcher=Matcher(h.fg_iou_thresh, h.bg_iou_thresh_hi, h.bg_iou_thresh_lo, False),
        sampler=Sampler(h.batch_size_per_image, h.positive_fraction),
        coder=BoxCoder(h.box_weights),
        add_gt_as_proposals=h.add_gt_as_proposals,
        smooth_l1_beta=h.smooth_l1_beta,
        box_loss=h.box_loss,
        focal_gamma=h.focal_gamma,
        score_thresh=h.score_thresh,
        nms_thresh=h.nms_thresh,
        detections_per_img=h.detections_per_img,
        loss_weight_cls=h.loss_weight_cls,
        loss_weight_reg=h.loss_weight_reg,
        positive_weighting=h.positive_weighting,
        vote_iou=h.vote_iou,
        miner=HardExampleMiner(h.batch_size_per_image, h.hard_mining_nms) if h.hard_mining else None,
        stages=stages,
        quality=IoUPredictor(h.representation_size, cfg.num_classes) if h.iou_quality > 0 else None,
        quality_weight=h.iou_quality,
        quality_min_iou=h.iou_quality_min_iou,
        quality_loss_weight=h.iou_quality_loss_weight,
    )
    i = cfg.input
    transform = InputTransform(
        min_size_train=i.min_size_train,
        max_size_train=i.max_size_train,
        min_size_test=i.min_size_test,
        max_size_test=i.max_size_test,
        pixel_mean=i.pixel_mean,
        pixel_std=i.pixel_std,
        size_divisible=i.size_divisible,
    )
    aug = cfg.test_aug
    views = inference_views(aug.min_sizes, aug.hflip, i.min_size_test, i.max_size_test,
                            vflip=aug.vflip, transpose=aug.transpose) if (
        aug.min_sizes or aug.hflip or aug.vflip or aug.transpose or aug.zoom_sizes) else ()
    views += zoom_views(aug.zoom_sizes, aug.zoom_max_box, i.min_size_test, i.max_size_test)
    sem = cfg.semantic
    semantic = SemanticHead(backbone.out_channels, cfg.num_classes, stride=backbone.stride,
                            conv_channels=sem.conv_channels, loss_weight=sem.loss_weight
                            ) if sem.loss_weight > 0 else None
    return FasterRCNN(backbone, rpn, roi_heads, transform, num_classes=cfg.num_classes, views=views,
                      score_fusion=aug.score_fusion, channels_last=cfg.channels_last,
                      semantic=semantic, mask_padding=cfg.mask_padding)
