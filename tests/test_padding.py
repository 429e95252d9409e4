"""Tests of modeling/padding.py: extents, masks, and that batch padding changes nothing."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fasterrcnn.config import BackboneConfig, override, preset
from fasterrcnn.modeling.backbones import build_backbone
from fasterrcnn.modeling.faster_rcnn import build_model
from fasterrcnn.modeling.padding import (
    PaddingMasker, cell_mask, check_maskable, layer_extent, output_size, valid_mask, zero_padding,
)
from fasterrcnn.modeling.pooler import RoIPooler
from fasterrcnn.modeling.transform import pad_batch

from test_faster_rcnn import TINY


def test_output_size_by_hand():
    assert output_size(37, 3, 2, 1) == 19  # 3x3/2 conv, padding 1: ceil(37 / 2)
    assert output_size(37, 2, 2, 0) == 18  # VGG's 2x2/2 max-pool: floor(37 / 2)
    assert output_size(37, 7, 2, 3) == 19  # ZF's conv1
    assert output_size(20, 3, 1, 2, dilation=2) == 20  # a dilated 3x3 keeps the size
    assert output_size(6, 3, 2, 0, ceil_mode=True) == 3  # ceil((6 - 3) / 2) + 1
    assert output_size(5, 2, 2, 1, ceil_mode=True) == 3  # the 4th window would start in the padding
    assert output_size(1, 3, 1, 0) == 0


@pytest.mark.parametrize("layer", [
    nn.Conv2d(1, 1, 3, stride=2, padding=1), nn.Conv2d(1, 1, 7, stride=2, padding=3),
    nn.Conv2d(1, 1, (3, 5), stride=(1, 2), padding=(1, 2), dilation=(2, 1)),
    nn.Conv2d(1, 1, 3, padding="same", dilation=2), nn.Conv2d(1, 1, 3, padding="valid"),
    nn.MaxPool2d(2, 2), nn.MaxPool2d(3, 2, padding=1), nn.MaxPool2d(3, 2, ceil_mode=True),
    nn.MaxPool2d(2, 2, padding=1, ceil_mode=True), nn.AvgPool2d(3, 2, padding=1), nn.AvgPool2d(2),
])
def test_layer_extent_is_pytorchs_output_size(layer):
    for h, w in [(9, 9), (10, 13), (17, 8), (31, 32), (64, 33)]:
        out = layer(torch.zeros(1, 1, h, w))
        assert layer_extent(layer, (h, w)) == tuple(out.shape[-2:])


def test_masks_by_hand():
    m = valid_mask([(2, 3), (1, 1)], (3, 4), torch.device("cpu"))
    assert m.shape == (2, 1, 3, 4)
    assert m[0, 0].int().tolist() == [[1, 1, 1, 0], [1, 1, 1, 0], [0, 0, 0, 0]]
    assert m[1, 0].int().tolist() == [[1, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    x = torch.arange(1.0, 25.0).view(2, 1, 3, 4)
    out = zero_padding(x, [(2, 3), (3, 4)])
    assert out[0, 0].tolist() == [[1, 2, 3, 0], [5, 6, 7, 0], [0, 0, 0, 0]]
    torch.testing.assert_close(out[1], x[1])
    assert zero_padding(x, [(3, 4), (3, 4)]) is x  # nothing to zero: the same tensor
    # RPN order: cell (y, x) then anchor a, i.e. index (y * w + x) * A + a
    c = cell_mask([(1, 2)], (2, 2), 3, torch.device("cpu"))
    assert c.int().tolist() == [[1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0]]


def test_unmaskable_layers_raise_with_their_names():
    bad = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"))
    with pytest.raises(ValueError, match=r"layer 1 \(Conv2d with padding_mode='reflect'\)"):
        check_maskable(bad)
    with pytest.raises(ValueError, match=r"layer up \(Upsample\)"):
        check_maskable(nn.ModuleDict({"up": nn.Upsample(scale_factor=2)}))
    with pytest.raises(ValueError, match="MobileNetV2"):
        check_maskable(build_backbone(BackboneConfig(name="mobilenet_v2", stride=8, frozen_stages=0)))
    with pytest.raises(ValueError, match="cannot be masked"):
        build_model(override(preset("tiny-shapes"), {
            "model.mask_padding": True, "model.backbone.name": "mobilenet_v2", "model.backbone.stride": 8,
            "model.backbone.frozen_stages": 0,
        }).model)


BACKBONES = [
    BackboneConfig(name="tiny", stride=8, width=16, fine_channels=8),
    BackboneConfig(name="tiny", stride=4, width=16),
    BackboneConfig(name="tiny", stride=16, width=16, extra_convs=1),
    BackboneConfig(name="vgg16"),
    BackboneConfig(name="zf"),
    BackboneConfig(name="mobilenet_v2", stride=16, frozen_stages=0),
]


@pytest.mark.parametrize("cfg", BACKBONES, ids=lambda c: f"{c.name}-s{c.stride}")
def test_each_image_gets_the_features_it_gets_alone(cfg):
    torch.manual_seed(0)
    backbone = build_backbone(cfg).eval()
    for m in backbone.modules():  # give BatchNorm non-trivial statistics: shifts leak into padding
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.bias.data.uniform_(0.2, 0.5)
    sizes = [(75, 101), (96, 64), (50, 50)]
    images = [torch.randn(3, h, w) for h, w in sizes]
    batch = pad_batch(images, 32)
    with torch.no_grad():
        plain = backbone(batch)
        with PaddingMasker(backbone, sizes, tuple(batch.shape[-2:])) as masker:
            masked = backbone(batch)
        extents = masker.extents(masked)
        leaked = False
        for i, (image, (h, w)) in enumerate(zip(images, extents)):
            alone = backbone(image[None])[0]
            assert alone.shape[-2:] == (h, w)
            torch.testing.assert_close(masked[i, :, :h, :w], alone, rtol=1e-4, atol=1e-4)
            leaked |= not torch.allclose(plain[i, :, :h, :w], alone, rtol=1e-4, atol=1e-4)
        assert leaked  # without the masks, padding does change some image's features
    assert not any(m._forward_pre_hooks for m in backbone.modules())  # hooks removed on exit


@pytest.mark.parametrize("kind,dtype", [("roi_align", torch.float32), ("roi_align", torch.float64),
                                        ("roi_pool", torch.float32)])
def test_pooling_reads_only_each_images_part_of_the_map(kind, dtype):
    """float32 RoIAlign takes the sparse CPU path (limits per RoI), float64 and RoI pooling one
    torchvision call per image; all equal pooling each image's part alone."""
    torch.manual_seed(0)
    pooler = RoIPooler(kind, 3, 8, sampling_ratio=2, aligned=False, context_scales=(2.0,))
    feats = torch.randn(2, 4, 10, 12, dtype=dtype)
    sizes = [(10, 12), (6, 7)]
    boxes = [torch.tensor([[0.0, 0, 90, 70], [40, 30, 96, 80]], dtype=dtype),
             torch.tensor([[20.0, 10, 56, 48], [0, 0, 8, 8], [30, 20, 56, 48]], dtype=dtype)]
    out = pooler(feats, boxes, sizes)
    alone = torch.cat([pooler(feats[i : i + 1, :, :h, :w].contiguous(), [b]) for i, (b, (h, w))
                       in enumerate(zip(boxes, sizes))])
    torch.testing.assert_close(out, alone)
    assert not torch.allclose(pooler(feats, boxes), alone)  # the whole map: padding leaks in


