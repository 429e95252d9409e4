"""Pascal VOC AP: hand-computed cases and an independent brute-force devkit re-implementation."""

from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from fasterrcnn.data.dataset import Annotation
from fasterrcnn.evaluation import box_iou_np, evaluate_voc, voc_ap
from fasterrcnn.evaluation.voc import VOC07_RECALL_THRESHOLDS


def ann(boxes, labels, difficult=None, iscrowd=None, image_id: int = 0) -> Annotation:
    n = len(labels)
    return Annotation(
        image_id, f"{image_id}.jpg", 100, 100,
        np.asarray(boxes, np.float32).reshape(n, 4), np.asarray(labels),
        np.zeros(n, bool) if difficult is None else np.asarray(difficult, bool),
        np.zeros(n, bool) if iscrowd is None else np.asarray(iscrowd, bool),
    )


def det(boxes, labels, scores) -> dict:
    return {
        "boxes": np.asarray(boxes, np.float32).reshape(-1, 4),
        "labels": np.asarray(labels, np.int64),
        "scores": np.asarray(scores, np.float32),
    }


NO_DET = det([], [], [])


# ----------------------------------------------------------------- independent reference (slow)


def devkit_iou(a: list[float], b: list[float]) -> float:
    """The devkit's IoU on 1-based inclusive boxes (+1 widths), scalar pure Python."""
    iw = min(a[2], b[2]) - max(a[0], b[0]) + 1.0
    ih = min(a[3], b[3]) - max(a[1], b[1]) + 1.0
    iw, ih = max(iw, 0.0), max(ih, 0.0)
    inter = iw * ih
    ua = (a[2] - a[0] + 1.0) * (a[3] - a[1] + 1.0) + (b[2] - b[0] + 1.0) * (b[3] - b[1] + 1.0)
    return inter / (ua - inter)


def to_devkit(box) -> list[float]:
    """Our continuous xyxy -> VOC 1-based inclusive (what py-faster-rcnn writes: x1 + 1)."""
    x1, y1, x2, y2 = (float(v) for v in box)
    return [x1 + 1.0, y1 + 1.0, x2, y2]


def ref_ap07(rec: list[float], prec: list[float]) -> float:
    total = 0.0
    for i in range(11):
        t = 0.1 * i  # the devkit's np.arange floats (checked in test_devkit_thresholds)
        total += max([p for r, p in zip(rec, prec) if r >= t], default=0.0)
    return total / 11.0


def ref_ap_area(rec: list[float], prec: list[float]) -> float:
    """Sum over each new recall level r of (r - previous level) * best precision at recall >= r."""
    total, prev = 0.0, 0.0
    for r in sorted(set(rec)):
        total += (r - prev) * max(p for rr, p in zip(rec, prec) if rr >= r)
        prev = r
    return total


def ref_evaluate(gts, dets, num_classes, *, thresh=0.5, use07=True, ge=False):
    aps, prs = {}, {}
    for c in range(1, num_classes + 1):
        gt_img = []
        npos = 0
        for g in gts:
            objs = []
            for box, lab, dif, crowd in zip(g.boxes, g.labels, g.difficult, g.iscrowd):
                if lab == c:
                    objs.append([to_devkit(box), bool(dif or crowd), False])
                    npos += 0 if (dif or crowd) else 1
            gt_img.append(objs)
        cands = []
        for i, d in enumerate(dets):
            for box, lab, score in zip(d["boxes"].tolist(), d["labels"].tolist(),
                                       d["scores"].tolist()):
                if lab == c:
                    cands.append((score, i, to_devkit(box)))
        cands = sorted(cands, key=lambda x: -x[0])  # Python's sort is stable
        tp = fp = 0
        rec, prec = [], []
        for _, i, box in cands:
            best, jbest = -math.inf, -1
            for j, obj in enumerate(gt_img[i]):
                ov = devkit_iou(box, obj[0])
                if ov > best:
                    best, jbest = ov, j
            if (best >= thresh) if ge else (best > thresh):
                obj = gt_img[i][jbest]
                if obj[1]:
                    pass
                elif not obj[2]:
                    tp += 1
                    obj[2] = True
                else:
                    fp += 1
            else:
                fp += 1
            rec.append(tp / npos if npos else math.nan)
            prec.append(tp / (tp + fp) if tp + fp else 0.0)
        if npos == 0:
            aps[c] = None
            continue
        aps[c] = ref_ap07(rec, prec) if use07 else ref_ap_area(rec, prec)
        prs[c] = (prec, rec)
    return aps, prs


