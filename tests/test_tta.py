"""Tests of test-time augmentation (modeling/tta.py): views, zoomed views, agreement fusion, and
the predictor that wraps a model without changing it."""

import dataclasses
import math

import pytest
import torch

from fasterrcnn.config import ConfigError, override
from fasterrcnn.modeling.builder import build_model, build_predictor
from fasterrcnn.modeling.transform import hflip_boxes
from fasterrcnn.modeling.tta import (
    InferenceView, TTAPredictor, box_sizes, inference_views, view_agreement_scores, zoom_views,
)
from fasterrcnn.presets import preset
from test_faster_rcnn import TINY


def test_inference_views_and_hflip_boxes():
    views = inference_views((288, 336), True, 336, 560)
    assert [(v.min_size, v.max_size, v.hflip) for v in views] == [
        (288, 480, False), (288, 480, True), (336, 560, False), (336, 560, True)
    ]
    assert [(v.min_size, v.max_size, v.hflip) for v in inference_views((), False, 600, 1000)] == [(600, 1000, False)]
    boxes = torch.tensor([[10.0, 5, 30, 25]])
    torch.testing.assert_close(hflip_boxes(boxes, 100), torch.tensor([[70.0, 5, 90, 25]]))
    torch.testing.assert_close(hflip_boxes(hflip_boxes(boxes, 100), 100), boxes)


def _det_close(a, b):
    for k in ("boxes", "labels", "scores"):
        torch.testing.assert_close(a[k], b[k])


def _tiny_model_image_plain():
    """A seeded tiny model, a random image and its plain (one-view) prediction, which has boxes."""
    torch.manual_seed(0)
    model = build_model(override(preset("tiny-shapes"), TINY).model)
    img = torch.rand(3, 48, 64)
    plain = model.predict([img])[0]
    assert len(plain["boxes"]) > 0
    return model, img, plain


def test_test_time_views():
    model, img, plain = _tiny_model_image_plain()
    # no views, or one explicit view at the test scale: the model's plain prediction
    _det_close(TTAPredictor(model)([img])[0], plain)
    _det_close(TTAPredictor(model, (InferenceView(96, 128),))([img])[0], plain)
    # a mirrored view is the mirror image of the plain prediction of the mirrored image
    flipped = TTAPredictor(model, (InferenceView(96, 128, hflip=True),))([img])[0]
    mirror = model.predict([img.flip(-1)])[0]
    _det_close(flipped, dict(mirror, boxes=hflip_boxes(mirror["boxes"], 64)))
    # the same view twice: every candidate doubled, NMS removes the copies (with voting too)
    twice = (InferenceView(96, 128), InferenceView(96, 128))
    _det_close(TTAPredictor(model, twice)([img])[0], plain)
    voting = dataclasses.replace(model.roi_heads.selector, vote_iou=0.7)
    _det_close(TTAPredictor(model, twice, selector=voting)([img])[0], plain)
    # the predictor leaves the model as it was
    _det_close(model.predict([img])[0], plain)
    assert TTAPredictor(model)([]) == []


def test_oriented_views_invert_their_orientation():
    """A transposed / upside-down view is the oriented prediction of the oriented image."""
    torch.manual_seed(0)
    model = build_model(override(preset("tiny-shapes"), TINY).model)
    img = torch.rand(3, 48, 64)
    for view in (InferenceView(96, 128, transpose=True), InferenceView(96, 128, vflip=True),
                 InferenceView(96, 128, hflip=True, vflip=True, transpose=True)):
        o = view.orientation
        got = TTAPredictor(model, (view,))([img])[0]
        ref = model.predict([o.image(img)])[0]
        assert len(ref["boxes"]) > 0
        _det_close(got, dict(ref, boxes=o.inverse_boxes(ref["boxes"], (48, 64))))
    views = inference_views((96,), True, 96, 128, vflip=True, transpose=True)
    assert [(v.transpose, v.vflip, v.hflip) for v in views] == [
        (t, v, h) for t in (False, True) for v in (False, True) for h in (False, True)
    ]


