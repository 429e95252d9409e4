"""The problem kinds every dataset reader shares, and the small helpers that record them.

The readers (:mod:`.voc`, :mod:`.coco`, :mod:`.folder`) import this module; the dataset check
(:mod:`.check`) imports the readers and this module. Nothing here imports a reader, so there is
no check <-> reader cycle.

A reader runs in one of two modes:
  * strict (default): the first fatal problem raises :class:`DataError` naming the file (and
    line / object where it applies);
  * lenient: every problem is recorded as a :class:`Problem` in the dataset's ``problems`` and
    the bad part is left out.

Besides problems a reader may keep ``notes``: things it did on purpose that the user should
know about (images without an annotation file left out, say); ``check-data`` prints them and
they do not make a dataset bad.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from fasterrcnn.data.dataset import DataError

logger = logging.getLogger("fasterrcnn.data")

MALFORMED = "malformed"  # unparseable file, missing field, bad number, bad line
EMPTY_ANNOTATION = "empty_annotation"  # annotation file with no content at all
MISSING_ANNOTATION = "missing_annotation"  # an image (or split id) without its annotation file
MISSING_IMAGE = "missing_image"
CORRUPT_IMAGE = "corrupt_image"  # the image file cannot be read / decoded
TOO_LARGE_IMAGE = "too_large_image"  # more pixels than the reader's ceiling
SIZE_MISMATCH = "size_mismatch"  # recorded size (XML <size>, COCO width/height) != the file's
BOX_OUTSIDE = "box_outside"  # beyond the image by more than the tolerance (1 px)
DEGENERATE_BOX = "degenerate_box"  # x2 <= x1 or y2 <= y1 (or non-finite)
UNKNOWN_CLASS = "unknown_class"  # class name not in the given class list / label out of range

PROBLEM_KINDS: tuple[str, ...] = (
    MALFORMED, EMPTY_ANNOTATION, MISSING_ANNOTATION, MISSING_IMAGE, CORRUPT_IMAGE,
    TOO_LARGE_IMAGE, SIZE_MISMATCH, BOX_OUTSIDE, DEGENERATE_BOX, UNKNOWN_CLASS,
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


class ProblemError(DataError):
    """A :class:`DataError` that carries its :class:`Problem` (file, line, kind, message), so a
    lenient reader can record it as it is instead of parsing the text back."""

    def __init__(self, problem: Problem) -> None:
        super().__init__(str(problem))
        self.problem = problem


def problem_error(
    file: str | Path, message: str, kind: str, *, line: int | None = None
) -> ProblemError:
    return ProblemError(Problem(str(file), message, kind, line))


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
            raise ProblemError(problem)
        if not fatal:
            logger.warning("%s", problem)
        self.problems.append(problem)


def find_image(candidates: Iterable[Path]) -> Path | None:
    """The first of ``candidates`` that is an existing file."""
    for c in candidates:
        if c.is_file():
            return c
    return None


def stem_candidates(folder: Path, stem: str) -> list[Path]:
    """``folder/stem.EXT`` for every common image extension (lower and upper case)."""
    return [folder / f"{stem}{e}" for ext in IMAGE_EXTENSIONS for e in (ext, ext.upper())]


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


def collect_problems(dataset: object) -> list[Problem]:
    """Reader problems of ``dataset`` and of the datasets it wraps (``parts``, ``base``)."""
    return _collect(dataset, "problems")


def collect_notes(dataset: object) -> list[str]:
    """Reader notes of ``dataset`` and of the datasets it wraps (``parts``, ``base``)."""
    return _collect(dataset, "notes")


def _collect(dataset: object, attr: str) -> list:
    out: list = list(getattr(dataset, attr, None) or [])
    for part in getattr(dataset, "parts", None) or []:
        out.extend(_collect(part, attr))
    base = getattr(dataset, "base", None)
    if base is not None and not hasattr(dataset, attr):
        out.extend(_collect(base, attr))
    return out