# ----------------------------------------------------------------------------------- voc_ap


def test_devkit_thresholds() -> None:
    assert all(VOC07_RECALL_THRESHOLDS[i] == 0.1 * i for i in range(11))
    assert VOC07_RECALL_THRESHOLDS[3] > 0.3  # the devkit's float artifact, kept on purpose


def test_voc_ap_hand_values() -> None:
    rec, prec = np.array([0.5, 1.0]), np.array([1.0, 0.5])
    assert voc_ap(rec, prec, use_07_metric=True) == pytest.approx(8.5 / 11, abs=1e-12)
    assert voc_ap(rec, prec, use_07_metric=False) == pytest.approx(0.75, abs=1e-12)
    # non-monotone precision: envelope [1, .6, .6, .6]
    rec, prec = np.array([0.2, 0.4, 0.4, 0.8]), np.array([1.0, 0.5, 0.4, 0.6])
    assert voc_ap(rec, prec, use_07_metric=False) == pytest.approx(0.56, abs=1e-12)
    assert voc_ap(rec, prec, use_07_metric=True) == pytest.approx(6.6 / 11, abs=1e-12)
    for use07 in (True, False):
        assert voc_ap(np.zeros(0), np.zeros(0), use07) == 0.0


def test_voc_ap_matches_reference_on_random_curves() -> None:
    rng = np.random.default_rng(0)
    for _ in range(50):
        m = int(rng.integers(1, 30))
        tp = rng.integers(0, 2, m)
        npos = int(tp.sum() + rng.integers(0, 4)) or 1
        rec = np.cumsum(tp) / npos
        prec = np.cumsum(tp) / np.arange(1, m + 1)
        assert voc_ap(rec, prec, True) == pytest.approx(ref_ap07(rec.tolist(), prec.tolist()),
                                                        abs=1e-12)
        assert voc_ap(rec, prec, False) == pytest.approx(
            ref_ap_area(rec.tolist(), prec.tolist()), abs=1e-12)


# ---------------------------------------------------------------------------------- IoU


def test_continuous_iou_equals_devkit_inclusive_iou() -> None:
    # VOC xml boxes (1-based, inclusive) converted the package's way: [xmin-1, ymin-1, xmax, ymax]
    voc_a = [[48, 240, 195, 371], [8, 12, 352, 498], [1, 1, 1, 1], [100, 100, 120, 110]]
    voc_b = [[50, 250, 190, 380], [10, 10, 300, 500], [1, 1, 2, 2], [121, 100, 130, 110]]
    conv = lambda bs: np.array([[b[0] - 1, b[1] - 1, b[2], b[3]] for b in bs], np.float64)
    ours = box_iou_np(conv(voc_a), conv(voc_b))
    for i, a in enumerate(voc_a):
        for j, b in enumerate(voc_b):
            assert ours[i, j] == devkit_iou([float(v) for v in a], [float(v) for v in b])
    assert ours[2, 2] == pytest.approx(0.25)  # one pixel vs a 2x2 block
    assert ours[3, 3] == 0.0  # touching columns 120 | 121: no overlap
    # non-integer detections (written +1 by py-faster-rcnn): equal up to rounding
    rng = np.random.default_rng(1)
    xy = rng.uniform(0, 50, (40, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(1, 40, (40, 2))], axis=1)
    ours = box_iou_np(boxes, boxes[::-1])
    for i, a in enumerate(boxes):
        for j, b in enumerate(boxes[::-1]):
            assert ours[i, j] == pytest.approx(devkit_iou(to_devkit(a), to_devkit(b)), abs=1e-12)


def test_iou_degenerate_boxes_give_zero() -> None:
    z = np.array([[5.0, 5.0, 5.0, 5.0]])
    assert box_iou_np(z, z)[0, 0] == 0.0
    assert box_iou_np(np.zeros((0, 4)), z).shape == (0, 1)


# -------------------------------------------------------------------- hand-computed cases


