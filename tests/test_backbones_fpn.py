"""Multi-level backbones (fpn.py, resnet.py, mobilenet_v3.py): same features as torchvision's
detection backbones after loading their state dicts, level names/strides/shapes, ImageNet files,
trainable_layers."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.detection import (
    fasterrcnn_mobilenet_v3_large_320_fpn, fasterrcnn_mobilenet_v3_large_fpn, fasterrcnn_resnet50_fpn,
    fasterrcnn_resnet50_fpn_v2,
)
from torchvision.models.detection.backbone_utils import _mobilenet_extractor, _resnet_fpn_extractor
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
from torchvision.ops.misc import FrozenBatchNorm2d

from fasterrcnn.modeling.backbones.common import BackboneWeightsError
from fasterrcnn.modeling.backbones.fpn import FeaturePyramid, MultiLevelBackbone, level_names
from fasterrcnn.modeling.backbones.mobilenet_v3 import (
    MobileNetV2FPN, MobileNetV3LargeFPN, from_torchvision_state as mobilenet_from_tv,
)
from fasterrcnn.modeling.backbones.resnet import (
    ResNetC4, ResNetC5Head, ResNetFPN, from_torchvision_state, resnet50_fpn, resnet50_fpn_v2,
)

ATOL = 1e-5
H, W = 70, 100  # not multiples of 32
_TV_LEVELS = {"resnet": ["0", "1", "2", "3", "pool"], "mobilenet": ["0", "1", "pool"]}


def randomise(module: nn.Module, seed: int) -> nn.Module:
    """Random norm affine and conv biases (torchvision inits them to 1/0), then BN statistics
    measured on random images (train-mode passes), so that a wrong mapping or a missing norm layer
    shows in the features. Measured rather than random statistics keep the signal alive through
    the depth: with random ones a MobileNetV3's stride-32 maps hardly depend on the image."""
    g = torch.Generator().manual_seed(seed)

    def u(t: torch.Tensor, lo: float, hi: float) -> None:
        t.copy_(torch.rand(t.shape, generator=g) * (hi - lo) + lo)

    bns = [m for m in module.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d)):
                u(m.weight, 0.5, 1.5)
                u(m.bias, -0.2, 0.2)
            elif isinstance(m, nn.Conv2d) and m.bias is not None:
                u(m.bias, -0.1, 0.1)
        if bns:
            for m in bns:
                m.reset_running_stats()
                m.momentum = None  # cumulative average over the passes
            module.train()
            for _ in range(2):
                module(torch.rand(2, 3, 64, 96, generator=g) * 2 - 1)
            for m in bns:
                m.momentum = 0.1
    return module.eval()


def image(seed: int = 0) -> torch.Tensor:
    return torch.rand(2, 3, H, W, generator=torch.Generator().manual_seed(seed))


def assert_same_features(ours: MultiLevelBackbone, tv: nn.Module, tv_names: list[str]) -> float:
    """In float64: the random nets' features reach ~100, where float32 rounding alone (a
    different BN formula) is ~1e-4; a wrong weight or layer shows as a difference of order 1."""
    x = image().double()
    with torch.no_grad():
        mine, theirs = ours.double().eval()(x), tv.double().eval()(x)
        other = ours(image(1).double())
    assert list(mine) == list(ours.strides) and len(mine) == len(tv_names)
    worst = 0.0
    for name, tv_name in zip(mine, tv_names):
        spread = mine[name].abs().max().item()
        assert (other[name] - mine[name]).abs().max().item() > 1e-2 * spread, f"{name} ignores the image"
        assert mine[name].shape == theirs[tv_name].shape, name
        worst = max(worst, (mine[name] - theirs[tv_name]).abs().max().item())
        torch.testing.assert_close(mine[name], theirs[tv_name], rtol=0, atol=ATOL)
    return worst