def _tiny_model(mask: bool, views: bool = False):
    torch.manual_seed(0)
    changes = {**TINY, "model.mask_padding": mask}
    if views:
        changes.update({"model.test_aug.hflip": True, "model.test_aug.transpose": True,
                        "model.test_aug.score_fusion": "agreement"})
    model = build_model(override(preset("tiny-shapes"), changes).model).eval()
    for m in model.backbone.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.bias.data.uniform_(0.2, 0.5)
    with torch.no_grad():  # a confident RPN and head, so that there are detections to compare
        model.rpn.head.cls_logits.weight.normal_(0, 0.5)
        model.roi_heads.predictor.cls_score.weight.normal_(0, 0.5)
    model.roi_heads.score_thresh = 0.0
    return model


@pytest.mark.parametrize("views", [False, True])
def test_detections_do_not_depend_on_the_batch(views):
    g = torch.Generator().manual_seed(1)
    images = [torch.rand(3, 96, 128, generator=g), torch.rand(3, 70, 96, generator=g),
              torch.rand(3, 96, 80, generator=g)]
    model = _tiny_model(True, views)
    alone = [model.predict([im])[0] for im in images]
    together = model.predict(images)
    assert all(len(a["boxes"]) > 0 for a in alone)
    for a, b in zip(alone, together):
        for key in ("boxes", "scores", "labels"):
            torch.testing.assert_close(a[key], b[key])
    for a, b in zip(model.propose(images[1:2]), model.propose(images)[1:2]):
        torch.testing.assert_close(a["boxes"], b["boxes"])
    plain = _tiny_model(False, views)  # the same weights without masks: the batch shows
    differs = [
        len(a["boxes"]) != len(b["boxes"]) or not torch.allclose(a["boxes"], b["boxes"])
        for a, b in zip([plain.predict([im])[0] for im in images], plain.predict(images))
    ]
    assert any(differs)