def test_agreement_fusion_rescores_the_same_detections():
    torch.manual_seed(0)
    cfg = override(preset("tiny-shapes"), {**TINY, "model.test_aug.hflip": True,
                                           "model.test_aug.score_fusion": "agreement"})
    model = build_model(cfg.model)
    predictor = build_predictor(model, cfg.model)
    assert predictor.fusion == "agreement" and len(predictor.views) == 2
    img = torch.rand(3, 48, 64)
    agreed = predictor([img])[0]
    best = TTAPredictor(model, predictor.views, "max")([img])[0]
    assert len(best["boxes"]) > 0
    key = lambda d: sorted(zip(d["labels"].tolist(), d["boxes"].round(decimals=3).tolist()))  # noqa: E731
    assert key(agreed) == key(best) and not torch.equal(agreed["scores"], best["scores"])
    assert torch.all(agreed["scores"][:-1] >= agreed["scores"][1:])
    one = (InferenceView(96, 128),)  # one view: "agreement" is "max"
    _det_close(TTAPredictor(model, one, "agreement")([img])[0], TTAPredictor(model, one, "max")([img])[0])
    with pytest.raises(ConfigError, match="score_fusion"):
        override(preset("tiny-shapes"), {"model.test_aug.score_fusion": "mean"})
    with pytest.raises(ValueError, match="fusion"):
        TTAPredictor(model, one, "mean")


def test_test_aug_config_builds_views():
    cfg = override(preset("tiny-shapes"), {**TINY, "model.test_aug.min_sizes": ["80", 96],
                                            "model.test_aug.hflip": "true", "model.roi_head.vote_iou": 0.6})
    model = build_model(cfg.model)
    assert [(v.min_size, v.max_size, v.hflip) for v in build_predictor(model, cfg.model).views] == [
        (80, 107, False), (80, 107, True), (96, 128, False), (96, 128, True)
    ]
    assert model.roi_heads.selector.vote_iou == 0.6 and build_predictor(model, cfg.model).selector.vote_iou == 0.6
    plain_cfg = override(preset("tiny-shapes"), TINY).model
    assert build_predictor(build_model(plain_cfg), plain_cfg).views == ()
    cfg = override(preset("tiny-shapes"), {**TINY, "model.test_aug.transpose": True})
    assert [(v.min_size, v.transpose) for v in build_predictor(model, cfg.model).views] == [(96, False), (96, True)]


def test_zoomed_views_count_only_inside_their_range():
    model, img, plain = _tiny_model_image_plain()
    for fusion in ("max", "agreement"):
        # a zoomed view whose range holds no box adds nothing: the plain prediction, exactly
        empty = (InferenceView(96, 128), InferenceView(192, 256, max_box=1e-3))
        _det_close(TTAPredictor(model, empty, fusion)([img])[0], plain)
        # with an unbounded range it is an ordinary second scale
        unbounded = TTAPredictor(model, (InferenceView(96, 128), InferenceView(192, 256, max_box=float("inf"))),
                                 fusion)([img])[0]
        _det_close(unbounded, TTAPredictor(model, (InferenceView(96, 128), InferenceView(192, 256)), fusion)([img])[0])
    # a range between: every detection the zoomed view adds is smaller than its max_box
    zoomed = TTAPredictor(model, (InferenceView(96, 128), InferenceView(192, 256, max_box=20.0)))([img])[0]
    plain_keys = {(lbl, tuple(b)) for lbl, b in zip(plain["labels"].tolist(), plain["boxes"].round(decimals=3).tolist())}
    for lbl, b in zip(zoomed["labels"].tolist(), zoomed["boxes"].round(decimals=3).tolist()):
        if (lbl, tuple(b)) not in plain_keys:
            assert ((b[2] - b[0]) * (b[3] - b[1])) ** 0.5 < 20.0 + 1e-3


def test_zoom_config_builds_views():
    assert zoom_views((432, 576), 32.0, 336, 560) == (
        InferenceView(432, 720, max_box=32.0), InferenceView(576, 960, max_box=32.0))
    # zoomed views alone come after the plain view at the test scale
    cfg = override(preset("tiny-shapes"), {**TINY, "model.test_aug.zoom_sizes": [144],
                                            "model.test_aug.zoom_max_box": 24})
    model = build_model(cfg.model)
    assert build_predictor(model, cfg.model).views == (InferenceView(96, 128), InferenceView(144, 192, max_box=24.0))
    cfg = override(cfg, {"model.test_aug.hflip": True})
    assert [(v.min_size, v.hflip, v.max_box) for v in build_predictor(model, cfg.model).views] == [
        (96, False, float("inf")), (96, True, float("inf")), (144, False, 24.0)]
    with pytest.raises(ConfigError, match="zoom_sizes must be positive"):
        override(preset("tiny-shapes"), {"model.test_aug.zoom_sizes": [0]})
    with pytest.raises(ConfigError, match="zoom_max_box must be > 0"):
        override(preset("tiny-shapes"), {"model.test_aug.zoom_max_box": -4})


