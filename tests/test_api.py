"""fasterrcnn.api: Detector.from_checkpoint and every accepted image form."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from fasterrcnn.api import Detections, Detector
from fasterrcnn.config import override
from fasterrcnn.engine.checkpoint import export_weights
from fasterrcnn.modeling.builder import build_model
from fasterrcnn.presets import preset

CLASSES = ("ellipse", "rectangle", "triangle", "cross", "ring")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny-shapes checkpoint, random weights with a sharpened classifier (real detections)."""
    torch.manual_seed(0)
    cfg = override(preset("tiny-shapes"), {"model.input.min_size_test": 96, "model.input.max_size_test": 128,
                                           "model.test_aug.min_sizes": [96], "model.test_aug.zoom_sizes": []})
    model = build_model(cfg.model)
    with torch.no_grad():
        model.roi_heads.predictor.cls_score.weight.mul_(30)
        model.roi_heads.predictor.cls_score.bias.copy_(torch.linspace(-1, 1, 6))
    return export_weights(tmp_path_factory.mktemp("api") / "model_final.pt", model=model, cfg=cfg, classes=CLASSES)


@pytest.fixture(scope="module")
def detector(checkpoint):
    return Detector.from_checkpoint(checkpoint, tta=False)


@pytest.fixture(scope="module")
def picture():
    g = torch.Generator().manual_seed(3)
    return torch.randint(0, 256, (3, 70, 90), dtype=torch.uint8, generator=g)


def same(a: Detections, b: Detections) -> None:
    assert len(a) == len(b)
    np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-4)
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-6)
    assert a.labels.tolist() == b.labels.tolist() and a.class_names == b.class_names


def test_every_input_kind_gives_the_same_detections(detector, picture, tmp_path):
    hwc = picture.permute(1, 2, 0).numpy()
    path = tmp_path / "p.png"
    Image.fromarray(hwc).save(path)
    ref = detector(picture)
    assert isinstance(ref, Detections) and len(ref) > 0
    rgba = np.concatenate([hwc, np.full(hwc.shape[:2] + (1,), 7, np.uint8)], axis=2)
    for form in (picture.float() / 255, hwc, hwc.astype(np.float32) / 255, Image.fromarray(hwc), str(path), path,
                 rgba, torch.from_numpy(rgba).permute(2, 0, 1), Image.fromarray(rgba)):
        same(detector(form), ref)
    many = detector([picture, str(path)])
    assert isinstance(many, list) and len(many) == 2
    same(many[0], ref), same(many[1], ref)
    assert len(detector.detect(picture)) == 1


def test_gray_inputs_are_repeated_to_rgb(detector, picture):
    gray = picture[0].numpy()
    same(detector(gray), detector(torch.from_numpy(gray)[None].expand(3, -1, -1).contiguous()))
    same(detector(gray), detector(Image.fromarray(gray)))


def test_detections_match_model_predict_and_name_classes(detector, picture):
    found = detector(picture)
    ref = detector.model.predict([picture.float() / 255])[0]
    np.testing.assert_allclose(found.boxes, ref["boxes"].numpy())
    assert found.labels.tolist() == ref["labels"].tolist()
    assert found.class_names == tuple(CLASSES[k - 1] for k in found.labels)
    assert found.boxes.dtype == np.float32 and found.labels.dtype == np.int64 and found.boxes.shape == (len(found), 4)
    d = found.to_dict()
    assert json.loads(json.dumps(d)) == d and set(d) == {"boxes", "scores", "labels", "class_names"}
    with pytest.raises(dataclasses_frozen()):
        found.scores = np.zeros(0)


def dataclasses_frozen():
    import dataclasses

    return dataclasses.FrozenInstanceError


def test_per_call_score_threshold_filters(detector, picture):
    everything = detector(picture, score_thresh=0.0)
    default = detector(picture)
    cut = float(np.median(everything.scores))
    high = detector(picture, score_thresh=cut)
    assert len(everything) >= len(default) >= len(high) > 0
    assert (high.scores > cut).all()
    kept = everything.scores > cut  # NMS never lets a lower score remove a higher one
    np.testing.assert_allclose(high.scores, everything.scores[kept][: len(high)], atol=1e-6)
    assert len(detector(picture, score_thresh=1.0)) == 0
    for bad in (-0.1, 1.5, "0.5"):
        with pytest.raises(ValueError, match="score_thresh"):
            detector(picture, score_thresh=bad)


def test_tta_follows_the_checkpoint_config(checkpoint, picture):
    with_views = Detector.from_checkpoint(checkpoint)  # tiny-shapes: flips and transposes
    assert len(with_views._predictor(None).views) == 8
    assert Detector.from_checkpoint(checkpoint, tta=False)._predictor(None).views == ()
    assert isinstance(with_views(picture), Detections)


@pytest.mark.parametrize("bad, error, words", [
    (torch.rand(3, 20, 30) * 255, ValueError, "0..1"),
    (torch.full((3, 20, 30), float("nan")), ValueError, "NaN"),
    (torch.zeros(20, 30, 3, dtype=torch.uint8), ValueError, "permute"),
    (torch.zeros(5, 20, 30, dtype=torch.uint8), ValueError, "5 channels"),
    (torch.zeros(3, 0, 30, dtype=torch.uint8), ValueError, "empty"),
    (torch.zeros(1, 3, 20, 30), ValueError, "[3, H, W]"),
    (np.zeros((20, 30, 2), np.uint8), ValueError, "H x W x 3"),
    (np.zeros((20, 30, 3), np.uint16), TypeError, "uint8"),
    (torch.zeros(3, 20, 30, dtype=torch.int32), TypeError, "uint8"),
    (42, TypeError, "int"),
    (b"bytes", TypeError, "bytes"),
])
def test_bad_inputs_raise_clear_errors(detector, bad, error, words):
    with pytest.raises(error, match=None) as info:
        detector(bad)
    assert words in str(info.value)


def test_missing_file_names_it(detector, tmp_path):
    from fasterrcnn.data.dataset import DataError

    with pytest.raises(DataError, match="nope.jpg"):
        detector(str(tmp_path / "nope.jpg"))
