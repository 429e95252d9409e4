"""The exportable graph in PyTorch (no ONNX involved): its batch pieces by hand, and a batch of
same-size images gives each image what ``model.predict`` gives it alone."""

from __future__ import annotations

import torch

from fasterrcnn.config import override
from fasterrcnn.export.graph import ExportableDetector, _batched_nms, _rank_within
from fasterrcnn.modeling.builder import build_model
from fasterrcnn.presets import preset


def test_rank_within_groups_in_the_given_order():
    groups = torch.tensor([2, 0, 2, 2, 1, 0])
    assert _rank_within(groups, torch.tensor(3)).tolist() == [0, 0, 1, 2, 0, 1]
    assert _rank_within(torch.zeros(0, dtype=torch.int64), torch.tensor(2)).tolist() == []


def test_batched_nms_never_suppresses_across_groups():
    box = torch.tensor([10.0, 10.0, 50.0, 50.0])
    boxes = torch.stack([box, box + 1, box, box + 2])  # all overlap heavily
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    groups = torch.tensor([0, 0, 1, 1])
    assert _batched_nms(boxes, scores, groups, 0.5).tolist() == [0, 2]
    empty = _batched_nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64), 0.5)
    assert empty.shape == (0,)


def test_a_batch_gives_each_image_its_own_detections():
    cfg = override(preset("tiny-shapes"), {"model.input.min_size_test": 96, "model.input.max_size_test": 128})
    torch.manual_seed(0)
    model = build_model(cfg.model).eval()
    with torch.no_grad():
        model.roi_heads.predictor.cls_score.weight.mul_(30)
        model.roi_heads.predictor.cls_score.bias.copy_(torch.linspace(-1, 1, 6))
    g = torch.Generator().manual_seed(3)
    batch = torch.randint(0, 256, (3, 3, 90, 120), dtype=torch.uint8, generator=g)
    graph = ExportableDetector(model).eval()
    with torch.no_grad():
        boxes, labels, scores, image = graph(batch)
        assert (image[:-1] <= image[1:]).all()  # grouped by image
        for i in range(3):
            ref = model.predict([batch[i].float() / 255])[0]
            mine = image == i
            assert len(ref["boxes"]) > 5 and mine.sum() == len(ref["boxes"])
            order = ref["scores"].argsort(descending=True)
            assert torch.equal(labels[mine], ref["labels"][order])
            torch.testing.assert_close(scores[mine], ref["scores"][order], atol=1e-5, rtol=0)
            torch.testing.assert_close(boxes[mine], ref["boxes"][order], atol=1e-3, rtol=0)
