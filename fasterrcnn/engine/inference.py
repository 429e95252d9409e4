"""Running a trained detector over a dataset, and scoring it with the standard metrics.

Shapes: I images; per image D detections.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from ..data.dataset import DetectionDataset

METRICS = ("voc07", "voc", "coco")

Predictor = Callable[[list[torch.Tensor]], list[dict[str, torch.Tensor]]]


def run_inference(
    model: nn.Module,
    dataset: DetectionDataset,
    *,
    batch_size: int = 4,
    device: str | torch.device = "cpu",
    progress: bool = False,
    predictor: Predictor | None = None,
) -> list[dict[str, np.ndarray]]:
    """Detections for every image of ``dataset`` (original-image pixels), as numpy arrays.

    ``predictor`` replaces ``model.predict`` (e.g. sliced inference for large photos).
    """
    predict = predictor or model.predict
    out: list[dict[str, np.ndarray]] = []
    indices = range(0, len(dataset), batch_size)
    for start in tqdm(indices, desc="detect", disable=not progress, unit="batch"):
        stop = min(start + batch_size, len(dataset))
        images = [dataset[i][0].to(device).float().div_(255.0) for i in range(start, stop)]
        with torch.no_grad():
            dets = predict(images)
        for d in dets:
            out.append({k: d[k].detach().cpu().numpy() for k in ("boxes", "labels", "scores")})
    return out


def score(
    detections: Sequence[dict[str, Any]],
    dataset: DetectionDataset,
    metric: str,
) -> dict[str, Any]:
    """The metrics dict of ``metric`` (voc07 | voc | coco) for detections aligned with ``dataset``."""
    from ..evaluation import evaluate_coco, evaluate_voc

    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose one of: {', '.join(METRICS)}")
    gts = [dataset.annotation(i) for i in range(len(dataset))]
    if metric == "coco":
        return evaluate_coco(gts, detections, dataset.classes, category_ids=category_ids(dataset))
    return evaluate_voc(gts, detections, dataset.classes, use_07_metric=metric == "voc07")


def category_ids(dataset: DetectionDataset) -> list[int] | None:
    """COCO category ids of the labels when the data came from a COCO file, else None (1..K)."""
    ids = getattr(dataset, "category_ids", None)
    if ids is None or any(int(i) < 0 for i in ids):
        return None
    return [int(i) for i in ids]


def detections_json(
    detections: Sequence[dict[str, Any]],
    *,
    image_ids: Sequence[int],
    file_names: Sequence[str],
    classes: Sequence[str],
    category_ids: Sequence[int] | None = None,
    exact: bool = False,
) -> list[dict[str, Any]]:
    """COCO results format: {image_id, file_name, category_id, category, bbox [x, y, w, h], score}.

    Boxes are rounded to 0.01 px and scores to 5 decimals, unless ``exact`` (evaluation writes
    exactly what it scored, so that pycocotools on the file reproduces the reported numbers).
    """
    from ..evaluation import to_coco_results

    digits: dict[str, Any] = {"bbox_decimals": None, "score_decimals": None} if exact else {}
    return to_coco_results(
        detections,
        list(image_ids),
        category_ids=list(category_ids) if category_ids is not None else None,
        file_names=list(file_names),
        classes=list(classes),
        **digits,
    )


def flatten_metrics(result: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Every value of a (nested) metrics dict by dotted key, e.g. ``{"AP.ring": 0.9}``; the
    ``data`` and ``checkpoint`` entries (names, not results) are left out."""
    out: dict[str, Any] = {}
    for key, value in result.items():
        if key in ("data", "checkpoint"):
            continue
        if isinstance(value, dict):
            out.update(flatten_metrics(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def write_json(path: str | os.PathLike, data: Any) -> Path:
    """Write JSON atomically (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n")
    os.replace(tmp, path)
    return path


def evaluate_model(
    model: nn.Module,
    dataset: DetectionDataset,
    metric: str,
    *,
    out_dir: str | os.PathLike | None = None,
    batch_size: int = 4,
    device: str | torch.device = "cpu",
    progress: bool = False,
    predictor: Predictor | None = None,
    plots: bool = True,
) -> dict[str, Any]:
    """Detect on ``dataset``, score with ``metric``; with ``out_dir`` also write metrics.json,
    detections.json and (VOC metrics) one precision-recall plot per class under pr/."""
    dets = run_inference(model, dataset, batch_size=batch_size, device=device, progress=progress, predictor=predictor)
    return evaluate_detections(dets, dataset, metric, out_dir=out_dir, plots=plots)


def evaluate_detections(
    dets: Sequence[dict[str, np.ndarray]],
    dataset: DetectionDataset,
    metric: str,
    *,
    out_dir: str | os.PathLike | None = None,
    plots: bool = True,
) -> dict[str, Any]:
    """:func:`evaluate_model` on detections already made (:func:`run_inference`, aligned with
    ``dataset``): the metrics, and with ``out_dir`` the same files."""
    result = score(dets, dataset, metric)
    if out_dir is not None:
        out = Path(out_dir)
        anns = [dataset.annotation(i) for i in range(len(dataset))]
        write_json(out / "metrics.json", _without_curves(result))
        write_json(
            out / "detections.json",
            detections_json(
                dets,
                image_ids=[a.image_id for a in anns],
                file_names=[a.file_name for a in anns],
                classes=dataset.classes,
                category_ids=category_ids(dataset),
                exact=True,
            ),
        )
        if plots and metric in ("voc07", "voc"):
            from ..evaluation import plot_pr_curves

            plot_pr_curves(result, out / "pr")
    return result


def _without_curves(result: dict[str, Any]) -> dict[str, Any]:
    """metrics.json keeps the numbers; the full PR curves stay out of it (they are plotted)."""
    return {k: v for k, v in result.items() if k != "pr"}
