"""One-level models give the detections they gave before features became named levels and
test-time augmentation left ``predict``.

The figures were computed with the code of 2026-12-05 (before the redesign) and after it, which
agree bit for bit; the tolerance only allows for another CPU's float rounding.
"""

from __future__ import annotations

import pytest
import torch

from fasterrcnn.config import override
from fasterrcnn.modeling.builder import build_model
from fasterrcnn.presets import preset

SMALL = {"model.input.min_size_test": 160, "model.input.max_size_test": 240, "model.roi_head.score_thresh": 0.0}

# preset: (detections, sum of box coordinates, sum of scores, first labels)
PINNED = {
    "zf-voc07": (100, 28823.135, 6.57565, [20] * 8),
    "tiny-shapes": (100, 28558.59, 36.43808, [5] * 8),
    "mobilenetv2-trees": (261, 79713.562, 230.00038, [1] * 8),
}


@pytest.mark.parametrize("name", sorted(PINNED))
def test_one_level_detections_are_pinned(name):
    torch.manual_seed(0)
    model = build_model(override(preset(name), SMALL).model)
    with torch.no_grad():  # scores that rank classes differently, so that detections come out
        bias = model.roi_heads.predictor.cls_score.bias
        bias.copy_(torch.linspace(-1, 1, bias.numel()))
    image = torch.rand(3, 120, 180, generator=torch.Generator().manual_seed(1))
    det = model.predict([image])[0]
    count, box_sum, score_sum, labels = PINNED[name]
    assert len(det["boxes"]) == count
    assert float(det["boxes"].sum()) == pytest.approx(box_sum, rel=1e-4)
    assert float(det["scores"].sum()) == pytest.approx(score_sum, rel=1e-4)
    assert det["labels"][:8].tolist() == labels
