"""The simple format for users with neither VOC nor COCO files: images plus YOLO txt labels.

Layout of ``root``::

    root/classes.txt          class names, one per line: line 1 is YOLO class 0 (= label 1)
    root/**/NAME.jpg          images (any common extension, any depth; sorted by path)
    root/**/NAME.txt          labels of NAME.jpg, beside it; or the Ultralytics layout
                              images/.../NAME.jpg -> labels/.../NAME.txt

Each label line is ``class_index cx cy w h``: the class index (0-based, into ``classes.txt``)
and the box centre and size normalised by the image width / height to 0..1. Blank lines and
lines starting with ``#`` are ignored. A box becomes xyxy pixels
``[(cx - w/2) W, (cy - h/2) H, (cx + w/2) W, (cy + h/2) H]`` (continuous coordinates).

An image with no label file, or an empty one, is an image with no objects (a valid negative
example) -- the YOLO convention. Image sizes are read from the image headers.

``classes`` given: names from ``classes.txt`` are mapped to it by name (a name it lacks is an
unknown class); without ``classes.txt`` the given list is the index order. Neither: DataError.

Problems (bad line, class index out of range, box outside the image, degenerate box,
unreadable image) raise DataError as ``file:line: message`` in strict mode; with
``strict=False`` they are collected in ``problems`` and the line / image is left out.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from fasterrcnn.data.dataset import Annotation, DataError
from fasterrcnn.data.images import DEFAULT_READER, ImageReader, load_sample
from fasterrcnn.data.problems import (
    IMAGE_EXTENSIONS, MALFORMED, UNKNOWN_CLASS, Problem, ProblemError, ProblemLog, box_issue,
)

CLASSES_FILE = "classes.txt"
UNKNOWN_CLASS_MODES = ("error", "skip")


def read_class_names(path: Path) -> list[str]:
    """Names in a ``classes.txt`` (one per line; trailing blank lines ignored)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read class names ({exc})") from None
    names = [ln.strip() for ln in lines]
    while names and not names[-1]:
        names.pop()
    for n, name in enumerate(names, 1):
        if not name:
            raise DataError(f"{path}:{n}: blank line among the class names")
        if name in names[: n - 1]:
            raise DataError(f"{path}:{n}: duplicate class name {name!r}")
    if not names:
        raise DataError(f"{path}: no class names")
    return names


def label_file_for(image: Path) -> Path | None:
    """The YOLO label file of ``image``: beside it, or under ``labels/`` for ``images/``."""
    beside = image.with_suffix(".txt")
    if beside.is_file():
        return beside
    parts = list(image.parts)
    for k in range(len(parts) - 2, -1, -1):
        if parts[k] == "images":
            alt = Path(*parts[:k], "labels", *parts[k + 1:]).with_suffix(".txt")
            if alt.is_file():
                return alt
            break
    return None


def _class_index(text: str) -> int | None:
    try:
        v = float(text)
    except ValueError:
        return None
    return int(v) if math.isfinite(v) and v.is_integer() and v >= 0 else None


