"""The named presets: the paper's VOC settings and the project's CPU and small-object ones.

Each preset is a function returning a :class:`~fasterrcnn.config.Config`; :func:`preset` looks
one up by name (``fasterrcnn presets`` lists them). Fields a preset does not set keep the
paper's values from :mod:`fasterrcnn.config`.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from .config import (
    AnchorConfig, BackboneConfig, Config, ConfigError, InputConfig, ModelConfig, RoIHeadConfig,
    RPNConfig, TestAugConfig, TrainConfig,
)


def _vgg16_voc07() -> Config:
    """The paper's VGG-16 model. Predictions run the convolutions in channels-last memory on
    their input (oneDNN's NHWC kernels; the same numbers up to float rounding, see
    benchmarks/RESULTS.md); training keeps NCHW, whose backward is faster on AVX2 CPUs."""
    return Config(
        model=ModelConfig(num_classes=20, backbone=BackboneConfig(name="vgg16", frozen_stages=2),
                          channels_last="inference"),
        train=TrainConfig(),
    )


def _zf_voc07() -> Config:
    """The paper's ZF model (channels-last predictions as in ``vgg16-voc07``)."""
    return Config(
        model=ModelConfig(
            num_classes=20,
            backbone=BackboneConfig(name="zf", frozen_stages=0),
            roi_head=RoIHeadConfig(representation_size=4096),
            channels_last="inference",
        ),
        train=TrainConfig(),
    )


def _tiny_shapes() -> Config:
    """The CPU demo: a small backbone trained from scratch on the built-in shapes data.

    Departures from the paper's values, for 16-144 px objects on a CPU budget: stride 8, anchors
    of 16-200 px and RPN positives from IoU 0.6 (with anchors 8 px apart a 16 px object rarely
    overlaps any anchor at 0.7), RoIAlign (RoI pooling's quantisation costs small boxes dearly),
    35% foreground RoIs, fewer training proposals, a narrow fc head. Anchors and RoIAlign put
    feature cell i at i * 8 px, where this backbone's stride-2 convs centre it (the usual cell
    centre, (i + 0.5) * 8, is 3.5 px off: a fifth of a 16 px object). Both losses weigh every gt
    box equally ("box" weighting), so that small boxes, with one or two positive anchors and few
    foreground RoIs, are not outvoted by big ones. Test-time proposals are the paper's (6000
    before NMS, 300 after): ranking only the top 1000 anchors missed small objects. Test images
    are scaled to a shorter side of 336 px (training: 288), chosen on ``shapes:val``: VOC07 mAP
    0.906 at 288, 0.922 at 320, 0.925 at 336, 0.923 at 352, 0.921 at 384 (one plain view). The
    shapes have no "up": training also flips images upside down and transposes them, and
    detection pools the eight flips and quarter turns of each image at the training scale (288)
    (test-time augmentation; the view set chosen on ``shapes:val`` among eight, see
    benchmarks/RESULTS.md; eight forward passes per image, and a zoomed ninth, below). No box voting: at IoU 0.5 it pulled
    neighbouring kept boxes onto the same object (27-44 duplicate pairs among the detections
    scored >= 0.5, none without it) and missed as many objects or more. A detection's score
    is the geometric mean of its own and its mean best score over the views ("agreement"
    fusion: +0.002-0.012 VOC07 for each of three models on both splits). A ninth, zoomed view
    at 1.5x (432) counts only for boxes under 32 px, where the misses are (SNIP-style valid
    range): val VOC07 block means +0.006 and +0.005 over two models, misses on 600 val images 8
    -> 4 and 10 -> 7 (benchmarks/RESULTS.md, session 16). The head also pools each RoI enlarged
    1.5x (context, for partly hidden objects whose proposal covers one part), and detections are kept
    down to score 0.01 for evaluation (``detect`` draws from 0.5). The convolutions run in
    channels-last memory: 12% more training steps per second on a CPU, and the same accuracy
    over two seeds and both splits (benchmarks/RESULTS.md).
    """
    return Config(
        model=ModelConfig(
            num_classes=5,
            backbone=BackboneConfig(name="tiny", stride=8, width=32, frozen_stages=0),
            anchors=AnchorConfig(
                sizes=(16.0, 32.0, 64.0, 128.0, 200.0), aspect_ratios=(0.5, 1.0, 2.0), offset=0.0
            ),
            rpn=RPNConfig(
                conv_channels=64,
                fg_iou_thresh=0.6,
                pre_nms_top_n_train=1000,
                post_nms_top_n_train=300,
                min_size=4.0,
                positive_weighting="box",
            ),
            roi_head=RoIHeadConfig(
                pooler="roi_align",
                aligned=False,
                representation_size=256,
                dropout=0.0,
                batch_size_per_image=64,
                positive_fraction=0.35,
                context_scales=(1.5,),
                score_thresh=0.01,
                nms_thresh=0.4,
                positive_weighting="box",
            ),
            input=InputConfig(
                min_size_train=(288,),
                max_size_train=480,
                min_size_test=336,
                max_size_test=560,
                size_divisible=16,
            ),
            test_aug=TestAugConfig(min_sizes=(288,), hflip=True, vflip=True, transpose=True,
                                   score_fusion="agreement", zoom_sizes=(432,), zoom_max_box=32.0),
            channels_last="always",
        ),
        train=TrainConfig(
            images_per_batch=4,
            max_iter=2400,
            lr=0.02,
            lr_steps=(1824, 2208),
            warmup_iters=100,
            weight_decay=1e-4,
            vflip_prob=0.5,
            transpose_prob=0.5,
            checkpoint_period=500,
            log_period=20,
            num_workers=0,
            grad_clip_norm=10.0,
        ),
    )


