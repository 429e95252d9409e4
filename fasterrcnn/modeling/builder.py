"""The one place where configs become modules: :func:`build_model` and :func:`build_predictor`.

Every other module of :mod:`fasterrcnn.modeling` takes plain arguments; this one reads a
:class:`~fasterrcnn.config.ModelConfig` and wires the parts of Figure 2 together.
"""

from __future__ import annotations

import logging

from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from ..config import BackboneConfig, ConfigError, ModelConfig, RoIHeadConfig, TestAugConfig
from .anchors import AnchorGenerator
from .backbones import TINY_STRIDES, Backbone, BackboneWeightsError, MobileNetV2, Tiny, VGG16, ZF, read_state_dict
from .backbones.mobilenet_v3 import MobileNetV2FPN, MobileNetV3LargeFPN
from .backbones.resnet import ResNetC4, ResNetC5Head, ResNetFPN
from .box_coding import BoxCoder
from .cascade import CascadeRoIHeads, RefineStage
from .faster_rcnn import FasterRCNN
from .losses import FastRCNNLoss
from .matching import Matcher
from .pooler import RoIPooler
from .postprocess import DetectionSelector
from .roi_heads import BoxHead, BoxPredictor, ConvFCBoxHead, RoIHeads
from .roi_sampling import RoISampling
from .rpn import ProposalSettings, RegionProposalNetwork, RPNHead
from .sampling import HardExampleMiner, Sampler
from .transform import InputTransform
from .tta import TTAPredictor, inference_views, zoom_views

BACKBONES = ("vgg16", "zf", "tiny", "mobilenet_v2", "resnet50_c4", "resnet101_c4", "resnet50_fpn",
             "resnet101_fpn", "mobilenet_v3_large_fpn", "mobilenet_v2_fpn")
C4_BACKBONES = {"resnet50_c4": 50, "resnet101_c4": 101}  # res5 is the RoI head
FPN_BACKBONES = {"resnet50_fpn": 50, "resnet101_fpn": 101}
MOBILENET_FPN_BACKBONES = {"mobilenet_v3_large_fpn": MobileNetV3LargeFPN, "mobilenet_v2_fpn": MobileNetV2FPN}


def body_norm_layer(cfg: BackboneConfig) -> type[nn.Module]:
    """The BatchNorm of a ResNet / MobileNet-FPN body: frozen (the fine-tuning recipe) or
    trainable (``backbone.norm="bn"``, training from scratch); other backbones have their own."""
    if cfg.norm == "frozen":
        return FrozenBatchNorm2d
    if cfg.name not in (*C4_BACKBONES, *FPN_BACKBONES, *MOBILENET_FPN_BACKBONES):
        raise ConfigError(f"backbone.norm={cfg.norm!r} applies to the ResNet and MobileNet-FPN bodies, not "
                          f"{cfg.name} (tiny and mobilenet_v2 train their BatchNorm from random init already)")
    return nn.BatchNorm2d


def build_backbone(cfg: BackboneConfig, *, load_weights: bool = True) -> Backbone:
    """The backbone ``cfg`` names. ``load_weights=False`` builds the same architecture (for a
    pretrained config too) without reading ``cfg.weights``: for loading a checkpoint, which holds
    every weight, on a machine where the ImageNet file is absent."""
    weights = cfg.weights if load_weights else None
    norm_layer = nn.BatchNorm2d if cfg.fpn_norm == "bn" else None  # the pyramid's convs
    body_norm = body_norm_layer(cfg)
    if norm_layer is not None and cfg.name not in (*FPN_BACKBONES, *MOBILENET_FPN_BACKBONES):
        raise ConfigError(f"backbone.fpn_norm={cfg.fpn_norm!r} needs a feature pyramid; {cfg.name} has none")
    if cfg.name in ("vgg16", "zf"):
        if cfg.stride != 16:
            raise ConfigError(f"backbone {cfg.name} has stride 16, config says {cfg.stride}")
        return (VGG16 if cfg.name == "vgg16" else ZF)(weights, cfg.frozen_stages)
    if cfg.name == "tiny":
        if cfg.stride not in TINY_STRIDES:
            raise ConfigError(f"backbone tiny has stride 8 or 16, config says {cfg.stride}")
        return Tiny(cfg.width, cfg.stride, weights, extra_convs=cfg.extra_convs)
    if cfg.name == "mobilenet_v2":
        if cfg.stride not in (8, 16):
            raise ConfigError(f"backbone mobilenet_v2 has stride 8 or 16, config says {cfg.stride}")
        return MobileNetV2(weights, cfg.frozen_stages, cfg.stride, pretrained=cfg.weights is not None)
    if cfg.name in C4_BACKBONES:
        return ResNetC4(C4_BACKBONES[cfg.name], weights, cfg.trainable_layers, body_norm=body_norm)
    if cfg.name in FPN_BACKBONES:
        return ResNetFPN(FPN_BACKBONES[cfg.name], weights, cfg.trainable_layers, norm_layer=norm_layer,
                         body_norm=body_norm)
    if cfg.name in MOBILENET_FPN_BACKBONES:
        return MOBILENET_FPN_BACKBONES[cfg.name](weights, cfg.trainable_layers, norm_layer=norm_layer,
                                                 body_norm=body_norm)
    raise ConfigError(f"unknown backbone {cfg.name!r}; choose one of: {', '.join(BACKBONES)}")


