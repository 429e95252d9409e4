"""All configuration in one place: frozen dataclasses, paper values as defaults (the named
presets are in :mod:`fasterrcnn.presets`).

Every number the model or the training loop uses is a field here. Configs are immutable; derive
variants with :func:`override` (dotted keys, e.g. ``{"train.lr": 0.01}``) or
:func:`dataclasses.replace`. Unknown keys raise :class:`ConfigError` everywhere. ``override``,
``to_dict``, ``from_dict``, ``parse_overrides`` and ``ConfigError`` live in
:mod:`fasterrcnn.config_io`, :class:`TrainConfig` in :mod:`fasterrcnn.config_train`; both are
re-exported here (import them from either).

Conventions used across the package (written once, here):
  * boxes are ``xyxy`` in absolute, continuous pixel coordinates: a box covering pixel columns
    0..w-1 is ``[0, w]``; sizes are ``(H, W)``;
  * label 0 is background, object classes are 1..K; ``classes[i - 1]`` names label ``i``;
  * images enter the model as float tensors ``[3, H, W]`` in 0..1 (RGB).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from .config_io import ConfigError, from_dict, override, parse_overrides, to_dict  # re-exported
from .config_train import LR_SCHEDULES, OPTIMIZERS, SCHEDULES, TrainConfig  # re-exported



@dataclass(frozen=True)
class BackboneConfig:
    # the paper's "vgg16" | "zf"; "tiny" | "mobilenet_v2" (one map); "resnet50_c4" |
    # "resnet101_c4" (res4 shared, res5 the RoI head); "resnet50_fpn" | "resnet101_fpn" |
    # "mobilenet_v3_large_fpn" | "mobilenet_v2_fpn" (feature pyramids)
    name: str = "vgg16"
    weights: str | None = None  # local ImageNet state dict (torchvision layout accepted)
    frozen_stages: int = 2  # VGG: conv1-conv2 frozen as in the paper; ZF: conv1 (see backbones)
    # ResNet / MobileNet-FPN backbones: how many of the last stages train (torchvision's
    # trainable_backbone_layers: 0-5 for ResNet, 0-6 for MobileNet); the rest, and every BatchNorm
    # of the body, frozen
    trainable_layers: int = 3
    # FPN backbones: "none" (lateral and output convs with bias) or "bn" (convs without bias, each
    # followed by a trainable BatchNorm2d, as torchvision's fasterrcnn_resnet50_fpn_v2)
    fpn_norm: str = "none"
    # ResNet / MobileNet-FPN bodies: "frozen" (FrozenBatchNorm2d, the statistics of the weights
    # loaded: the usual recipe at 1-4 images per batch) or "bn" (trainable BatchNorm2d with batch
    # statistics: training from scratch, as torchvision builds these nets without weights; pair
    # with the largest trainable_layers)
    norm: str = "frozen"
    stride: int = 16  # output stride of the shared feature map (16 for the paper's nets)
    width: int = 64  # channel width of the "tiny" backbone (ignored by the others)
    extra_convs: int = 0  # "tiny": more 3x3 conv-BN-ReLU layers at the output stride (8 or 16)

    def __post_init__(self) -> None:
        if self.fpn_norm not in FPN_NORMS:
            raise ConfigError(f"backbone.fpn_norm must be one of {FPN_NORMS}, got {self.fpn_norm!r}")
        if self.norm not in BODY_NORMS:
            raise ConfigError(f"backbone.norm must be one of {BODY_NORMS}, got {self.norm!r}")


FPN_NORMS = ("none", "bn")  # BackboneConfig.fpn_norm
BODY_NORMS = ("frozen", "bn")  # BackboneConfig.norm


@dataclass(frozen=True)
class AnchorConfig:
    sizes: tuple[float, ...] = (128.0, 256.0, 512.0)  # sqrt(area) in input pixels
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)  # height / width
    # anchor centres at (x + offset) * stride: 0.5 = centre of the cell (pooling backbones such as
    # VGG); 0.0 where 3x3 stride-2 convs with padding 1 centre cell x at x * stride + 0.5
    offset: float = 0.5
    # one tuple of sizes per feature level (an FPN: ((32,), (64,), ...)), replacing ``sizes``;
    # empty: ``sizes`` on every level
    sizes_per_level: tuple[tuple[float, ...], ...] = ()
    # "paper": anchors as above; "torchvision": base anchors rounded to whole pixels and each
    # level's stride taken as padded image size // map size (torchvision's AnchorGenerator: the
    # same anchors, for loading its detectors exactly)
    style: str = "paper"

    def __post_init__(self) -> None:
        if self.style not in ANCHOR_STYLES:
            raise ConfigError(f"anchors.style must be one of {ANCHOR_STYLES}, got {self.style!r}")
        try:  # a bare number is a level with one size (--set ...sizes_per_level=32,64,128)
            levels = tuple(tuple(float(s) for s in (level if isinstance(level, (list, tuple)) else [level]))
                           for level in self.sizes_per_level)
        except (TypeError, ValueError):
            raise ConfigError(f"anchors.sizes_per_level must hold numbers, got {self.sizes_per_level!r}") from None
        if len({len(level) for level in levels}) > 1:
            raise ConfigError(f"anchors.sizes_per_level needs the same number of sizes on every level, got {levels}")
        object.__setattr__(self, "sizes_per_level", levels)


ANCHOR_STYLES = ("paper", "torchvision")


@dataclass(frozen=True)
class RPNConfig:
    conv_channels: int | None = None  # 3x3 conv width; None = backbone width (256 ZF, 512 VGG)
    # 3x3 conv + ReLU layers before the cls/reg 1x1 convs: 1 (the paper), 2 (torchvision's v2)
    conv_depth: int = 1
    fg_iou_thresh: float = 0.7
    bg_iou_thresh: float = 0.3
    allow_low_quality_matches: bool = True  # best anchor of each gt box is positive
    straddle_thresh: float | None = 0.0  # ignore anchors crossing the border by more; None = keep
    batch_size_per_image: int = 256
    positive_fraction: float = 0.5
    pre_nms_top_n_train: int = 12000
    post_nms_top_n_train: int = 2000
    pre_nms_top_n_test: int = 6000
    post_nms_top_n_test: int = 300
    nms_thresh: float = 0.7
    min_size: float = 16.0  # drop proposals smaller than this (input-image pixels)
    # pre_nms_top_n counts the best-scored anchors before small or invalid boxes are dropped
    # (torchvision and detectron2); False: the best pre_nms_top_n valid boxes (the paper's code)
    top_n_first: bool = False
    score_thresh: float = 0.0  # drop proposals whose objectness probability is below this
    box_weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)
    smooth_l1_beta: float = 1.0 / 9.0  # py-faster-rcnn's sigma = 3
    loss_weight_cls: float = 1.0
    loss_weight_reg: float = 1.0
    # "anchor": every sampled anchor weighs 1 (the paper); "box": the positive anchors of each gt
    # box share one box's weight, so a small box with 1 positive counts as much as a big one with 30
    positive_weighting: str = "anchor"

    def __post_init__(self) -> None:
        if self.conv_depth < 1:
            raise ConfigError(f"rpn.conv_depth must be >= 1, got {self.conv_depth}")
        if self.positive_weighting not in ("anchor", "box"):
            raise ConfigError(
                f"rpn.positive_weighting must be 'anchor' or 'box', got {self.positive_weighting!r}"
            )


@dataclass(frozen=True)
class RoIHeadConfig:
    pooler: str = "roi_pool"  # "roi_pool" (the paper) | "roi_align"
    pool_size: int = 7
    sampling_ratio: int = 2  # roi_align only
    aligned: bool = True  # roi_align only: cell i at (i + 0.5) * stride; False: at i * stride
    # also pool each RoI enlarged by these factors (context for the head, concatenated); () = off
    context_scales: tuple[float, ...] = ()
    # channels of 3x3 conv (no bias) + BatchNorm + ReLU layers on the pooled features, before
    # the fc layers: () = none (the paper); (256, 256, 256, 256) in torchvision's v2 ("4conv1fc")
    conv_layers: tuple[int, ...] = ()
    fc_layers: int = 2  # fc + ReLU layers of representation_size: 2 = fc6 and fc7 (the paper)
    representation_size: int = 4096  # width of every fc layer (fc6 / fc7)
    dropout: float = 0.5  # after each fc layer (VGG-style); 0 disables
    batch_size_per_image: int = 128
    positive_fraction: float = 0.25
    fg_iou_thresh: float = 0.5
    bg_iou_thresh_hi: float = 0.5
    bg_iou_thresh_lo: float = 0.0
    add_gt_as_proposals: bool = True
    positive_weighting: str = "roi"  # "roi": every sampled RoI weighs 1 (the paper); "box": see RPN
    box_weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0)  # 1 / (.1,.1,.2,.2)
    # one box regressor shared by all classes (4 outputs) instead of one per class (the paper)
    class_agnostic_reg: bool = False
    smooth_l1_beta: float = 1.0
    # box regression loss: "smooth_l1" on the encoded deltas (the paper) or "giou", 1 - the
    # generalized IoU of the decoded box with its gt box (Rezatofighi et al. 2019; mmdetection
    # weighs it 10x, i.e. loss_weight_reg=10). Hard mining ranks RoIs by smooth L1 either way
    box_loss: str = "smooth_l1"
    score_thresh: float = 0.05
    nms_thresh: float = 0.3
    detections_per_img: int = 100
    # box voting after NMS: each kept box becomes the score-weighted mean of the same-class
    # candidates overlapping it at IoU >= vote_iou (0 = off, the paper). A candidate near two
    # kept boxes votes for both and draws them together: keep vote_iou well above nms_thresh
    # (Detectron uses 0.8 with NMS 0.5), or the output can hold near-duplicates
    vote_iou: float = 0.0
    loss_weight_cls: float = 1.0
    loss_weight_reg: float = 1.0
    # online hard example mining (Shrivastava et al. 2016): train on the batch_size_per_image
    # highest-loss RoIs (after NMS at hard_mining_nms) instead of a random sample; no
    # positive_fraction then. Off in the paper's presets.
    hard_mining: bool = False
    hard_mining_nms: float = 0.7
    # Cascade R-CNN (Cai & Vasconcelos 2018): later box stages, each with its own fc head, trained
    # on the previous stage's boxes with foreground at these IoUs (e.g. (0.6,) or (0.6, 0.7));
    # stage k's box targets are normalised by box_weights x k, its losses weigh
    # cascade_loss_weight ** (k - 1). () = one stage (the paper).
    cascade_ious: tuple[float, ...] = ()
    cascade_loss_weight: float = 0.5
    def __post_init__(self) -> None:
        object.__setattr__(self, "conv_layers", _positive_ints(self.conv_layers, "roi_head.conv_layers"))
        if self.fc_layers < 1:
            raise ConfigError(f"roi_head.fc_layers must be >= 1, got {self.fc_layers}")
        if any(not 0.0 < t < 1.0 for t in self.cascade_ious):
            raise ConfigError(f"roi_head.cascade_ious must be in (0, 1), got {self.cascade_ious}")
        if not self.cascade_loss_weight >= 0.0:
            raise ConfigError(f"roi_head.cascade_loss_weight must be >= 0, got {self.cascade_loss_weight}")
        if any(not s > 0 for s in self.context_scales):
            raise ConfigError(f"roi_head.context_scales must be positive, got {self.context_scales}")
        if not 0.0 < self.hard_mining_nms <= 1.0:
            raise ConfigError(f"roi_head.hard_mining_nms must be in (0, 1], got {self.hard_mining_nms}")
        if self.positive_weighting not in ("roi", "box"):
            raise ConfigError(
                f"roi_head.positive_weighting must be 'roi' or 'box', got {self.positive_weighting!r}"
            )
        if not 0.0 <= self.vote_iou <= 1.0:
            raise ConfigError(f"roi_head.vote_iou must be in [0, 1] (0 = off), got {self.vote_iou}")
        if self.box_loss not in BOX_LOSSES:
            raise ConfigError(f"roi_head.box_loss must be one of {BOX_LOSSES}, got {self.box_loss!r}")


@dataclass(frozen=True)
class InputConfig:
    min_size_train: tuple[int, ...] = (600,)  # shorter side; several = random multi-scale
    max_size_train: int = 1000
    min_size_test: int = 600
    max_size_test: int = 1000
    pixel_mean: tuple[float, float, float] = (0.485, 0.456, 0.406)  # on 0..1 RGB
    pixel_std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    size_divisible: int = 16  # pad batches to a multiple of this
    # the rescaled size: "round" (H * scale rounded) or "floor" (truncated, torchvision's)
    size_rounding: str = "round"

    def __post_init__(self) -> None:
        if self.size_rounding not in ("round", "floor"):
            raise ConfigError(f"input.size_rounding must be 'round' or 'floor', got {self.size_rounding!r}")


SCORE_FUSIONS = ("max", "agreement")  # how test-time views' scores combine (TestAugConfig)
BOX_LOSSES = ("smooth_l1", "giou")  # the Fast R-CNN head's box regression losses (RoIHeadConfig)


@dataclass(frozen=True)
class TestAugConfig:
    """Test-time augmentation (off by default, as in the paper): every image is run at each
    shorter side in ``min_sizes`` (the longer side capped in proportion to ``input.max_size_test``)
    and, with ``hflip``, mirrored too (``vflip``: upside down; ``transpose``: x and y swapped; all
    combinations asked for are run); the candidates of all views are pooled before the detector's
    NMS. Turn on ``vflip`` / ``transpose`` only for data whose objects look the same that way up
    (aerial, microscopy, the built-in shapes)."""

    min_sizes: tuple[int, ...] = ()  # empty: input.min_size_test only
    hflip: bool = False
    vflip: bool = False
    transpose: bool = False
    # "max": a detection keeps the score of the candidate that won NMS; "agreement": the
    # geometric mean of that and its mean best score over the views (a box one view alone
    # finds drops, see postprocess.view_agreement_scores)
    score_fusion: str = "max"
    # zoomed views for small objects (SNIP's valid ranges, Singh & Davis 2018): each image is
    # also run, plain, at these larger shorter sides, and their candidates count only for boxes
    # smaller than zoom_max_box (sqrt of the area, original-image pixels): at a larger scale a
    # small object is seen at the sizes the detector learned, and a large one, beyond them, is
    # left to the other views. With "agreement" fusion a detection's support is averaged over
    # the views whose range holds it
    zoom_sizes: tuple[int, ...] = ()
    zoom_max_box: float = 32.0

    def __post_init__(self) -> None:
        sizes = _positive_ints(self.min_sizes, "test_aug.min_sizes")
        zoom = _positive_ints(self.zoom_sizes, "test_aug.zoom_sizes")
        if self.score_fusion not in SCORE_FUSIONS:
            raise ConfigError(f"test_aug.score_fusion must be one of {SCORE_FUSIONS}, got {self.score_fusion!r}")
        if not self.zoom_max_box > 0:
            raise ConfigError(f"test_aug.zoom_max_box must be > 0 pixels, got {self.zoom_max_box}")
        object.__setattr__(self, "min_sizes", sizes)
        object.__setattr__(self, "zoom_sizes", zoom)


def _positive_ints(values: Sequence[int], name: str) -> tuple[int, ...]:
    try:
        ints = tuple(int(s) for s in values)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be integers, got {list(values)}") from None
    if any(s <= 0 for s in ints):
        raise ConfigError(f"{name} must be positive, got {list(ints)}")
    return ints


CHANNELS_LAST = ("never", "inference", "always")  # model.channels_last


@dataclass(frozen=True)
class ModelConfig:
    num_classes: int = 20  # object classes, background excluded
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    anchors: AnchorConfig = field(default_factory=AnchorConfig)
    rpn: RPNConfig = field(default_factory=RPNConfig)
    roi_head: RoIHeadConfig = field(default_factory=RoIHeadConfig)
    input: InputConfig = field(default_factory=InputConfig)
    test_aug: TestAugConfig = field(default_factory=TestAugConfig)
    # backbone and RPN convolutions in channels-last (NHWC) memory, the same numbers up to float
    # rounding: "never"; "inference" (the input of predict/propose only, weights stay NCHW:
    # oneDNN's NHWC forward is faster on CPUs, its NHWC backward slower for VGG-16 on AVX2 CPUs);
    # "always" (weights too, training included: the demo preset, about 12% per training step).
    # true/false (older configs) read as "always"/"never"
    channels_last: str = "never"
    # start from a trained detector: a fasterrcnn checkpoint (e.g. one written by `fasterrcnn
    # import`) whose weights are loaded over the whole network, except tensors whose shapes differ
    # (the class-specific predictor, when the classes differ), which keep their fresh init
    weights: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.channels_last, bool):
            object.__setattr__(self, "channels_last", "always" if self.channels_last else "never")
        if self.channels_last not in CHANNELS_LAST:
            raise ConfigError(f"model.channels_last must be one of {CHANNELS_LAST}, got {self.channels_last!r}")


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


__all__ = [
    "ANCHOR_STYLES", "AnchorConfig", "BODY_NORMS", "BOX_LOSSES", "BackboneConfig", "Config", "ConfigError", "FPN_NORMS",
    "InputConfig",
    "LR_SCHEDULES", "ModelConfig", "OPTIMIZERS", "RPNConfig", "RoIHeadConfig", "SCHEDULES", "SCORE_FUSIONS",
    "TestAugConfig", "TrainConfig", "from_dict", "override", "parse_overrides",
    "to_dict",
]