def tv_backbone(builder, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return randomise(builder(weights=None, weights_backbone=None).backbone, seed)


# ---------------------------------------------------------------------------------------------
# Equal to torchvision's detection backbones


@pytest.mark.parametrize(
    "builder, ours_fn",
    [(fasterrcnn_resnet50_fpn, resnet50_fpn), (fasterrcnn_resnet50_fpn_v2, resnet50_fpn_v2)],
    ids=["resnet50_fpn", "resnet50_fpn_v2"],
)
def test_resnet50_fpn_matches_torchvision(builder, ours_fn):
    tv = tv_backbone(builder, seed=3)
    ours = ours_fn(trainable_layers=5)
    state = from_torchvision_state(tv.state_dict())
    assert set(state) == set(ours.state_dict())  # 1:1, nothing left over
    ours.load_state_dict(state, strict=True)
    assert_same_features(ours, tv, _TV_LEVELS["resnet"])


def test_resnet50_fpn_v2_has_batchnorm_in_fpn():
    ours = resnet50_fpn_v2()
    assert isinstance(ours.fpn.inner_blocks[0][1], nn.BatchNorm2d)
    assert ours.fpn.inner_blocks[0][0].bias is None
    assert "fpn.layer_blocks.3.1.running_var" in ours.state_dict()
    plain = resnet50_fpn().fpn
    assert plain.inner_blocks[0][0].bias is not None and len(plain.inner_blocks[0]) == 1


@pytest.mark.parametrize(
    "builder", [fasterrcnn_mobilenet_v3_large_fpn, fasterrcnn_mobilenet_v3_large_320_fpn],
    ids=["mobilenet_v3_large_fpn", "mobilenet_v3_large_320_fpn"],
)
def test_mobilenet_v3_large_fpn_matches_torchvision(builder):
    tv = tv_backbone(builder, seed=4)
    # torchvision passes its norm layer explicitly, so eps is 1e-5 (not the classifier's 1e-3)
    assert {m.eps for m in tv.modules() if isinstance(m, nn.BatchNorm2d)} == {1e-5}
    ours = MobileNetV3LargeFPN(trainable_layers=6)
    state = mobilenet_from_tv(tv.state_dict())
    assert set(state) == set(ours.state_dict())
    ours.load_state_dict(state, strict=True)
    assert_same_features(ours, tv, _TV_LEVELS["mobilenet"])


def test_whole_detector_state_dict_converts():
    torch.manual_seed(0)
    model = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None)
    state = from_torchvision_state(model.state_dict())  # backbone.* kept, rpn/roi_heads dropped
    ours = resnet50_fpn()
    ours.load_state_dict(state, strict=True)
    assert torch.equal(ours.fpn.layer_blocks[2][0].weight, model.backbone.fpn.layer_blocks[2][0].weight)


def test_feature_pyramid_matches_torchvision_ops():
    torch.manual_seed(5)
    chans = [8, 16, 24]
    tv = FeaturePyramidNetwork(chans, 12, extra_blocks=LastLevelMaxPool()).eval()
    randomise(tv, 5)
    ours = FeaturePyramid(chans, 12)
    ours.load_state_dict(tv.state_dict(), strict=True)
    feats = [torch.randn(1, c, s, s + 3) for c, s in zip(chans, (17, 9, 5))]  # odd sizes
    expected = list(tv({str(i): f for i, f in enumerate(feats)}).values())
    got = ours(feats)
    assert len(got) == 4 and got[-1].shape[-2:] == (3, 4)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=0, atol=ATOL)


def test_level_names():
    assert level_names([4, 8, 16, 32, 64]) == ["p2", "p3", "p4", "p5", "p6"]
    assert level_names([32, 32, 64]) == ["p5", "p5b", "p6"]
    with pytest.raises(ValueError):
        level_names([24])


# ---------------------------------------------------------------------------------------------
# Level names, strides, shapes


