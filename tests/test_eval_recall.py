"""Proposal recall vs IoU on hand-made cases, and the recall plot."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fasterrcnn.evaluation import DEFAULT_IOU_THRESHOLDS, proposal_recall
from fasterrcnn.evaluation.recall import best_overlaps

T = torch.tensor


def _case() -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    gts = [T([[0.0, 0, 10, 10], [20, 20, 30, 30]]), T([[0.0, 0, 10, 10]])]
    props = [
        T([[0.0, 0, 10, 7], [0, 0, 10, 10], [20, 20, 30, 28], [20, 20, 30, 30]]),  # .7, 1, .8, 1
        T([[0.0, 0, 10, 6]]),  # .6
    ]
    return gts, props


def test_default_thresholds() -> None:
    assert list(DEFAULT_IOU_THRESHOLDS) == [0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95]
    assert np.allclose(DEFAULT_IOU_THRESHOLDS, np.arange(0.5, 0.951, 0.05))


def test_best_overlaps() -> None:
    gts, props = _case()
    assert best_overlaps(gts[0], props[0], 1).tolist() == [0.7, 0.0]
    assert best_overlaps(gts[0], props[0], 3).tolist() == [1.0, 0.8]
    assert best_overlaps(gts[0], props[0][:0], 3).tolist() == [0.0, 0.0]
    assert best_overlaps(gts[0][:0], props[0], 3).shape == (0,)


def test_recall_hand_case() -> None:
    gts, props = _case()
    r = proposal_recall(gts, props, counts=(1, 3, 4))
    assert r["num_gt"] == 3
    assert r["iou_thresholds"] == list(DEFAULT_IOU_THRESHOLDS)
    # N=1: best IoUs .7, 0, .6 (an IoU of exactly .7 reaches the .7 threshold)
    assert r["recall"][1] == pytest.approx([2 / 3, 2 / 3, 2 / 3, 1 / 3, 1 / 3] + [0.0] * 5)
    # N=3: 1, .8, .6
    assert r["recall"][3] == pytest.approx([1.0] * 3 + [2 / 3] * 4 + [1 / 3] * 3)
    # N=4: 1, 1, .6
    assert r["recall"][4] == pytest.approx([1.0] * 3 + [2 / 3] * 7)
    assert r["average_recall"][1] == pytest.approx((2 + 2 / 3) / 10)
    assert r["average_recall"][3] == pytest.approx((3 + 8 / 3 + 1) / 10)
    assert r["average_recall"][4] == pytest.approx((3 + 14 / 3) / 10)


def test_counts_beyond_available_and_custom_thresholds() -> None:
    gts, props = _case()
    r = proposal_recall(gts, props, counts=(2000,), iou_thresholds=[0.5, 0.9])
    assert r["iou_thresholds"] == [0.5, 0.9]
    assert r["recall"][2000] == pytest.approx([1.0, 2 / 3])
    assert r["average_recall"][2000] == pytest.approx(5 / 6)


def test_numpy_inputs_and_empty_images() -> None:
    gts = [np.array([[0.0, 0, 10, 10]]), np.zeros((0, 4)), np.array([[5.0, 5, 9, 9]])]
    props = [np.array([[0.0, 0, 10, 10]]), np.array([[0.0, 0, 3, 3]]), np.zeros((0, 4))]
    r = proposal_recall(gts, props, counts=(10,))
    assert r["num_gt"] == 2 and r["recall"][10] == [0.5] * 10
    assert r["average_recall"][10] == pytest.approx(0.5)


def test_no_gt_at_all() -> None:
    r = proposal_recall([torch.zeros(0, 4)], [T([[0.0, 0, 1, 1]])], counts=(5,))
    assert r["num_gt"] == 0 and r["recall"][5] == [None] * 10 and r["average_recall"][5] is None
    r = proposal_recall([], [], counts=(5,))
    assert r["num_gt"] == 0


def test_bad_inputs() -> None:
    with pytest.raises(ValueError):
        proposal_recall([torch.zeros(0, 4)], [], counts=(5,))
    with pytest.raises(ValueError):
        proposal_recall([torch.zeros(0, 4)], [torch.zeros(0, 4)], counts=(0,))


def test_recall_plot_is_written(tmp_path: Path) -> None:
    from fasterrcnn.evaluation import plot_recall_iou

    gts, props = _case()
    path = plot_recall_iou(proposal_recall(gts, props, counts=(1, 3, 4)), tmp_path / "r" / "f.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    empty = proposal_recall([torch.zeros(0, 4)], [torch.zeros(0, 4)], counts=(5,))
    assert plot_recall_iou(empty, tmp_path / "e.png").is_file()
