"""Pascal VOC detection AP with the devkit's rules, computed in memory.

Shapes: N images; K object classes (labels 1..K); for one image, G ground-truth boxes and D
detections (of one class once split per class); M = all detections of one class over all images.

Rules (those of the devkit's Python port, ``voc_eval.py`` of py-faster-rcnn, which reported the
Faster R-CNN VOC numbers):

* per class, all detections over all images are sorted by descending score. The sort is
  *stable*: tied scores keep input order, i.e. image order first, then the order inside the
  image's detection list (the devkit's ``np.argsort(-confidence)`` does not promise an order for
  ties; a stable sort makes ours reproducible);
* each detection is compared with the gt boxes of its class in its image (difficult ones
  included) and takes the one of highest IoU (the first on IoU ties); if that IoU is
  *strictly greater* than ``iou_thresh`` (devkit: ``if ovmax > ovthresh``; the MATLAB
  ``VOCevaldet.m`` uses ``>=``, available as ``iou_ge=True``): a difficult (or crowd) gt makes
  the detection ignored (neither TP nor FP); a gt not yet detected makes it a TP and marks the
  gt; an already detected gt makes it a duplicate, FP. Otherwise (no gt, low IoU) it is a FP;
* recall = TP / npos, npos = number of non-difficult, non-crowd gt boxes of the class;
  precision = TP / max(TP + FP, eps). Ignored detections stay in the PR arrays as repeated points;
* IoU is in continuous coordinates without the devkit's +1: with VOC's 1-based inclusive
  ``[xmin..xmax]`` stored as ``[xmin - 1, ymin - 1, xmax, ymax]`` it equals the devkit's IoU;
* VOC2007 AP: mean over t in ``np.arange(0, 1.1, 0.1)`` (the devkit's floats, so ``t[3]`` is
  0.30000000000000004) of the highest precision at recall >= t (0 if none); VOC2010+ AP: area
  under the monotone (right-to-left running max) precision envelope.

Undefined values are ``None`` (JSON ``null``), never NaN: a class without non-difficult gt has
``AP = None`` (the devkit divides 0 by 0 there) and is left out of the mean; ``mAP`` is ``None``
when no class has gt. A class with gt but no detections has AP 0.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch

from fasterrcnn.data.dataset import Annotation

# The devkit's 11 recall thresholds, bit for bit (np.arange's floats, not exact tenths).
VOC07_RECALL_THRESHOLDS: np.ndarray = np.arange(0.0, 1.1, 0.1)


def _numpy(x: torch.Tensor | np.ndarray | Sequence[Any], dtype: type) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def detections_as_numpy(det: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(boxes [D, 4] float64, labels [D] int64, scores [D] float64)`` of one image's dict.

    Accepts torch tensors, numpy arrays or lists under ``"boxes"``, ``"labels"``, ``"scores"``.
    """
    try:
        boxes = _numpy(det["boxes"], np.float64).reshape(-1, 4)
        labels = _numpy(det["labels"], np.int64).reshape(-1)
        scores = _numpy(det["scores"], np.float64).reshape(-1)
    except KeyError as exc:
        raise ValueError(f"detection dict lacks the key {exc}") from None
    if not len(boxes) == len(labels) == len(scores):
        raise ValueError(
            f"detections disagree in length: {len(boxes)} boxes, {len(labels)} labels, "
            f"{len(scores)} scores"
        )
    return boxes, labels, scores


