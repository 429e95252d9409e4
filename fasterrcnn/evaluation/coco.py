"""COCO box AP/AR through pycocotools (``COCOeval``, iouType ``"bbox"``), in memory.

Shapes: N images; K object classes (labels 1..K); for one image, G gt boxes and D detections.

Conversions:
  * a box xyxy ``[x1, y1, x2, y2]`` becomes COCO ``[x, y, w, h] = [x1, y1, x2 - x1, y2 - y1]``
    (both in continuous pixel coordinates, so no +1); gt ``area = w * h``;
  * label ``l`` becomes category id ``category_ids[l - 1]`` (default ``l``, i.e. 1..K);
  * VOC *difficult* objects become ``iscrowd = 1``: pycocotools has no other "ignore" switch (it
    overwrites a gt's ``ignore`` with its ``iscrowd``), so a difficult object is an ignore
    region, as VOC treats it. Note that pycocotools matches crowd regions by intersection over
    the detection's area, so its notion of "on a difficult object" is looser than VOC's IoU.

The numbers are exactly pycocotools' ``COCOeval.stats`` (0..1); where it reports -1 (no gt in
that area range) we return ``None``. With no detections at all (pycocotools' ``loadRes`` fails on
an empty list) an empty result set is evaluated instead: AP/AR 0 wherever gt exists.
"""

from __future__ import annotations

import contextlib
import copy
import io
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from fasterrcnn.data.dataset import Annotation
from fasterrcnn.evaluation.voc import check_inputs, detections_as_numpy

STAT_NAMES: tuple[str, ...] = (
    "AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl",
)


def _category_ids(category_ids: Sequence[int] | None, num_classes: int) -> list[int]:
    if category_ids is None:
        return list(range(1, num_classes + 1))
    ids = [int(c) for c in category_ids]
    if len(ids) != num_classes:
        raise ValueError(f"{len(ids)} category ids for {num_classes} classes")
    if len(set(ids)) != len(ids):
        raise ValueError(f"category ids are not distinct: {ids}")
    return ids


def _image_ids(gts: Sequence[Annotation], image_ids: Sequence[int] | None) -> list[int]:
    """Given ids (must be distinct), else the annotations' ids if distinct, else 0..N-1."""
    if image_ids is not None:
        ids = [int(i) for i in image_ids]
        if len(ids) != len(gts):
            raise ValueError(f"{len(ids)} image ids for {len(gts)} images")
        if len(set(ids)) != len(ids):
            raise ValueError("image ids are not distinct")
        return ids
    ids = [int(gt.image_id) for gt in gts]
    return ids if len(set(ids)) == len(ids) else list(range(len(gts)))


def _xywh(box: np.ndarray) -> list[float]:
    x1, y1, x2, y2 = (float(v) for v in box)
    return [x1, y1, x2 - x1, y2 - y1]


def gt_to_coco_dict(
    gts: Sequence[Annotation],
    classes: Sequence[str],
    category_ids: Sequence[int] | None = None,
    *,
    image_ids: Sequence[int] | None = None,
    difficult_as_crowd: bool = True,
) -> dict[str, list[dict[str, Any]]]:
    """A COCO "instances" dict (images, annotations, categories) of the ground truth.

    Image ids: ``image_ids`` if given, else each Annotation's ``image_id`` (when distinct, else
    0..N-1). Annotation ids run 1..; ``iscrowd`` is the annotation's crowd flag, or'ed with its
    difficult flag unless ``difficult_as_crowd=False``.
    """
    cat_ids = _category_ids(category_ids, len(classes))
    img_ids = _image_ids(gts, image_ids)
    images, annotations = [], []
    for img_id, gt in zip(img_ids, gts):
        images.append({
            "id": img_id, "file_name": gt.file_name, "height": int(gt.height),
            "width": int(gt.width),
        })
        crowd = gt.iscrowd | gt.difficult if difficult_as_crowd else gt.iscrowd
        for box, label, is_crowd in zip(gt.boxes, gt.labels, crowd):
            if not 1 <= int(label) <= len(classes):
                raise ValueError(f"image {img_id}: label {int(label)} outside 1..{len(classes)}")
            xywh = _xywh(box)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": img_id,
                    "category_id": cat_ids[int(label) - 1],
                    "bbox": xywh,
                    "area": xywh[2] * xywh[3],
                    "iscrowd": int(bool(is_crowd)),
                }
            )
    categories = [{"id": c, "name": str(n)} for c, n in zip(cat_ids, classes)]
    return {"images": images, "annotations": annotations, "categories": categories}