def test_training_with_masks_runs_and_drops_padding_anchors():
    from test_faster_rcnn import _scene

    images, targets = _scene()
    model = _tiny_model(True)
    model.train()
    losses = model.loss(images, targets)
    assert set(losses) >= {"rpn_cls", "rpn_reg", "roi_cls", "roi_reg"}
    sum(losses.values()).backward()
    assert all(torch.isfinite(v) for v in losses.values())
    # proposals of the narrower image come only from anchors of its own cells
    model.eval()
    with torch.no_grad():
        batch = model.transform(images, training=False)
        assert batch.image_sizes[0] == (96, 96) and batch.tensor.shape[-2:] == (96, 128)
        feats, sizes = model._shared_features(batch)
        boxes, _ = model.rpn.propose(model.rpn(feats), batch.image_sizes, training=False, feature_sizes=sizes)
        alone, _ = model.rpn.propose(model.rpn(model.features(batch.tensor[:1, :, :, :96])),
                                     batch.image_sizes[:1], training=False)
    torch.testing.assert_close(boxes[0], alone[0])


def test_rpn_loss_ignores_anchors_of_padding_cells():
    """With cross-boundary anchors kept (straddle_thresh None), anchors over the padding would be
    labelled background; with the image's part of the map given, none of them is sampled."""
    from fasterrcnn.modeling.anchors import AnchorGenerator
    from fasterrcnn.modeling.box_coding import BoxCoder
    from fasterrcnn.modeling.matching import Matcher
    from fasterrcnn.modeling.rpn import RegionProposalNetwork, RPNHead, RPNOutput, ProposalSettings
    from fasterrcnn.modeling.sampling import Sampler

    settings = ProposalSettings(100, 10, 0.7, 0.0)
    rpn = RegionProposalNetwork(
        RPNHead(4, 4, 1), AnchorGenerator((16.0,), (1.0,), 8), matcher=Matcher(0.7, 0.3, 0.0, True),
        sampler=Sampler(1000, 0.5), coder=BoxCoder((1.0, 1.0, 1.0, 1.0)), train_settings=settings,
        test_settings=settings, straddle_thresh=None,
    )
    out = rpn(torch.zeros(1, 4, 4, 4))  # 16 cells, one anchor each
    logits = torch.zeros(1, 16, 2, requires_grad=True)
    out = RPNOutput(out.anchors, logits, torch.zeros(1, 16, 4), out.feature_size)
    gt = [torch.zeros((0, 4))]  # no objects: every anchor labelled background
    rpn.loss(out, [(32, 32)], gt)["rpn_cls"].backward()
    assert int((logits.grad.abs().sum(-1) > 0).sum()) == 16  # every anchor sampled
    logits.grad = None
    rpn.loss(out, [(16, 16)], gt, [(2, 2)])["rpn_cls"].backward()
    used = (logits.grad.abs().sum(-1) > 0).view(4, 4)
    assert used[:2, :2].all() and not used[2:].any() and not used[:, 2:].any()
