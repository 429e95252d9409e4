"""Every preset builds and trains a step on the built-in data (shrunk inputs, CPU)."""

from __future__ import annotations

import pytest
import torch

from fasterrcnn.config import override
from fasterrcnn.data.shapes import ShapesDataset
from fasterrcnn.modeling.builder import build_model
from fasterrcnn.presets import PRESETS, preset

SMALL = {"model.input.min_size_train": [128], "model.input.max_size_train": 160,
         "model.input.min_size_test": 128, "model.input.max_size_test": 160, "model.num_classes": 5,
         # few RoIs: the C4 presets run res5 on every RoI (about 1 GFLOP each)
         "model.roi_head.batch_size_per_image": 16, "model.rpn.post_nms_top_n_train": 64,
         "model.rpn.post_nms_top_n_test": 32}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_trains_a_step_on_the_built_in_data(name):
    torch.manual_seed(0)
    cfg = override(preset(name), SMALL)
    model = build_model(cfg.model)
    data = ShapesDataset("train", 2, seed=0)
    images, targets = [], []
    for i in range(2):
        image, target = data[i]
        images.append(image.float() / 255.0)
        targets.append(target)
    model.train()
    losses = model.loss(images, targets)
    assert {"rpn_cls", "rpn_reg", "roi_cls", "roi_reg"} <= set(losses)
    assert all(torch.isfinite(v) for v in losses.values())
    total = sum(losses.values())
    total.backward()
    trained = [p for p in model.parameters() if p.requires_grad]
    assert trained and any(p.grad is not None and p.grad.abs().sum() > 0 for p in trained)
    with torch.no_grad():
        for p in trained:
            if p.grad is not None:
                p -= 1e-3 * p.grad
    dets = model.predict(images)
    assert len(dets) == 2 and all(d["boxes"].shape[-1] == 4 for d in dets)