@pytest.mark.parametrize(
    "make, strides, channels",
    [
        (lambda: ResNetC4(50), {"p4": 16}, 1024),
        (lambda: ResNetFPN(50), {"p2": 4, "p3": 8, "p4": 16, "p5": 32, "p6": 64}, 256),
        (lambda: MobileNetV3LargeFPN(), {"p5": 32, "p5b": 32, "p6": 64}, 256),
        (lambda: MobileNetV3LargeFPN(taps=(12, 16)), {"p4": 16, "p5": 32, "p6": 64}, 256),
        (lambda: MobileNetV2FPN(), {"p3": 8, "p4": 16, "p5": 32, "p6": 64}, 256),
    ],
    ids=["resnet50_c4", "resnet50_fpn", "mnv3_fpn", "mnv3_fpn_stride16", "mnv2_fpn"],
)
def test_levels_strides_shapes(make, strides, channels):
    torch.manual_seed(0)
    net = make().eval()
    assert isinstance(net, MultiLevelBackbone)
    assert net.strides == strides and net.out_channels == channels
    with torch.no_grad():
        out = net(image())
    assert list(out) == list(strides)  # increasing stride order
    for name, s in strides.items():
        assert out[name].shape == (2, channels, math.ceil(H / s), math.ceil(W / s)), name


def test_c5_head_pools_14x14_rois_to_2048():
    torch.manual_seed(0)
    head = ResNetC5Head(50).eval()
    with torch.no_grad():
        assert head(torch.randn(3, 1024, 14, 14)).shape == (3, 2048)
        assert head.layer4(torch.randn(1, 1024, 14, 14)).shape == (1, 2048, 7, 7)
    assert head.out_channels == 2048


def test_resnet101_fpn_param_count_and_shapes():
    ours = ResNetFPN(101)
    tv = _resnet_fpn_extractor(torchvision.models.resnet101(norm_layer=FrozenBatchNorm2d), 5)
    shapes = {k: v.shape for k, v in tv.state_dict().items()}
    assert {k: v.shape for k, v in ours.state_dict().items()} == shapes
    with torch.no_grad():
        out = ours.eval()(torch.rand(1, 3, 64, 96))
    assert [tuple(v.shape[-2:]) for v in out.values()] == [(16, 24), (8, 12), (4, 6), (2, 3), (1, 2)]


# ---------------------------------------------------------------------------------------------
# ImageNet classification weights from a local file


@pytest.fixture(scope="module")
def resnet50_imagenet(tmp_path_factory):
    torch.manual_seed(6)
    net = randomise(torchvision.models.resnet50(weights=None), 6)
    path = tmp_path_factory.mktemp("w") / "resnet50-imagenet.pth"
    torch.save(net.state_dict(), path)
    return net, path


def test_resnet_loads_imagenet_file(resnet50_imagenet):
    net, path = resnet50_imagenet
    ref = net.state_dict()
    fpn, c4, head = ResNetFPN(50, path), ResNetC4(50, path), ResNetC5Head(50, path)
    for k, v in fpn.body.state_dict().items():
        assert torch.equal(v, ref[k]), k
    assert all(torch.equal(v, ref[k]) for k, v in c4.body.state_dict().items())
    net = copy.deepcopy(net).double().eval()  # float64: see assert_same_features
    x, xi = torch.randn(2, 1024, 14, 14, dtype=torch.float64), image().double()
    with torch.no_grad():  # the head is res5 + the classifier's global average pool
        pooled = net.avgpool(net.layer4(x)).flatten(1)
        torch.testing.assert_close(head.double().eval()(x), pooled, rtol=0, atol=ATOL)
        c4_out = c4.double().eval()(xi)["p4"]
        tv_c4 = net.layer3(net.layer2(net.layer1(net.maxpool(net.relu(net.bn1(net.conv1(xi)))))))
    torch.testing.assert_close(c4_out, tv_c4, rtol=0, atol=ATOL)


