"""PNG plots of evaluation results: per-class PR curves and proposal recall vs IoU.

Shapes: M points of a class's PR curve; T IoU thresholds; C proposal counts.

Figures are drawn on matplotlib's Agg canvas without pyplot, so no global backend is switched
and no figure stays registered after saving.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

_METRIC_NAMES = {"voc07": "VOC07 11-point", "voc": "VOC2010+ area"}


def _figure(width: float = 5.0, height: float = 4.5) -> Figure:
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "class"


def _envelope(precision: np.ndarray) -> np.ndarray:
    """Right-to-left running max of precision ``[M]`` (the interpolated PR curve)."""
    return np.maximum.accumulate(precision[::-1])[::-1] if precision.size else precision


def plot_pr_curves(voc_result: Mapping[str, Any], out_dir: str | Path) -> list[Path]:
    """One PNG per class of an :func:`evaluate_voc` result: raw and interpolated PR curves.

    Files are ``out_dir/pr_<label>_<class>.png`` (label 1..K, two digits at least); a class
    without gt gets a plot saying so. Returns the written paths in class order.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    metric = _METRIC_NAMES.get(str(voc_result.get("metric")), str(voc_result.get("metric")))
    thresh = voc_result.get("iou_thresh", 0.5)
    match = voc_result.get("iou_match", ">")
    paths: list[Path] = []
    for label, (name, ap) in enumerate(voc_result["AP"].items(), start=1):
        curve = voc_result["pr"][name]
        recall = np.asarray(curve["recall"], np.float64)
        precision = np.asarray(curve["precision"], np.float64)
        fig = _figure()
        ax = fig.add_subplot(1, 1, 1)
        if ap is None:
            ax.text(0.5, 0.5, "no ground truth", ha="center", va="center", transform=ax.transAxes)
            title = f"{name}: AP n/a"
        else:
            if recall.size:
                ax.plot(recall, precision, "-", lw=1.0, color="tab:blue", label="precision")
                ax.plot(recall, _envelope(precision), "--", lw=1.5, color="tab:orange",
                        label="interpolated")
                ax.legend(loc="lower left")
            else:
                ax.text(0.5, 0.5, "no detections", ha="center", va="center",
                        transform=ax.transAxes)
            title = f"{name}: AP = {ap:.3f}"
        ax.set_title(f"{title}  ({metric}, IoU {match} {thresh:g})", fontsize=10)
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
        ax.set_xlim(0.0, 1.0)
        ax.set_ylim(0.0, 1.02)
        ax.grid(True, alpha=0.3)
        fig.tight_layout()
        path = out / f"pr_{label:02d}_{_safe_name(str(name))}.png"
        fig.savefig(path)
        paths.append(path)
    return paths


def plot_recall_iou(recall_result: Mapping[str, Any], path: str | Path) -> Path:
    """Recall vs IoU threshold of a :func:`proposal_recall` result, one line per count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    thresholds = np.asarray(recall_result["iou_thresholds"], np.float64)
    fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    for count, values in recall_result["recall"].items():
        y = np.array([np.nan if v is None else v for v in values], np.float64)
        avg = recall_result["average_recall"].get(count)
        label = f"{count} proposals" + ("" if avg is None else f" (AR {avg:.3f})")
        ax.plot(thresholds, y, "-o", ms=3, lw=1.5, label=label)
    ax.set_title(f"Proposal recall vs IoU ({recall_result.get('num_gt', 0)} gt boxes)", fontsize=10)
    ax.set_xlabel("IoU")
    ax.set_ylabel("recall")
    if thresholds.size:
        ax.set_xlim(float(thresholds.min()) - 0.01, float(thresholds.max()) + 0.01)
    ax.set_ylim(0.0, 1.02)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower left")
    fig.tight_layout()
    fig.savefig(path)
    return path
