"""Box statistics and anchor fit on hand-made boxes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fasterrcnn.data.dataset import Annotation
from fasterrcnn.data.stats import (
    anchor_coverage, anchor_shapes, best_anchor_iou, box_statistics, input_boxes, input_scale,
    suggest_anchors,
)

PAPER_SIZES = (128.0, 256.0, 512.0)
PAPER_RATIOS = (0.5, 1.0, 2.0)


def test_anchor_shapes_area_and_ratio() -> None:
    shapes = anchor_shapes((128.0,), (0.5, 1.0, 2.0))
    np.testing.assert_allclose(shapes[:, 0] * shapes[:, 1], 128.0 ** 2)
    np.testing.assert_allclose(shapes[:, 1] / shapes[:, 0], [0.5, 1.0, 2.0])


def test_exact_best_iou() -> None:
    boxes = np.array([
        [0, 0, 128, 128],  # equals the 128 / ratio 1 anchor
        [10, 10, 35, 35],  # 25x25: inside every anchor, best is 128x128
        [0, 0, 64, 128],  # h/w = 2
    ], np.float64)
    best = best_anchor_iou(boxes, PAPER_SIZES, PAPER_RATIOS)
    assert best[0] == pytest.approx(1.0)
    assert best[1] == pytest.approx(25 * 25 / (128 * 128))  # 0.0381
    assert best[1] == pytest.approx(0.0381, abs=1e-4)
    assert best_anchor_iou(boxes[2:], (90.51,), (2.0,))[0] == pytest.approx(1.0, abs=1e-4)
    cov = anchor_coverage(boxes[:2], PAPER_SIZES, PAPER_RATIOS)
    assert cov == {0.5: 0.5, 0.7: 0.5}
    assert anchor_coverage(boxes[1:2], PAPER_SIZES, PAPER_RATIOS) == {0.5: 0.0, 0.7: 0.0}
    tall = torch.tensor([[0.0, 0.0, 64.0, 128.0]])
    assert anchor_coverage(tall, (90.51,), (2.0,), (0.99,)) == {0.99: 1.0}
    empty = anchor_coverage(np.zeros((0, 4)), PAPER_SIZES, PAPER_RATIOS)
    assert all(math.isnan(v) for v in empty.values())


def test_box_statistics() -> None:
    anns = [
        Annotation(0, "a", 100, 100, [[0, 0, 10, 20], [0, 0, 30, 30]], [1, 1]),
        Annotation(1, "b", 100, 100, [[0, 0, 40, 10], [5, 5, 5, 9]], [1, 1]),
        Annotation(2, "c", 100, 100),
    ]
    s = box_statistics(anns)
    assert s["count"] == 4 and s["num_degenerate"] == 1
    sq = sorted([math.sqrt(200), 30.0, 20.0])
    assert s["sqrt_area"]["min"] == pytest.approx(sq[0])
    assert s["sqrt_area"]["p50"] == pytest.approx(sq[1])
    assert s["sqrt_area"]["max"] == pytest.approx(sq[2])
    assert s["aspect_ratio"]["min"] == pytest.approx(0.25)
    assert s["aspect_ratio"]["max"] == pytest.approx(2.0)
    assert set(s["sqrt_area"]) == {"min", "p5", "p25", "p50", "p75", "p95", "max", "mean"}
    assert box_statistics(np.zeros((0, 4)))["sqrt_area"] == {}


def test_suggest_anchors() -> None:
    sizes = np.repeat([16.0, 64.0, 256.0], 100)
    ratios = np.tile([0.5, 1.0, 2.0], 100)
    w, h = sizes / np.sqrt(ratios), sizes * np.sqrt(ratios)
    boxes = np.stack([np.zeros_like(w), np.zeros_like(h), w, h], 1)
    s, r = suggest_anchors(boxes, 3, 3)
    assert s == (16.0, 64.0, 256.0)
    assert r == (0.5, 1.0, 2.0)
    s5, r1 = suggest_anchors(boxes, 5, 1)
    assert len(s5) == 5 and s5[0] == 16.0 and s5[-1] == 256.0 and r1 == (1.0,)
    with pytest.raises(ValueError):
        suggest_anchors(np.zeros((0, 4)))


def test_input_scaling() -> None:
    assert input_scale(300, 500, 600, 1000) == 2.0
    assert input_scale(300, 1500, 600, 1000) == pytest.approx(1000 / 1500)
    anns = [Annotation(0, "a", 300, 500, [[0, 0, 10, 10], [1, 1, 2, 2]], [1, 1],
                       iscrowd=[False, True])]
    np.testing.assert_allclose(input_boxes(anns, 600, 1000), [[0, 0, 20, 20]])
    assert len(input_boxes(anns, include_crowd=True)) == 2