def build_model(cfg: ModelConfig, *, load_backbone_weights: bool = True) -> FasterRCNN:
    """The network a ModelConfig describes (random init unless backbone weights are given).

    ``load_backbone_weights=False`` leaves ``cfg.backbone.weights`` and ``cfg.weights`` unread
    (the architecture is the same): for loading a checkpoint, whose state dict has every weight.
    """
    backbone = build_backbone(cfg.backbone, load_weights=load_backbone_weights)
    strides = backbone.strides
    a = cfg.anchors
    if a.sizes_per_level and len(a.sizes_per_level) != len(strides):
        raise ConfigError(f"anchors.sizes_per_level gives {len(a.sizes_per_level)} levels, backbone "
                          f"{cfg.backbone.name} has {len(strides)}: {', '.join(strides)}")
    sizes = dict(zip(strides, a.sizes_per_level)) if a.sizes_per_level else {k: a.sizes for k in strides}
    anchors = AnchorGenerator(sizes, a.aspect_ratios, strides, a.offset, a.style)
    r = cfg.rpn
    rpn = RegionProposalNetwork(
        RPNHead(backbone.out_channels, r.conv_channels or backbone.out_channels, anchors.num_anchors, r.conv_depth),
        anchors,
        matcher=Matcher(r.fg_iou_thresh, r.bg_iou_thresh, 0.0, r.allow_low_quality_matches),
        sampler=Sampler(r.batch_size_per_image, r.positive_fraction),
        coder=BoxCoder(r.box_weights),
        train_settings=ProposalSettings(r.pre_nms_top_n_train, r.post_nms_top_n_train, r.nms_thresh, r.min_size,
                                        r.top_n_first, r.score_thresh),
        test_settings=ProposalSettings(r.pre_nms_top_n_test, r.post_nms_top_n_test, r.nms_thresh, r.min_size,
                                       r.top_n_first, r.score_thresh),
        straddle_thresh=r.straddle_thresh,
        smooth_l1_beta=r.smooth_l1_beta,
        loss_weight_cls=r.loss_weight_cls,
        loss_weight_reg=r.loss_weight_reg,
        positive_weighting=r.positive_weighting,
    )
    h = cfg.roi_head
    pool_strides = {k: strides[k] for k in backbone.roi_levels}
    pooler = RoIPooler(h.pooler, h.pool_size, pool_strides, h.sampling_ratio, h.aligned, context_scales=h.context_scales)
    pooled_channels = backbone.out_channels * pooler.num_regions
    if cfg.backbone.name in C4_BACKBONES:  # res5 on the pooled res4 features, as in the ResNet paper
        if h.context_scales or h.cascade_ious or h.conv_layers or h.fc_layers != 2:
            raise ConfigError("the C4 backbones' res5 head takes no context_scales, cascade_ious, conv_layers "
                              "or fc_layers")
        weights = cfg.backbone.weights if load_backbone_weights else None
        box_head: nn.Module = ResNetC5Head(C4_BACKBONES[cfg.backbone.name], weights, cfg.backbone.trainable_layers,
                                           body_norm=body_norm_layer(cfg.backbone))
        head_width = ResNetC5Head.out_channels
    else:
        box_head = _box_head(h, pooled_channels)
        head_width = h.representation_size
    state = backbone.box_head_state  # pretrained fc6/fc7 (VGG), where the sizes fit
    if state is not None and isinstance(box_head, BoxHead) and all(
            tuple(state[f"{n}.weight"].shape) == tuple(getattr(box_head, n).weight.shape) for n in ("fc6", "fc7")):
        box_head.load_state_dict(state)
    parts = dict(
        sampling=RoISampling(
            Matcher(h.fg_iou_thresh, h.bg_iou_thresh_hi, h.bg_iou_thresh_lo, False),
            Sampler(h.batch_size_per_image, h.positive_fraction),
            add_gt_as_proposals=h.add_gt_as_proposals,
            miner=HardExampleMiner(h.batch_size_per_image, h.hard_mining_nms) if h.hard_mining else None,
        ),
        loss=FastRCNNLoss(h.smooth_l1_beta, h.box_loss, h.loss_weight_cls, h.loss_weight_reg, h.positive_weighting),
        selector=DetectionSelector(h.score_thresh, h.nms_thresh, h.detections_per_img, h.vote_iou),
    )
    predictor = BoxPredictor(head_width, cfg.num_classes, h.class_agnostic_reg)
    if h.cascade_ious:
        stages = [
            RefineStage(
                _box_head(h, pooled_channels),
                BoxPredictor(h.representation_size, cfg.num_classes, h.class_agnostic_reg),
                matcher=Matcher(iou, iou, 0.0, False),
                coder=BoxCoder(tuple(w * k for w in h.box_weights)),
                loss_weight=h.cascade_loss_weight ** (k - 1),
            )
            for k, iou in enumerate(h.cascade_ious, start=2)
        ]
        roi_heads: RoIHeads = CascadeRoIHeads(pooler, box_head, predictor, BoxCoder(h.box_weights),
                                              stages=stages, **parts)
    else:
        roi_heads = RoIHeads(pooler, box_head, predictor, BoxCoder(h.box_weights), **parts)
    i = cfg.input
    transform = InputTransform(
        min_size_train=i.min_size_train,
        max_size_train=i.max_size_train,
        min_size_test=i.min_size_test,
        max_size_test=i.max_size_test,
        pixel_mean=i.pixel_mean,
        pixel_std=i.pixel_std,
        size_divisible=i.size_divisible,
        size_rounding=i.size_rounding,
    )
    model = FasterRCNN(backbone, rpn, roi_heads, transform, num_classes=cfg.num_classes,
                       channels_last=cfg.channels_last)
    if cfg.weights is not None and load_backbone_weights:
        init_from_checkpoint(model, cfg.weights)
    return model