def check_inputs(
    gts: Sequence[Annotation], dets: Sequence[Mapping[str, Any]], classes: Sequence[str]
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Validate aligned gts/dets (labels in 1..K, distinct class names); numpy detections."""
    num_classes = len(classes)
    if num_classes < 1:
        raise ValueError("no classes given")
    if len(set(classes)) != num_classes:
        raise ValueError(f"class names are not distinct: {list(classes)}")
    if len(gts) != len(dets):
        raise ValueError(f"{len(gts)} ground-truth images but {len(dets)} detection entries")
    out = []
    for i, (gt, det) in enumerate(zip(gts, dets)):
        boxes, labels, scores = detections_as_numpy(det)
        for what, lab in (("ground-truth", gt.labels), ("detection", labels)):
            bad = (lab < 1) | (lab > num_classes)
            if bad.any():
                raise ValueError(
                    f"image {i}: {what} label {int(lab[bad][0])} outside 1..{num_classes}"
                )
        out.append((boxes, labels, scores))
    return out


def box_iou_np(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU ``[A, B]`` (float64) of xyxy boxes ``a [A, 4]`` and ``b [B, 4]``; 0 where union is 0."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    inter = np.maximum(iw, 0.0) * np.maximum(ih, 0.0)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    ok = union > 0
    return np.where(ok, inter / np.where(ok, union, 1.0), 0.0)


def voc_ap(recall: np.ndarray, precision: np.ndarray, use_07_metric: bool) -> float:
    """AP of one PR curve (arrays ``[M]`` in detection order, recall non-decreasing).

    ``use_07_metric``: VOC2007 11-point interpolated AP; otherwise the VOC2010+ area under the
    monotone precision envelope. Empty arrays give 0.
    """
    rec = np.asarray(recall, np.float64).reshape(-1)
    prec = np.asarray(precision, np.float64).reshape(-1)
    if use_07_metric:
        total = 0.0
        for t in VOC07_RECALL_THRESHOLDS:
            reached = prec[rec >= t]
            total += (float(reached.max()) if reached.size else 0.0) / 11.0
        return total
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    envelope = np.maximum.accumulate(mpre[::-1])[::-1]
    steps = np.nonzero(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * envelope[steps + 1]))


def match_class(
    gt_boxes: Sequence[np.ndarray],
    gt_ignore: Sequence[np.ndarray],
    det_boxes: Sequence[np.ndarray],
    det_scores: Sequence[np.ndarray],
    *,
    iou_thresh: float = 0.5,
    iou_ge: bool = False,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Greedy devkit matching of one class over N images.

    Inputs are per image: gt boxes ``[G, 4]``, gt ignore flags ``[G]`` (difficult or crowd),
    detection boxes ``[D, 4]`` and scores ``[D]``. Returns ``(tp [M], fp [M], npos)`` with the M
    detections in (stable) descending-score order; an ignored detection has tp = fp = 0.
    """
    scores, image, best, ovmax = [], [], [], []
    for i, (gb, db, ds) in enumerate(zip(gt_boxes, det_boxes, det_scores)):
        if len(db) == 0:
            continue
        if len(gb):
            iou = box_iou_np(db, gb)  # [D, G]
            best.append(iou.argmax(axis=1))
            ovmax.append(iou.max(axis=1))
        else:
            best.append(np.zeros(len(db), np.int64))
            ovmax.append(np.full(len(db), -np.inf))
        image.append(np.full(len(db), i, np.int64))
        scores.append(np.asarray(ds, np.float64).reshape(-1))
    npos = int(sum(int((~np.asarray(ig, bool)).sum()) for ig in gt_ignore))
    if not scores:
        return np.zeros(0), np.zeros(0), npos
    order = np.argsort(-np.concatenate(scores), kind="stable")
    image_l = np.concatenate(image)[order].tolist()
    best_l = np.concatenate(best)[order].tolist()
    ovmax_l = np.concatenate(ovmax)[order].tolist()
    ignore_l = [np.asarray(ig, bool).tolist() for ig in gt_ignore]
    taken = [[False] * len(ig) for ig in ignore_l]
    tp = np.zeros(len(order))
    fp = np.zeros(len(order))
    for rank, (i, j, ov) in enumerate(zip(image_l, best_l, ovmax_l)):
        hit = ov >= iou_thresh if iou_ge else ov > iou_thresh
        if not hit:
            fp[rank] = 1.0
        elif ignore_l[i][j]:
            continue
        elif not taken[i][j]:
            tp[rank] = 1.0
            taken[i][j] = True
        else:
            fp[rank] = 1.0
    return tp, fp, npos


def precision_recall(tp: np.ndarray, fp: np.ndarray, npos: int) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative ``(precision [M], recall [M])`` of matched detections; npos must be > 0."""
    ctp = np.cumsum(tp)
    cfp = np.cumsum(fp)
    recall = ctp / float(npos)
    precision = ctp / np.maximum(ctp + cfp, np.finfo(np.float64).eps)
    return precision, recall


def evaluate_voc(
    gts: Sequence[Annotation],
    dets: Sequence[Mapping[str, Any]],
    classes: Sequence[str],
    *,
    iou_thresh: float = 0.5,
    use_07_metric: bool = True,
    iou_ge: bool = False,
) -> dict[str, Any]:
    """Pascal VOC AP per class and mAP (see the module docstring for the rules).

    ``gts``: one :class:`Annotation` per image; ``dets``: aligned dicts with ``boxes [D, 4]``
    (xyxy), ``labels [D]`` (1..K) and ``scores [D]``. Difficult and crowd gt are ignored.
    Returns ``{"metric", "mAP", "AP", "iou_thresh", "iou_match", "num_gt", "pr"}``.
    """
    det_np = check_inputs(gts, dets, classes)
    ap: dict[str, float | None] = {}
    num_gt: dict[str, int] = {}
    pr: dict[str, dict[str, list[float]]] = {}
    for label, name in enumerate(classes, start=1):
        gsel = [gt.labels == label for gt in gts]
        dsel = [labels == label for _, labels, _ in det_np]
        tp, fp, npos = match_class(
            [gt.boxes[m] for gt, m in zip(gts, gsel)],
            [(gt.difficult | gt.iscrowd)[m] for gt, m in zip(gts, gsel)],
            [boxes[m] for (boxes, _, _), m in zip(det_np, dsel)],
            [scores[m] for (_, _, scores), m in zip(det_np, dsel)],
            iou_thresh=iou_thresh,
            iou_ge=iou_ge,
        )
        num_gt[name] = npos
        if npos == 0:
            ap[name] = None
            pr[name] = {"precision": [], "recall": []}
            continue
        precision, recall = precision_recall(tp, fp, npos)
        ap[name] = voc_ap(recall, precision, use_07_metric)
        pr[name] = {"precision": precision.tolist(), "recall": recall.tolist()}
    defined = [v for v in ap.values() if v is not None]
    return {
        "metric": "voc07" if use_07_metric else "voc",
        "mAP": float(np.mean(defined)) if defined else None,
        "AP": ap,
        "iou_thresh": iou_thresh,
        "iou_match": ">=" if iou_ge else ">",
        "num_gt": num_gt,
        "pr": pr,
    }