def parse_yolo_lines(
    label_file: Path, height: int, width: int, log: ProblemLog
) -> list[tuple[int, list[float], int]]:
    """``(class index, xyxy pixel box, line number)`` per good line; problems go to ``log``."""
    try:
        lines = label_file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        log.add(label_file, f"cannot read label file ({exc})", MALFORMED)
        return []
    out = []
    for n, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        if len(fields) != 5:
            log.add(label_file, f"expected 5 values 'class cx cy w h', got {len(fields)}: {line!r}",
                    MALFORMED, line=n)
            continue
        cls = _class_index(fields[0])
        if cls is None:
            log.add(label_file, f"class index {fields[0]!r} is not a non-negative integer",
                    MALFORMED, line=n)
            continue
        try:
            cx, cy, w, h = (float(v) for v in fields[1:])
        except ValueError:
            log.add(label_file, f"box values must be numbers: {line!r}", MALFORMED, line=n)
            continue
        box = [(cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width,
               (cy + h / 2) * height]
        issue = box_issue(box, height, width)
        if issue is not None:
            log.add(label_file, f"{issue[1]} (normalised cx cy w h: {line.split(None, 1)[1]})",
                    issue[0], line=n)
            continue
        out.append((cls, box, n))
    return out


class FolderDataset:
    """Images with YOLO txt labels (a :class:`~fasterrcnn.data.dataset.DetectionDataset`).

    Attributes: ``classes``, ``image_files``, ``label_files`` (None: no label file),
    ``problems`` (lenient mode).
    """

    def __init__(
        self,
        root: str | Path,
        classes: Sequence[str] | None = None,
        *,
        unknown_classes: str = "error",
        strict: bool = True,
        images: ImageReader = DEFAULT_READER,
    ) -> None:
        if unknown_classes not in UNKNOWN_CLASS_MODES:
            raise DataError(
                f"unknown_classes must be one of {UNKNOWN_CLASS_MODES}, got {unknown_classes!r}"
            )
        root = Path(root)
        if not root.is_dir():
            raise DataError(f"{root}: image folder not found")
        self.image_reader = images
        self.root = root
        names_file = root / CLASSES_FILE
        file_names = read_class_names(names_file) if names_file.is_file() else None
        if classes is None:
            if file_names is None:
                raise DataError(f"{names_file}: not found; it must list the class names, one per "
                                "line, in YOLO class-index order (or pass classes=...)")
            classes = file_names
        self.classes: tuple[str, ...] = tuple(str(c) for c in classes)
        if len(set(self.classes)) != len(self.classes):
            raise DataError(f"duplicate class names in {list(self.classes)}")
        label_of = {n: j + 1 for j, n in enumerate(self.classes)}
        index_names = file_names if file_names is not None else list(self.classes)
        source = names_file if file_names is not None else "the class list"

        images = sorted(
            (p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()),
            key=lambda p: p.relative_to(root).as_posix(),
        )
        if not images:
            raise DataError(f"{root}: no images found (extensions: {', '.join(IMAGE_EXTENSIONS)})")
        log = ProblemLog(strict)
        self.image_files: list[Path] = []
        self.label_files: list[Path | None] = []
        self._annotations: list[Annotation] = []
        warned: set[int] = set()
        for image in images:
            try:
                h, w = self.image_reader.size(image)
            except ProblemError as exc:
                log.add(image, exc.problem.message, exc.problem.kind)
                continue
            label_file = label_file_for(image)
            boxes, labels = [], []
            if label_file is not None:
                for cls, box, n in parse_yolo_lines(label_file, h, w, log):
                    if cls >= len(index_names):
                        log.add(label_file, f"class index {cls} but {source} has "
                                f"{len(index_names)} names", UNKNOWN_CLASS, line=n)
                        continue
                    label = label_of.get(index_names[cls], 0)
                    if label == 0:
                        name = index_names[cls]
                        if unknown_classes == "skip":
                            if cls not in warned:
                                log.add(label_file, f"class {name!r} is not in the class list; "
                                        "its boxes are skipped", UNKNOWN_CLASS, line=n, fatal=False)
                                warned.add(cls)
                        else:
                            log.add(label_file, f"class {name!r} (index {cls}) is not in the "
                                    f"class list ({', '.join(self.classes)})", UNKNOWN_CLASS,
                                    line=n)
                        continue
                    boxes.append(box)
                    labels.append(label)
            self._annotations.append(Annotation(
                image_id=len(self._annotations), file_name=str(image), height=h, width=w,
                boxes=np.asarray(boxes, np.float32).reshape(-1, 4),
                labels=np.asarray(labels, np.int64),
            ))
            self.image_files.append(image)
            self.label_files.append(label_file)
        self.problems: list[Problem] = log.problems

    def __len__(self) -> int:
        return len(self._annotations)

    def __repr__(self) -> str:
        return f"FolderDataset({str(self.root)!r}, {len(self)} images, {len(self.classes)} classes)"

    def annotation(self, index: int) -> Annotation:
        return self._annotations[index].copy()

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict]:
        return load_sample(self.image_files[index], self._annotations[index], self.image_reader)