def test_tp_duplicate_and_false_positive() -> None:
    gts = [ann([[0, 0, 10, 10], [20, 20, 30, 30]], [1, 1]), ann([[0, 0, 10, 10]], [1], image_id=1)]
    dets = [
        det([[0, 0, 10, 10], [1, 0, 11, 10], [50, 50, 60, 60]], [1, 1, 1], [0.9, 0.8, 0.7]),
        det([[0, 0, 10, 10]], [1], [0.6]),
    ]
    # order .9 TP, .8 duplicate FP, .7 FP, .6 TP: rec 1/3,1/3,1/3,2/3; prec 1,1/2,1/3,1/2
    r07 = evaluate_voc(gts, dets, ["a"])
    assert r07["metric"] == "voc07" and r07["num_gt"] == {"a": 3}
    assert r07["AP"]["a"] == pytest.approx(5.5 / 11, abs=1e-12)  # 4 x 1 + 3 x .5
    assert r07["pr"]["a"]["recall"] == pytest.approx([1 / 3, 1 / 3, 1 / 3, 2 / 3])
    assert r07["pr"]["a"]["precision"] == pytest.approx([1, 1 / 2, 1 / 3, 1 / 2])
    r10 = evaluate_voc(gts, dets, ["a"], use_07_metric=False)
    assert r10["metric"] == "voc"
    assert r10["AP"]["a"] == pytest.approx(1 / 3 + 1 / 3 * 0.5, abs=1e-12)
    assert r10["mAP"] == r10["AP"]["a"]


def test_score_ties_keep_image_then_detection_order() -> None:
    gt_hit = ann([[0, 0, 10, 10]], [1])
    gt_none = ann(np.zeros((0, 4)), [])
    hit = det([[0, 0, 10, 10]], [1], [0.5])
    miss = det([[50, 50, 60, 60]], [1], [0.5])
    # FP (image 0) before TP (image 1): prec [0, .5] -> AP .5; swapped: prec [1, .5] -> AP 1
    r = evaluate_voc([gt_none, gt_hit], [miss, hit], ["a"])
    assert r["AP"]["a"] == pytest.approx(0.5) and r["pr"]["a"]["precision"] == [0.0, 0.5]
    r = evaluate_voc([gt_hit, gt_none], [hit, miss], ["a"])
    assert r["AP"]["a"] == pytest.approx(1.0) and r["pr"]["a"]["precision"] == [1.0, 0.5]
    # inside one image: list order
    both = det([[50, 50, 60, 60], [0, 0, 10, 10]], [1, 1], [0.5, 0.5])
    assert evaluate_voc([gt_hit], [both], ["a"])["AP"]["a"] == pytest.approx(0.5)
    both = det([[0, 0, 10, 10], [50, 50, 60, 60]], [1, 1], [0.5, 0.5])
    assert evaluate_voc([gt_hit], [both], ["a"])["AP"]["a"] == pytest.approx(1.0)


def test_difficult_detection_is_neither_tp_nor_fp() -> None:
    # A difficult; B normal; a third box C normal overlapping A less than A itself does
    gts = [ann([[0, 0, 10, 10], [40, 40, 50, 50], [0, 0, 10, 9]], [1, 1, 1],
               difficult=[True, False, False])]
    dets = [det([[0, 0, 10, 10], [40, 40, 50, 50], [0, 0, 10, 10], [0, 0, 10, 9.5]],
                [1, 1, 1, 1], [0.9, 0.8, 0.7, 0.6])]
    r = evaluate_voc(gts, dets, ["a"], use_07_metric=False)
    assert r["num_gt"]["a"] == 2
    # .9 on A (best IoU with difficult A -> ignored), .8 TP on B, .7 on A again (ignored, not a
    # duplicate), .6: IoU with A 0.95 > with C -> still ignored. C is never found.
    assert r["pr"]["a"]["recall"] == [0.0, 0.5, 0.5, 0.5]
    assert r["pr"]["a"]["precision"] == [0.0, 1.0, 1.0, 1.0]
    assert r["AP"]["a"] == pytest.approx(0.5)
    assert evaluate_voc(gts, dets, ["a"])["AP"]["a"] == pytest.approx(6 / 11)


def test_crowd_is_ignored_like_difficult() -> None:
    dets = [det([[0, 0, 10, 10], [40, 40, 50, 50]], [1, 1], [0.9, 0.8])]
    crowd = [ann([[0, 0, 10, 10], [40, 40, 50, 50]], [1, 1], iscrowd=[True, False])]
    diff = [ann([[0, 0, 10, 10], [40, 40, 50, 50]], [1, 1], difficult=[True, False])]
    a, b = evaluate_voc(crowd, dets, ["a"]), evaluate_voc(diff, dets, ["a"])
    assert a["AP"] == b["AP"] == {"a": pytest.approx(1.0)} and a["num_gt"] == {"a": 1}