def _mobilenetv2_trees() -> Config:
    """Small objects (e.g. 16-80 px tree crowns) in large photos: ImageNet MobileNetV2 at stride 8,
    small near-square anchors, RoIAlign, many detections per tile; train on random crops and
    detect with sliced inference (``--tile``)."""
    return Config(
        model=ModelConfig(
            num_classes=1,
            backbone=BackboneConfig(name="mobilenet_v2", stride=8, frozen_stages=2),
            anchors=AnchorConfig(sizes=(16.0, 24.0, 36.0, 54.0, 80.0), aspect_ratios=(0.8, 1.0, 1.25)),
            rpn=RPNConfig(
                conv_channels=256,
                pre_nms_top_n_train=2000,
                post_nms_top_n_train=1000,
                pre_nms_top_n_test=2000,
                post_nms_top_n_test=600,
                min_size=4.0,
            ),
            roi_head=RoIHeadConfig(
                pooler="roi_align",
                representation_size=1024,
                dropout=0.0,
                batch_size_per_image=256,
                score_thresh=0.02,
                nms_thresh=0.3,
                detections_per_img=300,
            ),
            input=InputConfig(
                min_size_train=(448, 512, 576, 640),
                max_size_train=640,
                min_size_test=512,
                max_size_test=512,
            ),
        ),
        train=TrainConfig(
            images_per_batch=2,
            max_iter=3000,
            lr=0.01,
            lr_steps=(2250, 2760),
            warmup_iters=100,
            weight_decay=1e-4,
            grad_clip_norm=10.0,
            checkpoint_period=500,
            num_workers=0,
        ),
    )


