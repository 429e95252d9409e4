"""Checking a dataset: the problems it can have and the checks that find them, each with its file.

The readers (VOC, COCO, folder) run in one of two modes:
  * ``strict=True`` (default): the first problem raises :class:`DataError` naming the file (and
    line / object where it applies);
  * ``strict=False``: every problem is recorded as a :class:`Problem` in the dataset's
    ``problems`` list and the bad part is left out (a bad object is dropped; an annotation file
    that cannot be used, or whose image is missing or unreadable, drops the whole image).

:func:`check_dataset` opens a data spec leniently (or takes a dataset), adds the checks that
need the image files (missing, corrupt, size disagreeing with the annotation) and the box
checks for datasets that are not read by those readers, and returns a :class:`CheckReport`.

For training with ``--on-bad-data error|skip`` use :func:`prepare_dataset`: ``error`` raises a
DataError whose message is the full report; ``skip`` returns a view without the bad images and
boxes (:func:`sanitize`), logging one warning per dropped item.

Problem kinds: see :data:`PROBLEM_KINDS`. A :class:`Problem` with ``index`` set concerns image
``index`` of the dataset as it stands (``obj`` set: object ``obj`` of ``dataset.annotation(index)``;
``obj`` unset: the whole image); reader problems have ``index=None`` because the reader already
left the bad part out.

The report itself (statistics, anchor coverage, the text) and :func:`sanitize` live in
:mod:`fasterrcnn.data.check_report`; :class:`CheckReport`, :class:`SanitizedDataset` and
:func:`sanitize` can be imported from here too.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from fasterrcnn.config import AnchorConfig, InputConfig
from fasterrcnn.data.check_report import (  # SanitizedDataset: re-exported
    CheckReport, SanitizedDataset, build_report, sanitize,
)
from fasterrcnn.data.dataset import Annotation, DataError, DetectionDataset, load_image

logger = logging.getLogger("fasterrcnn.data")

# --------------------------------------------------------------------------- problems

MALFORMED = "malformed"  # unparseable file, missing field, bad number, bad line
EMPTY_ANNOTATION = "empty_annotation"  # annotation file with no content at all
MISSING_ANNOTATION = "missing_annotation"  # listed in a split file but no annotation file
MISSING_IMAGE = "missing_image"
CORRUPT_IMAGE = "corrupt_image"  # the image file cannot be read / decoded
SIZE_MISMATCH = "size_mismatch"  # recorded size (XML <size>, COCO width/height) != the file's
BOX_OUTSIDE = "box_outside"  # beyond the image by more than the tolerance (1 px)
DEGENERATE_BOX = "degenerate_box"  # x2 <= x1 or y2 <= y1 (or non-finite)
UNKNOWN_CLASS = "unknown_class"  # class name not in the given class list / label out of range

PROBLEM_KINDS: tuple[str, ...] = (
    MALFORMED, EMPTY_ANNOTATION, MISSING_ANNOTATION, MISSING_IMAGE, CORRUPT_IMAGE,
    SIZE_MISMATCH, BOX_OUTSIDE, DEGENERATE_BOX, UNKNOWN_CLASS,
)

BOX_TOLERANCE = 1.0  # pixels a box may stick out of the image before it is a problem

IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp",
)


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a dataset. ``str(problem)`` is ``file[:line]: message``."""

    file: str
    message: str
    kind: str
    line: int | None = None
    index: int | None = None  # image index in the dataset (None: already left out by the reader)
    obj: int | None = None  # object index in dataset.annotation(index)

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else f"{self.file}"
        return f"{where}: {self.message}"


class ProblemLog:
    """Collects problems; in strict mode the first fatal one raises :class:`DataError`."""

    def __init__(self, strict: bool = True) -> None:
        self.strict = strict
        self.problems: list[Problem] = []

    def add(
        self,
        file: str | Path,
        message: str,
        kind: str,
        *,
        line: int | None = None,
        fatal: bool = True,
    ) -> None:
        problem = Problem(str(file), message, kind, line)
        if self.strict and fatal:
            raise DataError(str(problem))
        if not fatal:
            logger.warning("%s", problem)
        self.problems.append(problem)


def collect_problems(dataset: object) -> list[Problem]:
    """Reader problems of ``dataset`` and of the datasets it wraps (``parts``, ``base``)."""
    out: list[Problem] = list(getattr(dataset, "problems", None) or [])
    for part in getattr(dataset, "parts", None) or []:
        out.extend(collect_problems(part))
    base = getattr(dataset, "base", None)
    if base is not None and not hasattr(dataset, "problems"):
        out.extend(collect_problems(base))
    return out