def test_resnet_weights_errors_name_the_file(tmp_path, resnet50_imagenet):
    missing = tmp_path / "nope.pth"
    with pytest.raises(BackboneWeightsError, match=r"nope\.pth.*not found.*resnet50-0676ba61\.pth"):
        ResNetFPN(50, missing)
    net, _ = resnet50_imagenet
    state = net.state_dict()
    del state["layer2.0.conv1.weight"]
    partial = tmp_path / "partial.pth"
    torch.save(state, partial)
    with pytest.raises(BackboneWeightsError, match=r"partial\.pth.*missing 1 .*layer2\.0\.conv1\.weight"):
        ResNetC4(50, partial)
    with pytest.raises(BackboneWeightsError, match=r"partial\.pth"):
        ResNetC5Head(101, partial)  # wrong depth as well
    other = tmp_path / "mobilenet.pth"
    torch.save(torchvision.models.mobilenet_v2().state_dict(), other)
    with pytest.raises(BackboneWeightsError, match=r"mobilenet\.pth.*ResNet-50"):
        ResNetFPN(50, other)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(BackboneWeightsError, match=r"garbage\.pth"):
        ResNetFPN(50, garbage)


def test_mobilenet_v3_loads_imagenet_file(tmp_path):
    torch.manual_seed(7)
    net = randomise(torchvision.models.mobilenet_v3_large(weights=None), 7)
    path = tmp_path / "mnv3.pth"
    torch.save(net.state_dict(), path)
    ours = MobileNetV3LargeFPN(path)
    ref = net.features.state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in ours.body.state_dict().items())
    with pytest.raises(BackboneWeightsError, match=r"absent\.pth.*mobilenet_v3_large-8738ca79\.pth"):
        MobileNetV3LargeFPN(tmp_path / "absent.pth")


def test_mobilenet_v2_fpn_loads_imagenet_file(tmp_path):
    torch.manual_seed(8)
    net = randomise(torchvision.models.mobilenet_v2(weights=None), 8)
    path = tmp_path / "mnv2.pth"
    torch.save(net.state_dict(), path)
    ours = MobileNetV2FPN(path).eval()
    ref = net.features.state_dict()
    assert len(ours.body) == 18
    assert all(torch.equal(v, ref[k]) for k, v in ours.body.state_dict().items())
    with torch.no_grad():
        out = ours(image())
        body, ref_body = copy.deepcopy(ours.body).double(), net.features[:18].double()  # float64
        torch.testing.assert_close(body(image().double()), ref_body(image().double()), rtol=0, atol=ATOL)
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "p3": (2, 256, 9, 13), "p4": (2, 256, 5, 7), "p5": (2, 256, 3, 4), "p6": (2, 256, 2, 2)
    }
    with pytest.raises(BackboneWeightsError, match=r"gone\.pth"):
        MobileNetV2FPN(tmp_path / "gone.pth")


# ---------------------------------------------------------------------------------------------
# trainable_layers


