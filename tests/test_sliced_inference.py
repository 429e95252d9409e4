"""Sliced inference: tiles in batches, boxes mapped back, cut objects dropped, one box per object."""

import pytest
import torch

from fasterrcnn.config import override
from fasterrcnn.presets import preset
from fasterrcnn.engine.sliced import cut_mask, merge_detections, predict_sliced
from fasterrcnn.modeling.builder import build_model

from helpers import favour_class


class PaintDetector:
    """Fake model: object k is painted with green value k/10 and 'detected' as the bounding box
    of its pixels inside each crop (so a crop cutting an object reports the visible part)."""

    def __init__(self):
        self.calls = []

    def predict(self, images):
        self.calls.append([tuple(im.shape[-2:]) for im in images])
        out = []
        for im in images:
            boxes, scores = [], []
            values = torch.unique(torch.round(im[1] * 10))
            for v in values[values > 0].tolist():
                ys, xs = torch.nonzero(torch.round(im[1] * 10) == v, as_tuple=True)
                boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
                scores.append(0.5 + 0.04 * v)
            out.append({
                "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                "labels": torch.ones(len(boxes), dtype=torch.int64),
                "scores": torch.tensor(scores, dtype=torch.float32),
            })
        return out


def painted(h, w, boxes):
    image = torch.zeros(3, h, w)
    for k, (x1, y1, x2, y2) in enumerate(boxes, start=1):
        image[1, y1:y2, x1:x2] = k / 10
    return image


def as_set(det):
    return sorted(tuple(round(v) for v in b) for b in det["boxes"].tolist())


def test_object_cut_by_tile_border_reported_once():
    # tiles (tile 100, overlap 40) start at 0, 60, 120 (last flush) on a 220 x 220 image
    truth = [(85, 20, 115, 50),    # cut by the first tile's right border (x = 100)
             (50, 90, 75, 118),    # cut by the first tile's bottom border (y = 100)
             (95, 95, 125, 125),   # cut in both directions
             (190, 190, 220, 220),  # at the image corner: nothing to drop
             (5, 5, 20, 20)]       # whole in one tile only
    model = PaintDetector()
    det = predict_sliced(model, painted(220, 220, truth), tile=100, overlap=40, batch_size=4)
    assert as_set(det) == sorted(truth)
    assert all(len(c) <= 4 for c in model.calls) and sum(len(c) for c in model.calls) == 9
    # without dropping cut boxes, NMS alone leaves the partial boxes of cut objects
    raw = predict_sliced(PaintDetector(), painted(220, 220, truth), tile=100, overlap=40,
                         drop_cut=False)
    assert len(raw["boxes"]) > len(truth)


def test_object_larger_than_overlap_is_kept():
    truth = [(40, 10, 140, 40)]  # 100 px wide, overlap 40: no tile sees it whole
    det = predict_sliced(PaintDetector(), painted(100, 250, truth), tile=100, overlap=40)
    assert len(det["boxes"]) >= 1  # its parts survive (not silently dropped)


def test_small_image_goes_through_unchanged():
    model = PaintDetector()
    det = predict_sliced(model, painted(80, 90, [(10, 10, 30, 30)]), tile=128, overlap=32)
    assert model.calls == [[(80, 90)]]
    assert as_set(det) == [(10, 10, 30, 30)]


def test_cut_mask_and_merge():
    boxes = torch.tensor([[0.0, 10, 20, 30], [40, 40, 60, 60], [80, 5, 100, 25], [30, 0, 50, 15],
                          [0.0, 0, 100, 60]])
    # window in the middle of a larger image: all four borders are inner borders
    assert cut_mask(boxes, (100, 100, 200, 200), 300, 300, overlap=40).tolist() == [
        True, False, True, True, False]  # the last is larger than the overlap both ways
    # window at the top-left corner: left / top are image borders
    assert cut_mask(boxes, (0, 0, 100, 100), 300, 300, overlap=40).tolist() == [
        False, False, True, False, False]
    merged = merge_detections(
        torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 10], [1, 1, 10, 10], [50, 50, 60, 60]]),
        torch.tensor([1, 2, 1, 1]), torch.tensor([0.9, 0.8, 0.7, 0.6]), 0.5, 10,
    )
    assert merged["labels"].tolist() == [1, 2, 1]  # class-wise: the label-2 twin survives
    assert merged["scores"].tolist() == pytest.approx([0.9, 0.8, 0.6])
    top = merge_detections(torch.rand(0, 4), torch.zeros(0, dtype=torch.int64), torch.zeros(0), 0.5, 5)
    assert top["boxes"].shape == (0, 4)


def test_predict_sliced_with_a_real_model():
    cfg = override(preset("tiny-shapes"), {"model.input.min_size_test": 128,
                                           "model.input.max_size_test": 128})
    model = build_model(cfg.model).eval()
    favour_class(model, label=2)  # every RoI scores "class 2" near 1: detections come out
    image = torch.rand(3, 300, 260)
    det = predict_sliced(model, image, tile=128, overlap=32, batch_size=3, max_detections=50)
    assert set(det) >= {"boxes", "labels", "scores"}
    assert 0 < len(det["boxes"]) <= 50
    assert det["labels"].unique().tolist() == [2]
    boxes = det["boxes"]
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= 260 + 1e-3).all() and (boxes[:, 3] <= 300 + 1e-3).all()
    assert (boxes[:, 2:] > boxes[:, :2]).all()
    assert bool((det["scores"][:-1] >= det["scores"][1:]).all()) and det["scores"].min() > 0.5
    # the tiles' detections cover the image, not only the first tile (128 x 128 at the origin)
    assert boxes[:, 2].max() > 128 and boxes[:, 3].max() > 128
    with pytest.raises(ValueError):
        predict_sliced(model, torch.rand(1, 3, 64, 64), tile=32, overlap=8)