# --------------------------------------------------------------------------- shared file helpers


def read_image_size(path: str | Path) -> tuple[int, int]:
    """(height, width) from the image header (no full decode); DataError naming the file."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: image file not found")
    try:
        with Image.open(path) as im:
            width, height = im.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{path}: cannot read image ({exc})") from None
    return int(height), int(width)


def find_image(candidates: Iterable[Path]) -> Path | None:
    """The first of ``candidates`` that is an existing file."""
    for c in candidates:
        if c.is_file():
            return c
    return None


def stem_candidates(folder: Path, stem: str) -> list[Path]:
    """``folder/stem.EXT`` for every common image extension (lower and upper case)."""
    return [folder / f"{stem}{e}" for ext in IMAGE_EXTENSIONS for e in (ext, ext.upper())]


def load_sample(path: str | Path, ann: Annotation) -> tuple[torch.Tensor, dict]:
    """Decode the image of ``ann`` and return ``(image, ann.as_target())``; DataError when the
    image's size is not the annotation's."""
    image = load_image(path)
    h, w = int(image.shape[1]), int(image.shape[2])
    if (h, w) != (ann.height, ann.width):
        raise DataError(
            f"{path}: image is {w}x{h} (WxH) but its annotation says {ann.width}x{ann.height}"
        )
    return image, ann.as_target()


def box_issue(
    box: Sequence[float], height: int, width: int, tolerance: float = BOX_TOLERANCE
) -> tuple[str, str] | None:
    """``(kind, message)`` when the xyxy ``box`` is degenerate or outside the image, else None."""
    x1, y1, x2, y2 = (float(v) for v in box)
    text = f"[{x1:g}, {y1:g}, {x2:g}, {y2:g}]"
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
        return DEGENERATE_BOX, f"box {text} has non-finite coordinates"
    if x2 <= x1 or y2 <= y1:
        return DEGENERATE_BOX, f"degenerate box {text} (x2 <= x1 or y2 <= y1)"
    if x1 < -tolerance or y1 < -tolerance or x2 > width + tolerance or y2 > height + tolerance:
        return BOX_OUTSIDE, f"box {text} is outside the {width}x{height} (WxH) image"
    return None


def box_issues(
    boxes: np.ndarray, height: int, width: int, tolerance: float = BOX_TOLERANCE
) -> list[tuple[int, str, str]]:
    """``(object index, kind, message)`` for each degenerate box or box outside the image."""
    out: list[tuple[int, str, str]] = []
    for k, b in enumerate(np.asarray(boxes, np.float64).reshape(-1, 4).tolist()):
        issue = box_issue(b, height, width, tolerance)
        if issue is not None:
            out.append((k, *issue))
    return out


def check_image_file(
    path: Path, height: int, width: int, decode: bool = True
) -> list[tuple[str, str]]:
    """``(kind, message)`` problems of one image file: missing, unreadable, size mismatch.

    With ``decode`` the pixels are decoded too (JPEGs at 1/8 scale, which still reads all of
    the file) so that truncated files are found.
    """
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        return [(MISSING_IMAGE, "image file not found")]
    try:
        with Image.open(path) as im:
            w, h = im.size
            if decode:
                if im.format == "JPEG":
                    im.draft("RGB", (max(1, w // 8), max(1, h // 8)))
                im.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError,
            Image.DecompressionBombError) as exc:
        return [(CORRUPT_IMAGE, f"cannot read image ({exc})")]
    if (h, w) != (height, width):
        return [(SIZE_MISMATCH, f"image is {w}x{h} (WxH) but its annotation says {width}x{height}")]
    return []


# --------------------------------------------------------------------------- checking a dataset


def open_dataset(
    data: str | DetectionDataset, classes: Sequence[str] | None = None, strict: bool = False
) -> tuple[DetectionDataset, str]:
    """``(dataset, source text)`` for a data spec (opened leniently by default) or a dataset."""
    if isinstance(data, str):
        from fasterrcnn.data.spec import parse_data_spec

        return parse_data_spec(data, classes=classes, strict=strict), data
    return data, repr(data) if type(data).__repr__ is not object.__repr__ else type(data).__name__


def check_dataset(
    data: str | DetectionDataset,
    *,
    classes: Sequence[str] | None = None,
    decode_images: bool = True,
    anchors: AnchorConfig | None = None,
    input_cfg: InputConfig | None = None,
    tolerance: float = BOX_TOLERANCE,
    crop: int | None = None,
) -> CheckReport:
    """Check a data spec (``"voc:..."``, read leniently) or a dataset; list every problem.

    Checks: the readers' problems (malformed / empty / missing annotation files, unknown
    classes, bad boxes), then per image: the image file exists and can be read (``decode_images``
    decodes the pixels, finding truncated files; otherwise only the header is read), its size
    agrees with the annotation, boxes are inside the image (``tolerance`` px) and not
    degenerate, labels are in 1..K. Images whose ``file_name`` is not a file (e.g. synthetic
    data) are produced with ``dataset[i]`` instead when ``decode_images``.

    ``classes`` is passed to the readers when ``data`` is a spec (unknown names are problems).

    Statistics: counts per class, box statistics, and the coverage of the anchors in
    ``anchors`` (default: the paper's) on boxes resized as ``input_cfg`` (default 600 / 1000)
    resizes each whole image, or, with ``crop``, as it resizes a ``crop`` x ``crop`` window (training
    on random crops and sliced inference see large photos that way).
    """
    ds, source = open_dataset(data, classes)
    anchors = anchors or AnchorConfig()
    input_cfg = input_cfg or InputConfig()
    problems = collect_problems(ds)
    anns: list[Annotation] = []
    k = len(ds.classes)
    for i in range(len(ds)):
        try:
            ann = ds.annotation(i)
        except DataError as exc:
            problems.append(Problem(f"image {i}", str(exc), MALFORMED, index=i))
            continue
        anns.append(ann)
        for obj, kind, msg in box_issues(ann.boxes, ann.height, ann.width, tolerance):
            problems.append(Problem(ann.file_name, f"object {obj}: {msg}", kind, index=i, obj=obj))
        for obj, label in enumerate(ann.labels.tolist()):
            if not 1 <= label <= k:
                problems.append(Problem(
                    ann.file_name, f"object {obj}: label {label} is not in 1..{k}",
                    UNKNOWN_CLASS, index=i, obj=obj,
                ))
        problems.extend(_image_problems(ds, i, ann, decode_images))
    return build_report(source, ds.classes, len(ds), anns, problems, anchors, input_cfg, crop)


def _image_problems(
    ds: DetectionDataset, i: int, ann: Annotation, decode: bool
) -> list[Problem]:
    path = Path(ann.file_name)
    if path.is_file():
        return [
            Problem(ann.file_name, msg, kind, index=i)
            for kind, msg in check_image_file(path, ann.height, ann.width, decode)
        ]
    if not decode:
        return []
    try:
        image, _ = ds[i]
    except DataError as exc:
        kind = MISSING_IMAGE if "not found" in str(exc) else CORRUPT_IMAGE
        return [Problem(ann.file_name, str(exc), kind, index=i)]
    h, w = int(image.shape[-2]), int(image.shape[-1])
    if (h, w) != (ann.height, ann.width):
        msg = f"image is {w}x{h} (WxH) but its annotation says {ann.width}x{ann.height}"
        return [Problem(ann.file_name, msg, SIZE_MISMATCH, index=i)]
    return []


# --------------------------------------------------------------------------- for training


ON_BAD_DATA = ("error", "skip")


def prepare_dataset(
    data: str | DetectionDataset,
    *,
    on_bad_data: str = "error",
    classes: Sequence[str] | None = None,
    decode_images: bool = True,
    anchors: AnchorConfig | None = None,
    input_cfg: InputConfig | None = None,
    log: logging.Logger | None = None,
) -> tuple[DetectionDataset, CheckReport]:
    """Open and check ``data`` for training; ``(dataset, report)``.

    ``on_bad_data="error"``: any problem raises :class:`DataError` whose message is the full
    report. ``"skip"``: the bad images / boxes are dropped (:func:`sanitize`) with a logged
    warning each. DataError too when nothing usable is left.
    """
    if on_bad_data not in ON_BAD_DATA:
        raise DataError(f"on_bad_data must be one of {ON_BAD_DATA}, got {on_bad_data!r}")
    ds, source = open_dataset(data, classes)
    report = check_dataset(
        ds, decode_images=decode_images, anchors=anchors, input_cfg=input_cfg
    )
    report.source = source
    if not report.ok:
        if on_bad_data == "error":
            raise DataError(
                report.format(max_problems=None)
                + "\n(fix the data, or pass --on-bad-data skip to leave the bad parts out)"
            )
        ds = sanitize(ds, report, log)
    if len(ds) == 0:
        raise DataError(f"{source}: no usable images")
    return ds, report
