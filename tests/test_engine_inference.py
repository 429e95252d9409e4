"""Tests of engine/inference.py helpers that need no model."""

from __future__ import annotations

from fasterrcnn.engine.inference import flatten_metrics


def test_flatten_metrics_hand_case():
    result = {"metric": "voc07", "mAP": 0.5, "AP": {"ring": 0.25, "cross": 0.75},
              "num_gt": {"ring": 3}, "data": "shapes:test", "checkpoint": "x.pt", "nested": {}}
    assert flatten_metrics(result) == {
        "metric": "voc07", "mAP": 0.5, "AP.ring": 0.25, "AP.cross": 0.75, "num_gt.ring": 3,
    }
    assert flatten_metrics({}) == {}