def to_coco_results(
    dets: Sequence[Mapping[str, Any]],
    image_ids: Sequence[int],
    category_ids: Sequence[int] | None = None,
    file_names: Sequence[str] | None = None,
    classes: Sequence[str] | None = None,
    *,
    bbox_decimals: int | None = 2,
    score_decimals: int | None = 5,
) -> list[dict[str, Any]]:
    """Detections in the COCO results format, one dict per box.

    ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}`` with plain Python numbers,
    rounded to ``bbox_decimals`` / ``score_decimals`` (``None``: unrounded); ``"file_name"`` and
    ``"category"`` (the class name) are added when ``file_names`` / ``classes`` are given.
    ``category_ids[l - 1]`` is label l's id (``None``: the label itself).
    """
    if len(image_ids) != len(dets):
        raise ValueError(f"{len(image_ids)} image ids for {len(dets)} detection entries")
    if file_names is not None and len(file_names) != len(dets):
        raise ValueError(f"{len(file_names)} file names for {len(dets)} detection entries")

    cat_of = None if category_ids is None else [int(c) for c in category_ids]
    results: list[dict[str, Any]] = []
    for i, det in enumerate(dets):
        boxes, labels, scores = detections_as_numpy(det)
        xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1).tolist()
        for box, label, score in zip(xywh, labels.tolist(), scores.tolist()):
            if cat_of is not None and not 1 <= label <= len(cat_of):
                raise ValueError(f"image {image_ids[i]}: label {label} has no category id")
            item: dict[str, Any] = {
                "image_id": int(image_ids[i]),
                "category_id": label if cat_of is None else cat_of[label - 1],
                "bbox": box if bbox_decimals is None else [round(v, bbox_decimals) for v in box],
                "score": score if score_decimals is None else round(score, score_decimals),
            }
            if file_names is not None:
                item["file_name"] = str(file_names[i])
            if classes is not None:
                item["category"] = str(classes[label - 1])
            results.append(item)
    return results


@contextlib.contextmanager
def _quiet(verbose: bool) -> Iterator[None]:
    if verbose:
        yield
    else:
        with contextlib.redirect_stdout(io.StringIO()):
            yield


def _coco_from_dict(dataset: dict[str, Any]) -> COCO:
    coco = COCO()
    coco.dataset = dataset
    coco.createIndex()
    return coco


def _load_results(coco_gt: COCO, results: list[dict[str, Any]]) -> COCO:
    """``coco_gt.loadRes(results)``; an empty result set when there are no detections."""
    if results:
        return coco_gt.loadRes(results)
    empty = {
        "images": list(coco_gt.dataset["images"]),
        "categories": copy.deepcopy(coco_gt.dataset["categories"]),
        "annotations": [],
    }
    return _coco_from_dict(empty)


def _stat(v: float) -> float | None:
    return None if v == -1 else float(v)


def evaluate_coco(
    gts: Sequence[Annotation],
    dets: Sequence[Mapping[str, Any]],
    classes: Sequence[str],
    *,
    category_ids: Sequence[int] | None = None,
    image_ids: Sequence[int] | None = None,
    verbose: bool = False,
) -> dict[str, Any]:
    """COCO box metrics of aligned gts/dets (see the module docstring for the conversions).

    Returns ``{"metric": "coco", "AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10",
    "AR100", "ARs", "ARm", "ARl", "AP_per_class": {class: AP}}``, values in 0..1 or ``None``.
    Per-class AP is the mean of pycocotools' precision over IoU 0.50:0.95, all areas, 100 dets.
    ``verbose`` lets pycocotools print its usual summary.
    """
    check_inputs(gts, dets, classes)
    cat_ids = _category_ids(category_ids, len(classes))
    img_ids = _image_ids(gts, image_ids)
    gt_dict = gt_to_coco_dict(gts, classes, cat_ids, image_ids=img_ids)
    results = to_coco_results(dets, img_ids, cat_ids, bbox_decimals=None, score_decimals=None)
    with _quiet(verbose):
        coco_gt = _coco_from_dict(gt_dict)
        coco_dt = _load_results(coco_gt, results)
        coco_eval = COCOeval(coco_gt, coco_dt, iouType="bbox")
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    out: dict[str, Any] = {"metric": "coco"}
    out.update({name: _stat(v) for name, v in zip(STAT_NAMES, coco_eval.stats)})
    precision = coco_eval.eval["precision"]  # [T, R, K, A, M]
    area_all = coco_eval.params.areaRngLbl.index("all")
    name_of = dict(zip(cat_ids, classes))
    per_class: dict[str, float | None] = {}
    for k, cid in enumerate(coco_eval.params.catIds):
        p = precision[:, :, k, area_all, -1]
        p = p[p > -1]
        per_class[name_of[cid]] = float(np.mean(p)) if p.size else None
    out["AP_per_class"] = {name: per_class[name] for name in classes}
    return out
