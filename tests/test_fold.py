"""Folding BatchNorm into convolutions (modeling/fold.py): hand-computed values, every norm layer
of the BatchNorm presets folded, the same features and detections as the unfolded model, the
original model untouched."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from fasterrcnn.config import override
from fasterrcnn.modeling.builder import build_model
from fasterrcnn.modeling.fold import affine_of, fold_batchnorm, fold_pair
from fasterrcnn.presets import preset

NORMS = (nn.BatchNorm2d, FrozenBatchNorm2d)
SMALL = {"model.input.min_size_test": 160, "model.input.max_size_test": 240}


def _random_statistics(model: nn.Module, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, NORMS):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)


def test_fold_pair_by_hand():
    conv = nn.Conv2d(1, 2, 1, bias=True)
    norm = FrozenBatchNorm2d(2, eps=0.0)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([2.0, 3.0]).view(2, 1, 1, 1))
        conv.bias.copy_(torch.tensor([1.0, -1.0]))
        norm.running_mean.copy_(torch.tensor([1.0, 2.0]))
        norm.running_var.copy_(torch.tensor([4.0, 0.25]))
        norm.weight.copy_(torch.tensor([1.0, 2.0]))
        norm.bias.copy_(torch.tensor([0.5, 0.0]))
    scale, shift = affine_of(norm)
    assert scale.tolist() == [0.5, 4.0] and shift.tolist() == [0.0, -8.0]
    fused = fold_pair(conv, norm)
    # channel 0: ((2x + 1) - 1) / 2 * 1 + 0.5 = x + 0.5; channel 1: ((3x - 1) - 2) / 0.5 * 2 = 12x - 12
    assert fused.weight.flatten().tolist() == [1.0, 12.0] and fused.bias.tolist() == [0.5, -12.0]
    x = torch.tensor([[[[1.0, -2.0]]]])
    assert fused(x).tolist() == [[[[1.5, -1.5]], [[0.0, -36.0]]]]


def test_batchnorm2d_without_bias_and_eval_mode():
    conv, norm = nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)
    _random_statistics(norm)
    norm.eval()
    x = torch.randn(2, 3, 9, 7)
    torch.testing.assert_close(fold_pair(conv, norm)(x), norm(conv(x)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["tiny-shapes", "mobilenetv2-trees", "mobilenetv3-320-fpn", "resnet50-c4",
                                  "resnet50-fpn-v2"])
def test_presets_fold_every_norm_layer_with_the_same_outputs(name):
    torch.manual_seed(0)
    model = build_model(override(preset(name), SMALL).model).eval()
    _random_statistics(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    folded = fold_batchnorm(model)
    assert folded.folded_batchnorms > 0
    assert not any(isinstance(m, NORMS) for m in folded.modules())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # model untouched
    assert any(isinstance(m, NORMS) for m in model.modules())
    image = torch.rand(1, 3, 128, 160, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref, out = model.backbone(image), folded.backbone(image)
        for level in ref:
            scale = ref[level].abs().max().item()
            torch.testing.assert_close(out[level], ref[level], rtol=0, atol=1e-5 * max(scale, 1.0))
        if name == "resnet50-c4":  # res5 is the box head
            rois = torch.randn(3, 1024, 14, 14)
            torch.testing.assert_close(folded.roi_heads.box_head(rois), model.roi_heads.box_head(rois),
                                       rtol=1e-4, atol=1e-4)


def test_trained_demo_detections_survive_folding():
    """Detections of a model with measured BN statistics: same boxes, labels, scores."""
    torch.manual_seed(0)
    model = build_model(override(preset("tiny-shapes"), SMALL).model)
    _random_statistics(model)
    with torch.no_grad():
        bias = model.roi_heads.predictor.cls_score.bias
        bias.copy_(torch.linspace(-1, 1, bias.numel()))
    model.eval()
    image = torch.rand(3, 120, 180, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, b = model.predict([image])[0], fold_batchnorm(model).predict([image])[0]
    assert len(a["boxes"]) == len(b["boxes"]) > 10
    torch.testing.assert_close(b["scores"], a["scores"], rtol=0, atol=1e-5)
    torch.testing.assert_close(b["boxes"], a["boxes"], rtol=0, atol=1e-3)
    assert torch.equal(a["labels"], b["labels"])
