import pytest
import torch
import torchvision

from fasterrcnn.config import BackboneConfig, ConfigError
from fasterrcnn.modeling.backbones import BackboneWeightsError
from fasterrcnn.modeling.builder import build_backbone


def test_vgg16_stride_channels_and_frozen_conv1_conv2():
    b = build_backbone(BackboneConfig(name="vgg16"))
    out = b(torch.zeros(1, 3, 224, 160))
    assert list(out) == ["p4"] and b.strides == {"p4": 16}
    assert out["p4"].shape == (1, 512, 14, 10)
    convs = [m for m in b.features if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 13
    assert [c.weight.requires_grad for c in convs] == [False] * 4 + [True] * 9


def test_vgg16_loads_torchvision_layout_with_fc6_fc7(tmp_path):
    tv = torchvision.models.vgg16()
    path = tmp_path / "vgg16.pth"
    torch.save(tv.state_dict(), path)
    b = build_backbone(BackboneConfig(name="vgg16", weights=str(path)))
    torch.testing.assert_close(b.features[28].weight, tv.features[28].weight)
    torch.testing.assert_close(b.box_head_state["fc6.weight"], tv.classifier[0].weight)
    torch.testing.assert_close(b.box_head_state["fc7.bias"], tv.classifier[3].bias)
    from fasterrcnn.config import ModelConfig
    from fasterrcnn.modeling.builder import build_model

    model = build_model(ModelConfig(backbone=BackboneConfig(name="vgg16", weights=str(path))))
    torch.testing.assert_close(model.roi_heads.box_head.fc6.weight, tv.classifier[0].weight)


def test_zf_and_tiny_shapes():
    assert build_backbone(BackboneConfig(name="zf"))(torch.zeros(1, 3, 224, 224))["p4"].shape == (1, 256, 14, 14)
    tiny = build_backbone(BackboneConfig(name="tiny", stride=8, width=16))
    assert tiny(torch.zeros(1, 3, 64, 96))["p3"].shape == (1, 32, 8, 12) and tiny.strides == {"p3": 8}
    tiny16 = build_backbone(BackboneConfig(name="tiny", stride=16, width=16))
    assert tiny16(torch.zeros(1, 3, 64, 96))["p4"].shape == (1, 64, 4, 6)
    with pytest.raises(ConfigError, match="stride 8 or 16"):
        build_backbone(BackboneConfig(name="tiny", stride=4))


def test_tiny_extra_convs_keep_the_stride_and_the_default_layout():
    plain = build_backbone(BackboneConfig(name="tiny", stride=8, width=16))
    deeper = build_backbone(BackboneConfig(name="tiny", stride=8, width=16, extra_convs=2))
    assert deeper(torch.zeros(1, 3, 64, 96))["p3"].shape == (1, 32, 8, 12)
    assert len(deeper.features) == len(plain.features) + 2
    # the default (0) keeps the layout of older checkpoints: the same state-dict keys
    assert set(plain.state_dict()) < set(deeper.state_dict())
    with pytest.raises(ValueError, match="extra_convs"):
        build_backbone(BackboneConfig(name="tiny", stride=8, width=16, extra_convs=-1))


def test_level_names_follow_the_stride():
    from fasterrcnn.modeling.backbones import level_name

    assert [level_name(s) for s in (4, 8, 16, 32)] == ["p2", "p3", "p4", "p5"]
    with pytest.raises(ValueError, match="power of 2"):
        level_name(12)


def test_bad_weights_and_names(tmp_path):
    with pytest.raises(BackboneWeightsError, match="not found"):
        build_backbone(BackboneConfig(name="zf", weights=str(tmp_path / "nope.pth")))
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(BackboneWeightsError, match="junk.pth"):
        build_backbone(BackboneConfig(name="zf", weights=str(junk)))
    wrong = tmp_path / "wrong.pth"
    torch.save({"features.0.weight": torch.zeros(1)}, wrong)
    with pytest.raises(BackboneWeightsError, match="wrong.pth"):
        build_backbone(BackboneConfig(name="zf", weights=str(wrong)))
    with pytest.raises(ConfigError):
        build_backbone(BackboneConfig(name="resnet9000"))
    with pytest.raises(ConfigError):
        build_backbone(BackboneConfig(name="vgg16", stride=8))


@pytest.mark.parametrize("size", [1, 2, 3, 5])
def test_local_response_norm_equals_torchs_values_and_gradients(size):
    from fasterrcnn.modeling.backbones.zf import LocalResponseNorm

    torch.manual_seed(0)
    x = (torch.randn(2, 7, 5, 6, dtype=torch.float64) * 30).requires_grad_()
    mine, ref = LocalResponseNorm(size, 5e-3, 0.75, 2.0), torch.nn.LocalResponseNorm(size, 5e-3, 0.75, 2.0)
    out, expected = mine(x), ref(x)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=0)
    g = torch.randn_like(out)
    torch.testing.assert_close(torch.autograd.grad(out, x, g)[0], torch.autograd.grad(expected, x, g)[0],
                               rtol=1e-10, atol=1e-12)
    assert torch.autograd.gradcheck(mine, (x[:1, :, :3, :3].detach().requires_grad_(),))
    with torch.no_grad():  # in place without autograd, channels-last input, float32
        x32 = x.detach().float().contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(mine(x32), ref(x32), rtol=1e-6, atol=0)
        torch.testing.assert_close(mine(x32), mine(x32.contiguous()), rtol=1e-6, atol=0)


def test_zf_uses_the_fast_local_response_norm():
    from fasterrcnn.modeling.backbones.zf import LocalResponseNorm

    zf = build_backbone(BackboneConfig(name="zf"))
    norms = [m for m in zf.modules() if isinstance(m, (LocalResponseNorm, torch.nn.LocalResponseNorm))]
    assert len(norms) == 2 and all(type(m) is LocalResponseNorm for m in norms)
    assert (norms[0].size, norms[0].alpha, norms[0].beta, norms[0].k) == (3, 5e-5, 0.75, 1.0)