def _mobilenetv2_fpn_trees() -> Config:
    """``mobilenetv2-trees`` with a feature pyramid: the same ImageNet MobileNetV2 (blocks 0-3
    frozen), tiles, proposal counts, head and schedule, but an FPN over its stride-8/16/32 outputs
    (plus a max-pooled stride-64 level for the RPN) instead of the single stride-8 map. Anchors
    keep the single-map preset's 1.5x spacing, two sizes per level at 2-3.4x the level's stride
    (16/24 px on P3 up to 180/270 px on P6); RoIAlign pools each box from the level its size picks
    (crowns under 112 px from P3, which now carries the coarser levels' context)."""
    base = _mobilenetv2_trees()
    m = base.model
    return replace(base, model=replace(
        m,
        backbone=BackboneConfig(name="mobilenet_v2_fpn", trainable_layers=3),
        anchors=replace(m.anchors, sizes_per_level=((16.0, 24.0), (36.0, 54.0), (80.0, 120.0), (180.0, 270.0))),
    ))


def _torchvision_fpn(backbone: str, anchors: AnchorConfig, *, min_size: int = 800, max_size: int = 1333,
                     test_top_n: int = 1000, rpn_score_thresh: float = 0.0) -> Config:
    """torchvision's ``fasterrcnn_*_fpn`` detectors, setting for setting (so that their COCO
    weights load and detect exactly as in torchvision, see ``fasterrcnn import``), with a
    fine-tuning schedule for 2 images per batch (torchvision's detection tutorial: SGD lr 0.005).

    Where they differ from the paper's VGG-16 model: a feature pyramid (anchors of one size per
    level for ResNet, all five sizes on each level for MobileNetV3), 800/1333 input (320/640
    for the 320 model) padded to multiples of 32, RoIAlign 7x7 (not aligned) from the level a
    box's size picks, a 1024-wide fc head without dropout, 2000 proposals per level and image
    for training and 1000 (150) at test (the paper: 2000 / 300), cross-boundary anchors kept,
    512 RoIs per image at 25% foreground, smooth L1 with beta 1/9 in both heads, NMS 0.5 on the
    detections (the paper: 0.3), COCO's 90 classes.
    """
    return Config(
        model=ModelConfig(
            num_classes=90,
            backbone=BackboneConfig(name=backbone, trainable_layers=3),
            anchors=anchors,
            rpn=RPNConfig(
                conv_channels=256, straddle_thresh=None, pre_nms_top_n_train=2000, post_nms_top_n_train=2000,
                pre_nms_top_n_test=test_top_n, post_nms_top_n_test=test_top_n, min_size=1e-3,
                top_n_first=True, score_thresh=rpn_score_thresh,
            ),
            roi_head=RoIHeadConfig(
                pooler="roi_align", aligned=False, sampling_ratio=2, representation_size=1024, dropout=0.0,
                batch_size_per_image=512, smooth_l1_beta=1.0 / 9.0, nms_thresh=0.5,
            ),
            input=InputConfig(min_size_train=(min_size,), max_size_train=max_size, min_size_test=min_size,
                              max_size_test=max_size, size_divisible=32, size_rounding="floor"),
        ),
        train=TrainConfig(images_per_batch=2, max_iter=20000, lr=0.005, lr_steps=(15000, 18000),
                          warmup_iters=500, weight_decay=1e-4, checkpoint_period=1000, num_workers=2),
    )


TORCHVISION_FPN_ANCHORS = AnchorConfig(sizes_per_level=((32.0,), (64.0,), (128.0,), (256.0,), (512.0,)),
                                       offset=0.0, style="torchvision")
MOBILENET_V3_ANCHORS = AnchorConfig(sizes=(32.0, 64.0, 128.0, 256.0, 512.0), offset=0.0, style="torchvision")


