"""The result of a dataset check: :class:`CheckReport`, and what acts on it.

:class:`CheckReport` holds every :class:`~fasterrcnn.data.problems.Problem` that
:func:`~fasterrcnn.data.check.check_dataset` found, plus statistics (images, objects, counts per
class, box sizes and shapes) and how well the anchors cover the boxes (with suggested anchors);
:meth:`CheckReport.format` writes it as readable text. :func:`build_report` computes the
statistics from the annotations; :func:`sanitize` gives a view of a dataset without the images
and boxes a report found bad (:class:`SanitizedDataset`).
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch

from fasterrcnn.config import AnchorConfig, InputConfig
from fasterrcnn.data.dataset import Annotation, DetectionDataset
from fasterrcnn.data.stats import anchor_coverage, box_statistics, input_boxes, input_scale, suggest_anchors

if TYPE_CHECKING:
    from fasterrcnn.data.problems import Problem

logger = logging.getLogger("fasterrcnn.data")

# --------------------------------------------------------------------------- report


@dataclass
class CheckReport:
    """Everything :func:`~fasterrcnn.data.check.check_dataset` found; ``ok`` when there is no
    problem."""

    source: str
    classes: tuple[str, ...]
    problems: list[Problem] = field(default_factory=list)
    num_images: int = 0
    num_objects: int = 0
    num_negative: int = 0  # images without any object
    num_difficult: int = 0
    num_crowd: int = 0
    class_counts: dict[str, int] = field(default_factory=dict)
    box_stats: dict = field(default_factory=dict)  # stats.box_statistics, original pixels
    anchor_sizes: tuple[float, ...] = ()
    aspect_ratios: tuple[float, ...] = ()
    anchor_coverage: dict[float, float] = field(default_factory=dict)  # on network-input boxes
    suggested_anchors: tuple[tuple[float, ...], tuple[float, ...]] | None = None
    scale_note: str = "input scale"  # at which scale the boxes met the anchors
    notes: list[str] = field(default_factory=list)  # done on purpose (not problems), one per line
    used_images: int | None = None  # after leaving out the bad parts (prepare_dataset)
    used_objects: int | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    def counts_by_kind(self) -> dict[str, int]:
        return dict(Counter(p.kind for p in self.problems))

    def format(self, max_problems: int | None = 50) -> str:
        """Readable multi-line report (at most ``max_problems`` problems listed; None = all)."""
        lines = [f"Dataset check: {self.source}"]
        lines.append(
            f"  images: {self.num_images} ({self.num_negative} without objects); objects: "
            f"{self.num_objects} (difficult {self.num_difficult}, crowd {self.num_crowd})"
        )
        lines.append(f"  classes ({len(self.classes)}):")
        for name in self.classes:
            lines.append(f"    {name}: {self.class_counts.get(name, 0)}")
        for key, title in (("sqrt_area", "box sqrt(area) px"), ("aspect_ratio", "box h/w")):
            s = self.box_stats.get(key) or {}
            if s:
                parts = ", ".join(f"{k} {v:.3g}" for k, v in s.items() if k != "mean")
                lines.append(f"  {title}: {parts}")
        if self.anchor_coverage:
            cov = ", ".join(
                f"IoU>={t:g}: {100 * v:.1f}%" for t, v in self.anchor_coverage.items()
                if not math.isnan(v)
            )
            if cov:
                lines.append(
                    f"  anchor coverage (sizes {_fmt(self.anchor_sizes)}, ratios "
                    f"{_fmt(self.aspect_ratios)}; shape IoU at {self.scale_note}, an upper bound): {cov}"
                )
            poor = self.anchor_coverage.get(0.5)
            if poor is not None and not math.isnan(poor) and poor < 0.5:
                lines.append(
                    f"  WARNING: these anchors cannot match most boxes: only {100 * poor:.1f}% reach "
                    "IoU >= 0.5 with any anchor shape, so the RPN has almost nothing to learn from; "
                    "use anchors near the suggested ones (--set model.anchors.sizes=[...] "
                    "--set model.anchors.aspect_ratios=[...])"
                )
        if self.suggested_anchors is not None:
            s, r = self.suggested_anchors
            lines.append(f"  suggested anchors: sizes {_fmt(s)}, ratios {_fmt(r)}")
        if self.notes:
            lines.append("  notes:")
            lines.extend(f"    {n}" for n in self.notes)
        if self.ok:
            lines.append("  no problems found")
            return "\n".join(lines)
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(self.counts_by_kind().items()))
        lines.append(f"  PROBLEMS: {len(self.problems)} ({kinds})")
        shown = self.problems if max_problems is None else self.problems[:max_problems]
        lines.extend(f"    {p}" for p in shown)
        if len(shown) < len(self.problems):
            lines.append(f"    ... and {len(self.problems) - len(shown)} more")
        return "\n".join(lines)


def _fmt(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:g}" for v in values) + ")"


def build_report(
    source: str,
    classes: Sequence[str],
    num_images: int,
    anns: Sequence[Annotation],
    problems: list[Problem],
    anchors: AnchorConfig,
    input_cfg: InputConfig,
    crop: int | None = None,
) -> CheckReport:
    """The report on a checked dataset of ``num_images`` images with these ``problems``.

    Statistics come from ``anns``, the annotations that could be read: counts per class, box
    statistics, and the coverage of ``anchors`` (with suggested anchors) on boxes resized as
    ``input_cfg`` resizes each whole image, or, with ``crop``, a ``crop`` x ``crop`` window.
    """
    counts = Counter(int(v) for ann in anns for v in ann.labels.tolist())
    if crop:
        factor = input_scale(crop, crop, input_cfg.min_size_test, input_cfg.max_size_test)
        scaled = input_boxes(anns) * factor
        scale_note = f"the scale of {crop}-px crops (x{factor:.3g})"
    else:
        scaled = input_boxes(anns, input_cfg.min_size_test, input_cfg.max_size_test)
        scale_note = f"input scale (shorter side {input_cfg.min_size_test}, longer <= {input_cfg.max_size_test})"
    suggestion = None
    try:
        suggestion = suggest_anchors(scaled, len(anchors.sizes), len(anchors.aspect_ratios))
    except ValueError:
        pass
    return CheckReport(
        source=source,
        classes=tuple(classes),
        problems=problems,
        num_images=num_images,
        num_objects=sum(len(a.boxes) for a in anns),
        num_negative=sum(1 for a in anns if len(a.boxes) == 0),
        num_difficult=int(sum(a.difficult.sum() for a in anns)),
        num_crowd=int(sum(a.iscrowd.sum() for a in anns)),
        class_counts={name: counts.get(j + 1, 0) for j, name in enumerate(classes)},
        box_stats=box_statistics(anns),
        anchor_sizes=tuple(anchors.sizes),
        aspect_ratios=tuple(anchors.aspect_ratios),
        anchor_coverage=anchor_coverage(scaled, anchors.sizes, anchors.aspect_ratios),
        suggested_anchors=suggestion,
        scale_note=scale_note,
    )


# --------------------------------------------------------------------------- skipping bad data


class SanitizedDataset:
    """A view of ``base`` keeping the images ``indices`` and, in each, dropping the objects
    listed in ``drop_objects[base_index]``. Image ids are those of ``base``."""

    def __init__(
        self,
        base: DetectionDataset,
        indices: Sequence[int],
        drop_objects: dict[int, set[int]] | None = None,
    ) -> None:
        self.base = base
        self.classes = tuple(base.classes)
        self.indices = [int(i) for i in indices]
        self.drop_objects = {int(k): set(v) for k, v in (drop_objects or {}).items()}
        self.problems: list[Problem] = []  # the bad parts of ``base`` are already left out

    def __len__(self) -> int:
        return len(self.indices)

    def __repr__(self) -> str:
        return f"SanitizedDataset({len(self)} of {len(self.base)} images of {self.base!r})"

    def _keep(self, base_index: int, n: int) -> np.ndarray:
        keep = np.ones(n, bool)
        for obj in self.drop_objects.get(base_index, ()):
            if 0 <= obj < n:
                keep[obj] = False
        return keep

    def annotation(self, index: int) -> Annotation:
        j = self.indices[index]
        ann = self.base.annotation(j)
        return ann.select(self._keep(j, len(ann.boxes)))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict]:
        j = self.indices[index]
        image, target = self.base[j]
        target = dict(target)
        keep = torch.from_numpy(self._keep(j, len(target["boxes"])))
        for key in ("boxes", "labels", "difficult", "iscrowd"):
            if key in target:
                target[key] = target[key][keep]
        return image, target


def sanitize(
    dataset: DetectionDataset, report: CheckReport, log: logging.Logger | None = None
) -> SanitizedDataset:
    """``dataset`` without the images and boxes ``report`` found bad; one warning per item.

    ``report`` must come from :func:`~fasterrcnn.data.check.check_dataset` on this very dataset.
    """
    log = log or logger
    if report.num_images != len(dataset):
        raise ValueError(
            f"report covers {report.num_images} images but the dataset has {len(dataset)}"
        )
    bad_images: set[int] = set()
    drop: dict[int, set[int]] = {}
    for p in report.problems:
        if p.index is None:
            log.warning("bad data skipped: %s", p)
        elif p.obj is None:
            if p.index not in bad_images:
                log.warning("bad data: skipping image %d: %s", p.index, p)
            bad_images.add(p.index)
    for p in report.problems:
        if p.index is not None and p.obj is not None and p.index not in bad_images:
            log.warning("bad data: skipping object %d of image %d: %s", p.obj, p.index, p)
            drop.setdefault(p.index, set()).add(p.obj)
    keep = [i for i in range(len(dataset)) if i not in bad_images]
    return SanitizedDataset(dataset, keep, drop)