def test_iou_threshold_is_strict_by_default() -> None:
    gts = [ann([[0, 0, 10, 10]], [1])]
    dets = [det([[0, 0, 10, 5]], [1], [0.9])]  # IoU exactly 0.5
    assert box_iou_np(dets[0]["boxes"], gts[0].boxes)[0, 0] == 0.5
    r = evaluate_voc(gts, dets, ["a"])
    assert r["AP"]["a"] == 0.0 and r["iou_match"] == ">"
    r = evaluate_voc(gts, dets, ["a"], iou_ge=True)
    assert r["AP"]["a"] == pytest.approx(1.0) and r["iou_match"] == ">="


def test_class_without_gt_is_none_and_left_out_of_the_mean() -> None:
    gts = [ann([[0, 0, 10, 10]], [1]), ann(np.zeros((0, 4)), [], image_id=1)]
    dets = [det([[0, 0, 10, 10], [0, 0, 10, 10]], [1, 2], [0.9, 0.9]),
            det([[5, 5, 9, 9]], [2], [0.3])]  # class 2 detections only on images without it
    r = evaluate_voc(gts, dets, ["a", "b", "c"])
    assert r["AP"] == {"a": pytest.approx(1.0), "b": None, "c": None}
    assert r["num_gt"] == {"a": 1, "b": 0, "c": 0}
    assert r["mAP"] == pytest.approx(1.0)
    assert r["pr"]["b"] == {"precision": [], "recall": []}


def test_class_with_gt_but_no_detections_scores_zero() -> None:
    gts = [ann([[0, 0, 10, 10], [0, 0, 20, 20]], [1, 2])]
    dets = [det([[0, 0, 10, 10]], [1], [0.9])]
    for use07 in (True, False):
        r = evaluate_voc(gts, dets, ["a", "b"], use_07_metric=use07)
        assert r["AP"] == {"a": pytest.approx(1.0), "b": 0.0}
        assert r["mAP"] == pytest.approx(0.5)


def test_images_without_detections_or_gt() -> None:
    gts = [ann([[0, 0, 10, 10]], [1]), ann([[0, 0, 10, 10]], [1], image_id=1),
           ann(np.zeros((0, 4)), [], image_id=2)]
    dets = [det([[0, 0, 10, 10]], [1], [0.9]), NO_DET, det([[0, 0, 10, 10]], [1], [0.95])]
    r = evaluate_voc(gts, dets, ["a"], use_07_metric=False)
    # .95 FP (no gt in image 2), .9 TP: rec [0, .5], prec [0, .5]
    assert r["pr"]["a"] == {"precision": [0.0, 0.5], "recall": [0.0, 0.5]}
    assert r["AP"]["a"] == pytest.approx(0.25)


def test_empty_everything() -> None:
    r = evaluate_voc([], [], ["a", "b"])
    assert r["mAP"] is None and r["AP"] == {"a": None, "b": None}
    assert r["num_gt"] == {"a": 0, "b": 0}
    r = evaluate_voc([ann(np.zeros((0, 4)), [])], [NO_DET], ["a"])
    assert r["mAP"] is None
    r = evaluate_voc([ann([[0, 0, 4, 4]], [1])], [NO_DET], ["a"])
    assert r["mAP"] == 0.0


def test_devkit_recall_threshold_artifact_is_kept() -> None:
    # 10 gt, 3 found: recall tops at 3/10 = 0.3 < 0.30000000000000004 -> p(0.3) = 0 as in the devkit
    boxes = [[20 * i, 0, 20 * i + 10, 10] for i in range(10)]
    gts = [ann(boxes, [1] * 10)]
    dets = [det(boxes[:3], [1] * 3, [0.9, 0.8, 0.7])]
    assert evaluate_voc(gts, dets, ["a"])["AP"]["a"] == pytest.approx(3 / 11, abs=1e-12)


def test_torch_and_numpy_inputs_agree() -> None:
    gts = [ann([[0, 0, 10, 10], [20, 20, 30, 30]], [1, 2])]
    d = det([[0, 0, 10, 10], [21, 20, 30, 30], [0, 0, 5, 5]], [1, 2, 2], [0.9, 0.8, 0.7])
    dt = {k: torch.from_numpy(v) for k, v in d.items()}
    dl = {k: v.tolist() for k, v in d.items()}
    results = [evaluate_voc(gts, [x], ["a", "b"]) for x in (d, dt, dl)]
    assert results[0] == results[1] == results[2]