def _resnet50_fpn_v2() -> Config:
    """torchvision's ``fasterrcnn_resnet50_fpn_v2`` (Li et al. 2021, "Benchmarking Detection
    Transfer Learning with Vision Transformers"): ``resnet50-fpn`` with a BatchNorm after every
    pyramid conv (the convs without bias), two 3x3 conv + ReLU layers in the RPN head instead of
    one, and a box head of four 3x3 conv (256 channels, no bias) + BatchNorm + ReLU layers and
    one 1024-wide fc instead of fc6/fc7. Anchors, 800/1333 input, proposal, RoI sampling and
    detection settings are ``resnet50-fpn``'s (torchvision builds both with the same defaults).

    The ResNet body's BatchNorm is frozen, as in ``resnet50-fpn``; torchvision builds v2's body
    with BatchNorm2d and trains it. In eval mode both are the same fixed affine of the running
    statistics, so imported weights detect as in torchvision. For fine-tuning at 2 images per
    batch the body keeps the COCO statistics rather than replace them with two images'. The
    pyramid's and the box head's BatchNorm layers train (statistics over whole maps and over the
    sampled RoIs), as in torchvision.
    """
    base = _torchvision_fpn("resnet50_fpn", TORCHVISION_FPN_ANCHORS)
    m = base.model
    return replace(base, model=replace(
        m,
        backbone=replace(m.backbone, fpn_norm="bn"),
        rpn=replace(m.rpn, conv_depth=2),
        roi_head=replace(m.roi_head, conv_layers=(256, 256, 256, 256), fc_layers=1),
    ))


def _resnet_c4(depth: int) -> Config:
    """The ResNet paper's detector (He et al. 2016, as in detectron2's C4 recipe): res1-res4
    shared at stride 16 with the paper's RPN (15 anchors: 32-512 x 3 ratios), RoIAlign 14x14 on
    res4 and res5 (stride 2, then average pooling) as the box head; 800/1333 input."""
    return Config(
        model=ModelConfig(
            num_classes=20,
            backbone=BackboneConfig(name=f"resnet{depth}_c4", trainable_layers=3),
            anchors=AnchorConfig(sizes=(32.0, 64.0, 128.0, 256.0, 512.0), offset=0.0),
            rpn=RPNConfig(conv_channels=1024, straddle_thresh=None, pre_nms_top_n_test=6000,
                          post_nms_top_n_test=1000, min_size=0.0, top_n_first=True),
            roi_head=RoIHeadConfig(pooler="roi_align", pool_size=14, aligned=True, sampling_ratio=0,
                                   batch_size_per_image=512, nms_thresh=0.5),
            input=InputConfig(min_size_train=(800,), max_size_train=1333, min_size_test=800,
                              max_size_test=1333, size_divisible=32),
        ),
        train=TrainConfig(images_per_batch=2, max_iter=20000, lr=0.005, lr_steps=(15000, 18000),
                          warmup_iters=500, weight_decay=1e-4, checkpoint_period=1000, num_workers=2),
    )


PRESETS: dict[str, Any] = {
    "vgg16-voc07": _vgg16_voc07,
    "zf-voc07": _zf_voc07,
    "tiny-shapes": _tiny_shapes,
    "mobilenetv2-trees": _mobilenetv2_trees,
    "mobilenetv2-fpn-trees": _mobilenetv2_fpn_trees,
    "resnet50-fpn": lambda: _torchvision_fpn("resnet50_fpn", TORCHVISION_FPN_ANCHORS),
    "resnet50-fpn-v2": _resnet50_fpn_v2,
    "resnet101-fpn": lambda: _torchvision_fpn("resnet101_fpn", TORCHVISION_FPN_ANCHORS),
    "mobilenetv3-fpn": lambda: _torchvision_fpn("mobilenet_v3_large_fpn", MOBILENET_V3_ANCHORS, rpn_score_thresh=0.05),
    "mobilenetv3-320-fpn": lambda: _torchvision_fpn("mobilenet_v3_large_fpn", MOBILENET_V3_ANCHORS, min_size=320,
                                                    max_size=640, test_top_n=150, rpn_score_thresh=0.05),
    "resnet50-c4": lambda: _resnet_c4(50),
    "resnet101-c4": lambda: _resnet_c4(101),
}


def preset(name: str) -> Config:
    """A named preset (``vgg16-voc07``, ``zf-voc07``, ``tiny-shapes``, ...)."""
    try:
        return PRESETS[name]()
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}") from None