def test_view_agreement_scores_hand_computed():
    a, b, a2 = [0.0, 0, 10, 10], [20.0, 20, 30, 30], [1.0, 0, 11, 10]  # IoU(a, a2) = 90 / 110
    dets = {"boxes": torch.tensor([b, a]), "labels": torch.tensor([2, 1]), "scores": torch.tensor([0.8, 0.7])}
    scores = torch.tensor([[0.7, 0.0], [0.0, 0.8], [0.6, 0.3]])  # [M, K]: rows from views 0, 0, 1
    boxes = torch.tensor([[a, a], [b, b], [a2, a2]])  # [M, K, 4]
    views = torch.tensor([0, 0, 1])
    out = view_agreement_scores(dets, scores, boxes, views, 2, score_thresh=0.05)
    # a: sqrt(0.7 * (0.7 + 0.6) / 2); b: view 1 has only a class-1 box near a -> sqrt(0.8 * 0.4)
    torch.testing.assert_close(out["scores"], torch.tensor([math.sqrt(0.7 * 0.65), math.sqrt(0.32)]))
    assert out["labels"].tolist() == [1, 2] and out["boxes"].tolist() == [a, b]  # re-ranked
    # below the score threshold a candidate gives no support
    low = view_agreement_scores(dets, scores, boxes, views, 2, score_thresh=0.65)
    torch.testing.assert_close(low["scores"], torch.tensor([math.sqrt(0.32), math.sqrt(0.7 * 0.35)]))
    # one view, or nothing detected: unchanged
    assert view_agreement_scores(dets, scores, boxes, views, 1, score_thresh=0.05) is dets
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64), "scores": torch.zeros(0)}
    assert view_agreement_scores(empty, scores, boxes, views, 2, score_thresh=0.05) is empty


def test_box_sizes():
    boxes = torch.tensor([[0.0, 0, 10, 10], [2, 3, 6, 12], [5, 5, 3, 3]])
    torch.testing.assert_close(box_sizes(boxes), torch.tensor([10.0, 6.0, 0.0]))
    assert box_sizes(torch.zeros(2, 3, 4)).shape == (2, 3)


def test_view_agreement_scores_over_the_views_whose_range_holds_the_box():
    a, b, a2 = [0.0, 0, 10, 10], [20.0, 20, 40, 40], [1.0, 0, 11, 10]  # sizes 10, 20, 10
    dets = {"boxes": torch.tensor([b, a]), "labels": torch.tensor([2, 1]), "scores": torch.tensor([0.8, 0.7])}
    scores = torch.tensor([[0.7, 0.0], [0.0, 0.8], [0.6, 0.3]])  # rows from views 0, 0, 1
    boxes = torch.tensor([[a, a], [b, b], [a2, a2]])
    views = torch.tensor([0, 0, 1])
    # view 1 holds boxes under 15 px: a is supported by both views, b by view 0 alone
    out = view_agreement_scores(dets, scores, boxes, views, 2, score_thresh=0.05,
                                view_max_box=torch.tensor([math.inf, 15.0]))
    torch.testing.assert_close(out["scores"], torch.tensor([0.8, math.sqrt(0.7 * 0.65)]))
    assert out["labels"].tolist() == [2, 1]
    # a range holding every box: the plain mean over the views
    wide = view_agreement_scores(dets, scores, boxes, views, 2, score_thresh=0.05,
                                 view_max_box=torch.tensor([math.inf, math.inf]))
    plain = view_agreement_scores(dets, scores, boxes, views, 2, score_thresh=0.05)
    torch.testing.assert_close(wide["scores"], plain["scores"])
    torch.testing.assert_close(plain["scores"], torch.tensor([math.sqrt(0.7 * 0.65), math.sqrt(0.4 * 0.8)]))