def test_bad_inputs_raise() -> None:
    gts = [ann([[0, 0, 10, 10]], [1])]
    with pytest.raises(ValueError, match="outside 1..1"):
        evaluate_voc(gts, [det([[0, 0, 1, 1]], [2], [0.5])], ["a"])
    with pytest.raises(ValueError, match="outside"):
        evaluate_voc(gts, [det([[0, 0, 1, 1]], [0], [0.5])], ["a"])
    with pytest.raises(ValueError, match="detection entries"):
        evaluate_voc(gts, [], ["a"])
    with pytest.raises(ValueError, match="length"):
        evaluate_voc(gts, [{"boxes": np.zeros((2, 4)), "labels": [1], "scores": [1.0]}], ["a"])
    with pytest.raises(ValueError, match="distinct"):
        evaluate_voc(gts, [NO_DET], ["a", "a"])


# ------------------------------------------------------------ random cases vs the reference


def _random_case(rng: random.Random, num_images: int, num_classes: int):
    def box():  # integer corners on a coarse grid: many overlaps, IoU ties and exact 0.5s
        x, y = rng.randrange(0, 40, 4), rng.randrange(0, 40, 4)
        return [x, y, x + rng.choice([4, 8, 12, 16]), y + rng.choice([4, 8, 12, 16])]

    gts, dets = [], []
    for i in range(num_images):
        g = rng.randrange(0, 5)
        gts.append(ann([box() for _ in range(g)], [rng.randint(1, num_classes) for _ in range(g)],
                       difficult=[rng.random() < 0.2 for _ in range(g)],
                       iscrowd=[rng.random() < 0.05 for _ in range(g)], image_id=i))
        boxes, labels = [], []
        for _ in range(rng.randrange(0, 8)):
            if g and rng.random() < 0.7:  # a jittered copy of a gt box (usually its class)
                k = rng.randrange(g)
                b = [int(v) + rng.choice([-2, 0, 0, 0, 2]) for v in gts[-1].boxes[k]]
                b[2], b[3] = max(b[2], b[0] + 2), max(b[3], b[1] + 2)
                lab = int(gts[-1].labels[k]) if rng.random() < 0.8 else rng.randint(1, num_classes)
            else:
                b, lab = box(), rng.randint(1, num_classes)
            boxes.append(b)
            labels.append(lab)
        dets.append(det(boxes, labels, [rng.choice([0.2, 0.5, 0.7, 0.9]) for _ in labels]))
    return gts, dets


@pytest.mark.parametrize("use07", [True, False])
@pytest.mark.parametrize("ge", [False, True])
def test_matches_brute_force_reference(use07: bool, ge: bool) -> None:
    rng = random.Random(7)
    for _ in range(25):
        gts, dets = _random_case(rng, rng.randint(0, 6), 3)
        ours = evaluate_voc(gts, dets, ["a", "b", "c"], use_07_metric=use07, iou_ge=ge)
        ref, ref_pr = ref_evaluate(gts, dets, 3, use07=use07, ge=ge)
        for c, name in enumerate(["a", "b", "c"], start=1):
            if ref[c] is None:
                assert ours["AP"][name] is None
                continue
            assert ours["AP"][name] == pytest.approx(ref[c], abs=1e-6)
            assert ours["pr"][name]["precision"] == pytest.approx(ref_pr[c][0], abs=1e-12)
            assert ours["pr"][name]["recall"] == pytest.approx(ref_pr[c][1], abs=1e-12)
        defined = [v for v in ref.values() if v is not None]
        if defined:
            assert ours["mAP"] == pytest.approx(sum(defined) / len(defined), abs=1e-6)
        else:
            assert ours["mAP"] is None


# ---------------------------------------------------------------------------------- plots


def test_pr_plots_are_written(tmp_path: Path) -> None:
    from fasterrcnn.evaluation import plot_pr_curves

    gts = [ann([[0, 0, 10, 10], [20, 20, 30, 30]], [1, 2])]
    dets = [det([[0, 0, 10, 10], [50, 50, 60, 60]], [1, 1], [0.9, 0.8])]
    result = evaluate_voc(gts, dets, ["cat", "dog / wolf", "none"])
    paths = plot_pr_curves(result, tmp_path / "pr")
    assert [p.name for p in paths] == ["pr_01_cat.png", "pr_02_dog_wolf.png", "pr_03_none.png"]
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
