"""COCO metrics: our in-memory path vs pycocotools run directly on hand-written JSON files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from fasterrcnn.data.dataset import Annotation
from fasterrcnn.evaluation import evaluate_coco, gt_to_coco_dict, to_coco_results
from fasterrcnn.evaluation.coco import STAT_NAMES

CLASSES = ["a", "b", "c"]
CAT_IDS = [1, 3, 7]  # gaps on purpose


def ann(image_id, boxes, labels, difficult=None, iscrowd=None, size=(200, 200)) -> Annotation:
    n = len(labels)
    return Annotation(
        image_id, f"img{image_id}.jpg", size[0], size[1],
        np.asarray(boxes, np.float32).reshape(n, 4), np.asarray(labels, np.int64),
        np.zeros(n, bool) if difficult is None else np.asarray(difficult, bool),
        np.zeros(n, bool) if iscrowd is None else np.asarray(iscrowd, bool),
    )


def det(boxes, labels, scores) -> dict:
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(labels, dtype=torch.int64),
            "scores": torch.tensor(scores, dtype=torch.float32)}


# Three images (ids 10, 20, 30): medium/small/large gt, a crowd region, a difficult object,
# duplicates, a detection inside the crowd region, false positives, an image without gt.
GTS = [
    ann(10, [[10, 10, 50, 50], [100, 100, 110, 110], [0, 120, 100, 200]], [1, 2, 1],
        iscrowd=[False, False, True]),
    ann(20, [[0, 0, 150, 150], [60, 60, 80, 90], [5, 5, 25, 25]], [3, 1, 2],
        difficult=[False, False, True]),
    ann(30, np.zeros((0, 4)), []),
]
DETS = [
    det([[10, 10, 50, 50], [12, 10, 50, 52], [10, 130, 40, 160], [101, 100, 111, 110],
         [0, 0, 30, 30]], [1, 1, 1, 2, 3], [0.875, 0.625, 0.75, 0.5, 0.25]),
    det([[0, 0, 140, 150], [60, 60, 80, 88], [5, 5, 25, 25], [150, 150, 190, 190]],
        [3, 1, 2, 1], [0.9375, 0.5, 0.375, 0.125]),
    det([[0, 0, 20, 20]], [2], [0.8125]),
]

# The same data written by hand in COCO's own format (xywh; difficult -> iscrowd).
GT_JSON = {
    "images": [{"id": i, "file_name": f"img{i}.jpg", "height": 200, "width": 200}
               for i in (10, 20, 30)],
    "annotations": [
        {"id": 1, "image_id": 10, "category_id": 1, "bbox": [10, 10, 40, 40], "area": 1600,
         "iscrowd": 0},
        {"id": 2, "image_id": 10, "category_id": 3, "bbox": [100, 100, 10, 10], "area": 100,
         "iscrowd": 0},
        {"id": 3, "image_id": 10, "category_id": 1, "bbox": [0, 120, 100, 80], "area": 8000,
         "iscrowd": 1},
        {"id": 4, "image_id": 20, "category_id": 7, "bbox": [0, 0, 150, 150], "area": 22500,
         "iscrowd": 0},
        {"id": 5, "image_id": 20, "category_id": 1, "bbox": [60, 60, 20, 30], "area": 600,
         "iscrowd": 0},
        {"id": 6, "image_id": 20, "category_id": 3, "bbox": [5, 5, 20, 20], "area": 400,
         "iscrowd": 1},
    ],
    "categories": [{"id": 1, "name": "a"}, {"id": 3, "name": "b"}, {"id": 7, "name": "c"}],
}
RES_JSON = [
    {"image_id": 10, "category_id": 1, "bbox": [10, 10, 40, 40], "score": 0.875},
    {"image_id": 10, "category_id": 1, "bbox": [12, 10, 38, 42], "score": 0.625},
    {"image_id": 10, "category_id": 1, "bbox": [10, 130, 30, 30], "score": 0.75},
    {"image_id": 10, "category_id": 3, "bbox": [101, 100, 10, 10], "score": 0.5},
    {"image_id": 10, "category_id": 7, "bbox": [0, 0, 30, 30], "score": 0.25},
    {"image_id": 20, "category_id": 7, "bbox": [0, 0, 140, 150], "score": 0.9375},
    {"image_id": 20, "category_id": 1, "bbox": [60, 60, 20, 28], "score": 0.5},
    {"image_id": 20, "category_id": 3, "bbox": [5, 5, 20, 20], "score": 0.375},
    {"image_id": 20, "category_id": 1, "bbox": [150, 150, 40, 40], "score": 0.125},
    {"image_id": 30, "category_id": 3, "bbox": [0, 0, 20, 20], "score": 0.8125},
]


def _run_pycocotools(gt_path: Path, res_path: Path, cat_ids: list[int] | None = None) -> np.ndarray:
    coco_gt = COCO(str(gt_path))
    coco_dt = coco_gt.loadRes(str(res_path))
    ev = COCOeval(coco_gt, coco_dt, "bbox")
    if cat_ids is not None:
        ev.params.catIds = cat_ids
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return ev.stats


def test_matches_pycocotools_on_json_files(tmp_path: Path, capsys) -> None:
    gt_path, res_path = tmp_path / "gt.json", tmp_path / "res.json"
    gt_path.write_text(json.dumps(GT_JSON))
    res_path.write_text(json.dumps(RES_JSON))
    stats = _run_pycocotools(gt_path, res_path)
    per_class = {name: _run_pycocotools(gt_path, res_path, [cid])[0]
                 for name, cid in zip(CLASSES, CAT_IDS)}
    capsys.readouterr()

    ours = evaluate_coco(GTS, DETS, CLASSES, category_ids=CAT_IDS)
    assert capsys.readouterr().out == ""  # pycocotools silenced
    assert ours["metric"] == "coco"
    for name, v in zip(STAT_NAMES, stats):
        assert ours[name] == (None if v == -1 else v), name  # exactly equal
    assert ours["AP_per_class"] == {n: (None if v == -1 else v) for n, v in per_class.items()}
    assert 0 < ours["AP"] < 1 and ours["APs"] is not None and ours["APl"] is not None


def test_gt_dict_and_results_match_the_hand_written_json() -> None:
    d = gt_to_coco_dict(GTS, CLASSES, CAT_IDS)
    assert json.loads(json.dumps(d)) == GT_JSON
    res = to_coco_results(DETS, [10, 20, 30], CAT_IDS)
    assert res == RES_JSON


def test_to_coco_results_format() -> None:
    d = {"boxes": np.array([[1.23456, 2.5, 10.0, 20.987654]]), "labels": np.array([2]),
         "scores": np.array([0.123456789], np.float32)}
    (r,) = to_coco_results([d], [5], [1, 3, 7], file_names=["x.jpg"], classes=CLASSES)
    assert r == {"image_id": 5, "category_id": 3, "bbox": [1.23, 2.5, 8.77, 18.49],
                 "score": 0.12346, "file_name": "x.jpg", "category": "b"}
    assert type(r["image_id"]) is int and type(r["category_id"]) is int
    assert all(type(v) is float for v in r["bbox"]) and type(r["score"]) is float
    (r,) = to_coco_results([d], [5], None, bbox_decimals=None, score_decimals=None)
    assert r["category_id"] == 2 and r["bbox"][0] == 1.23456
    assert set(r) == {"image_id", "category_id", "bbox", "score"}
    with pytest.raises(ValueError):
        to_coco_results([d], [5], [1])  # label 2 has no id


def test_difficult_becomes_crowd() -> None:
    g = [ann(1, [[0, 0, 10, 10], [20, 20, 40, 40]], [1, 1], difficult=[True, False])]
    assert [a["iscrowd"] for a in gt_to_coco_dict(g, ["a"])["annotations"]] == [1, 0]
    d = gt_to_coco_dict(g, ["a"], difficult_as_crowd=False)
    assert [a["iscrowd"] for a in d["annotations"]] == [0, 0]
    assert [a["area"] for a in d["annotations"]] == [100.0, 400.0]
    # a detection on the difficult object changes nothing
    hit = det([[20, 20, 40, 40]], [1], [0.9])
    extra = det([[20, 20, 40, 40], [0, 0, 10, 10]], [1, 1], [0.9, 0.8])
    assert evaluate_coco(g, [hit], ["a"]) == evaluate_coco(g, [extra], ["a"])
    assert evaluate_coco(g, [hit], ["a"])["AP"] == pytest.approx(1.0)


def test_detection_inside_crowd_region_is_not_a_false_positive() -> None:
    g = [ann(1, [[0, 0, 100, 100], [120, 120, 160, 160]], [1, 1], iscrowd=[True, False])]
    hit = det([[120, 120, 160, 160]], [1], [0.5])
    extra = det([[120, 120, 160, 160], [10, 10, 30, 30]], [1, 1], [0.5, 0.9])
    outside = det([[120, 120, 160, 160], [170, 10, 190, 30]], [1, 1], [0.5, 0.9])
    assert evaluate_coco(g, [extra], ["a"])["AP"] == evaluate_coco(g, [hit], ["a"])["AP"]
    assert evaluate_coco(g, [hit], ["a"])["AP"] == pytest.approx(1.0)
    assert evaluate_coco(g, [outside], ["a"])["AP"] < 1.0


def test_category_id_gaps_map_to_the_right_classes() -> None:
    g = [ann(1, [[0, 0, 50, 50], [60, 60, 100, 100]], [3, 1])]
    d = [det([[0, 0, 50, 50]], [3], [0.9])]
    r = evaluate_coco(g, d, CLASSES, category_ids=CAT_IDS)
    assert r["AP_per_class"] == {"a": 0.0, "b": None, "c": pytest.approx(1.0)}
    assert r["AP"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="distinct"):
        evaluate_coco(g, d, CLASSES, category_ids=[1, 1, 2])
    with pytest.raises(ValueError, match="category ids"):
        evaluate_coco(g, d, CLASSES, category_ids=[1, 2])


def test_empty_detections(capsys) -> None:
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64),
             "scores": torch.zeros(0)}
    r = evaluate_coco(GTS, [empty] * 3, CLASSES, category_ids=CAT_IDS)
    assert capsys.readouterr().out == ""
    for key in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100"):
        assert r[key] == 0.0, key
    assert r["AP_per_class"] == {"a": 0.0, "b": 0.0, "c": 0.0}
    # nothing at all: every number undefined
    r = evaluate_coco([ann(1, np.zeros((0, 4)), [])], [empty], ["a"])
    assert all(r[k] is None for k in STAT_NAMES) and r["AP_per_class"] == {"a": None}


def test_image_ids_and_verbose(capsys) -> None:
    g = [ann(7, [[0, 0, 50, 50]], [1]), ann(7, [[0, 0, 50, 50]], [1])]  # duplicate ids
    d = [det([[0, 0, 50, 50]], [1], [0.9])] * 2
    assert gt_to_coco_dict(g, ["a"])["images"][1]["id"] == 1  # falls back to 0..N-1
    r = evaluate_coco(g, d, ["a"], image_ids=[100, 200], verbose=True)
    assert r["AP"] == pytest.approx(1.0)
    assert "Average Precision" in capsys.readouterr().out
    with pytest.raises(ValueError, match="distinct"):
        evaluate_coco(g, d, ["a"], image_ids=[1, 1])