def trainable(module: nn.Module) -> set[str]:
    return {n for n, p in module.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("k", range(6))
def test_resnet_fpn_trainable_layers_as_torchvision(k):
    ours = ResNetFPN(50, trainable_layers=k)
    tv = _resnet_fpn_extractor(torchvision.models.resnet50(norm_layer=FrozenBatchNorm2d), k)
    assert trainable(ours) == trainable(tv)
    fpn_params = {n for n, _ in ours.fpn.named_parameters(prefix="fpn")}
    assert {n for n in trainable(ours) if n.startswith("fpn.")} == fpn_params


@pytest.mark.parametrize("k", [0, 1, 3, 6])
def test_mobilenet_v3_trainable_layers_as_torchvision(k):
    ours = MobileNetV3LargeFPN(trainable_layers=k)
    tv = _mobilenet_extractor(torchvision.models.mobilenet_v3_large(norm_layer=FrozenBatchNorm2d), True, k)
    assert trainable(ours) == trainable(tv)


def test_c4_trainable_layers():
    def layers(module: nn.Module) -> set[str]:
        return {n.split(".")[1] for n in trainable(module)}

    assert layers(ResNetC4(50, trainable_layers=3)) == {"layer2", "layer3"}
    assert layers(ResNetC4(50, trainable_layers=5)) == {"conv1", "layer1", "layer2", "layer3"}
    assert trainable(ResNetC4(50, trainable_layers=1)) == set()
    assert trainable(ResNetC5Head(50, trainable_layers=0)) == set()
    assert len(trainable(ResNetC5Head(50, trainable_layers=1))) == len(list(ResNetC5Head(50).parameters()))
    with pytest.raises(ValueError):
        ResNetC4(50, trainable_layers=6)


def test_mobilenet_v2_fpn_trainable_layers():
    ours = MobileNetV2FPN(trainable_layers=2)  # stages start at 0, 2, 4, 7, 14, 17
    blocks = {int(n.split(".")[1]) for n in trainable(ours) if n.startswith("body.")}
    assert blocks == {14, 15, 16, 17}
    assert not {n for n in trainable(MobileNetV2FPN(trainable_layers=0)) if n.startswith("body.")}
    with pytest.raises(ValueError):
        MobileNetV2FPN(trainable_layers=7)


# ---------------------------------------------------------------------------------------------
# From scratch: trainable BatchNorm bodies, as torchvision builds its detectors without weights


@pytest.mark.parametrize(
    "builder, ours_fn, tv_names",
    [
        (fasterrcnn_mobilenet_v3_large_fpn, lambda: MobileNetV3LargeFPN(trainable_layers=6, body_norm=nn.BatchNorm2d),
         _TV_LEVELS["mobilenet"]),
        (fasterrcnn_resnet50_fpn, lambda: ResNetFPN(50, trainable_layers=5, body_norm=nn.BatchNorm2d),
         _TV_LEVELS["resnet"]),
    ],
    ids=["mobilenet_v3_large_fpn", "resnet50_fpn"],
)
def test_batchnorm_body_trains_like_torchvision_from_scratch(builder, ours_fn, tv_names):
    torch.manual_seed(7)
    tv = builder(weights=None, weights_backbone=None).backbone  # BatchNorm2d, every layer trainable
    ours = ours_fn()
    convert = mobilenet_from_tv if len(tv_names) == 3 else from_torchvision_state
    state = convert(tv.state_dict())
    missing, unexpected = ours.load_state_dict(state, strict=False)
    assert not unexpected and all(k.endswith("num_batches_tracked") for k in missing)
    assert all(p.requires_grad for p in ours.parameters())
    norms = [m for m in ours.modules() if isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d))]
    assert norms and all(type(m) is nn.BatchNorm2d for m in norms)
    x = image().double()
    ours, tv = ours.double().train(), tv.double().train()
    mine, theirs = ours(x), tv(x)  # batch statistics, running statistics updated
    for name, tv_name in zip(mine, tv_names):
        torch.testing.assert_close(mine[name], theirs[tv_name], rtol=0, atol=1e-8)
    mine[next(iter(mine))].sum().backward()
    first_conv = next(m for m in ours.modules() if isinstance(m, nn.Conv2d))
    assert first_conv.weight.grad is not None and first_conv.weight.grad.abs().sum() > 0


def test_config_norm_bn_builds_trainable_bodies_and_loads_imagenet_statistics(resnet50_imagenet):
    from fasterrcnn.config import BackboneConfig, ConfigError, ModelConfig
    from fasterrcnn.modeling.builder import build_backbone, build_model

    _, path = resnet50_imagenet
    c4 = build_model(ModelConfig(num_classes=2, backbone=BackboneConfig(name="resnet50_c4", norm="bn",
                                                                        trainable_layers=5, weights=str(path))))
    assert all(type(m) is not FrozenBatchNorm2d for m in c4.modules())  # body and res5 head
    bn1 = c4.backbone.body.bn1
    torch.testing.assert_close(bn1.running_var, torch.load(path, weights_only=True)["bn1.running_var"])
    frozen = build_backbone(BackboneConfig(name="mobilenet_v3_large_fpn"))
    assert any(isinstance(m, FrozenBatchNorm2d) for m in frozen.modules())
    with pytest.raises(ConfigError, match="backbone.norm"):
        build_backbone(BackboneConfig(name="tiny", stride=8, norm="bn"))
    with pytest.raises(ConfigError, match="backbone.norm must be one of"):
        BackboneConfig(norm="group")