def _box_head(h: RoIHeadConfig, in_channels: int) -> nn.Module:
    """fc6/fc7 on the flattened pooled features (the paper), or the conv + fc head that
    ``conv_layers`` / ``fc_layers`` ask for."""
    if not h.conv_layers and h.fc_layers == 2:
        return BoxHead(in_channels * h.pool_size**2, h.representation_size, h.dropout)
    return ConvFCBoxHead(in_channels, h.pool_size, h.conv_layers, h.representation_size, h.fc_layers, h.dropout)


def init_from_checkpoint(model: nn.Module, path: str) -> list[str]:
    """Load a detector's weights from ``path`` (a fasterrcnn checkpoint or a state dict in our
    names) into ``model``; tensors whose shapes differ keep their init (fine-tuning on other
    classes re-initialises the class-specific predictor). Returns the names of those tensors.
    Any other difference (missing or unexpected names: another architecture) raises."""
    state = read_state_dict(path)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        raise BackboneWeightsError(
            f"{path}: not a checkpoint of this architecture (missing {len(missing)} tensor(s), e.g. "
            f"{', '.join(missing[:3]) or '-'}; unexpected {len(unexpected)}, e.g. {', '.join(unexpected[:3]) or '-'})")
    fresh = [k for k, v in own.items() if tuple(state[k].shape) != tuple(v.shape)]
    model.load_state_dict({k: (own[k] if k in fresh else state[k]) for k in own})
    if fresh:
        logging.getLogger("fasterrcnn").info("%s: kept the fresh init of %s (other shapes here)", path, ", ".join(fresh))
    return fresh


def build_predictor(model: FasterRCNN, cfg: ModelConfig, *, test_aug: TestAugConfig | None = None,
                    selector: DetectionSelector | None = None) -> TTAPredictor:
    """The predictor the config's ``test_aug`` asks for (or ``test_aug``): no views = the model's
    single pass. ``selector`` replaces the model's final selection (threshold, NMS, cap, voting)."""
    aug = cfg.test_aug if test_aug is None else test_aug
    i = cfg.input
    views = ()
    if aug.min_sizes or aug.hflip or aug.vflip or aug.transpose or aug.zoom_sizes:
        views = inference_views(aug.min_sizes, aug.hflip, i.min_size_test, i.max_size_test,
                                vflip=aug.vflip, transpose=aug.transpose)
    views += zoom_views(aug.zoom_sizes, aug.zoom_max_box, i.min_size_test, i.max_size_test)
    return TTAPredictor(model, views, aug.score_fusion, selector)
