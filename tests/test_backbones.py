import pytest
import torch
import torchvision

from fasterrcnn.config import BackboneConfig, ConfigError
from fasterrcnn.modeling.backbones import BackboneWeightsError, build_backbone


def test_vgg16_stride_channels_and_frozen_conv1_conv2():
    b = build_backbone(BackboneConfig(name="vgg16"))
    assert b(torch.zeros(1, 3, 224, 160)).shape == (1, 512, 14, 10)
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
    from fasterrcnn.modeling.faster_rcnn import build_model

    model = build_model(ModelConfig(backbone=BackboneConfig(name="vgg16", weights=str(path))))
    torch.testing.assert_close(model.roi_heads.box_head.fc6.weight, tv.classifier[0].weight)


def test_zf_and_tiny_shapes():
    assert build_backbone(BackboneConfig(name="zf")).forward(torch.zeros(1, 3, 224, 224)).shape == (1, 256, 14, 14)
    tiny = build_backbone(BackboneConfig(name="tiny", stride=8, width=16))
    assert tiny(torch.zeros(1, 3, 64, 96)).shape == (1, 32, 8, 12)
    tiny16 = build_backbone(BackboneConfig(name="tiny", stride=16, width=16))
    assert tiny16(torch.zeros(1, 3, 64, 96)).shape == (1, 64, 4, 6)


def test_tiny_extra_convs_keep_the_stride_and_the_default_layout():
    plain = build_backbone(BackboneConfig(name="tiny", stride=8, width=16))
    deeper = build_backbone(BackboneConfig(name="tiny", stride=8, width=16, extra_convs=2))
    assert deeper(torch.zeros(1, 3, 64, 96)).shape == (1, 32, 8, 12)
    assert len(deeper.features) == len(plain.features) + 2
    # the default (0) keeps the layout of older checkpoints: the same state-dict keys
    assert set(plain.state_dict()) < set(deeper.state_dict())
    with pytest.raises(ValueError, match="extra_convs"):
        build_backbone(BackboneConfig(name="tiny", stride=4, width=16, extra_convs=1))


def test_tiny_fine_shortcut_concatenates_local_detail_at_the_output_stride():
    torch.manual_seed(0)
    plain = build_backbone(BackboneConfig(name="tiny", stride=8, width=16))
    fine = build_backbone(BackboneConfig(name="tiny", stride=8, width=16, fine_channels=8)).eval()
    x = torch.rand(1, 3, 64, 96)
    out = fine(x)
    assert out.shape == (1, 40, 8, 12) and fine.out_channels == 40 and fine.stride == 8
    # the first 32 channels are the plain chain's output, the last 8 the shortcut's
    with torch.no_grad():
        torch.testing.assert_close(out[:, :32], fine.features(x))
        torch.testing.assert_close(out[:, 32:], fine.shortcut(fine.features[:3](x)))
    assert set(plain.state_dict()) < set(fine.state_dict())  # old keys kept
    fine16 = build_backbone(BackboneConfig(name="tiny", stride=16, width=16, fine_channels=8))
    assert fine16(x).shape == (1, 72, 4, 6)
    with pytest.raises(ValueError, match="fine_channels"):
        build_backbone(BackboneConfig(name="tiny", stride=4, width=16, fine_channels=8))


def test_tiny_stride4_merges_the_coarse_map_into_the_fine_one():
    torch.manual_seed(0)
    tiny4 = build_backbone(BackboneConfig(name="tiny", stride=4, width=16)).eval()
    x = torch.rand(1, 3, 64, 96)
    assert tiny4(x).shape == (1, 32, 16, 24) and tiny4.stride == 4 and tiny4.out_channels == 32
    # odd sizes: the /8 map is upsampled to the /4 map's exact size
    assert tiny4(torch.rand(1, 3, 68, 100)).shape == (1, 32, 17, 25)
    # the top-down path matters: zeroing the /8 stage's last conv changes the output
    before = tiny4(x)
    with torch.no_grad():
        tiny4.coarse[-1][0].weight.zero_()
    assert not torch.allclose(before, tiny4(x))
    with pytest.raises(ConfigError, match="stride 4, 8 or 16"):
        build_backbone(BackboneConfig(name="tiny", stride=32))


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
