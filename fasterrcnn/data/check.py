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

Problem kinds: see :data:`~fasterrcnn.data.problems.PROBLEM_KINDS`. A :class:`Problem` with ``index`` set concerns image
``index`` of the dataset as it stands (``obj`` set: object ``obj`` of ``dataset.annotation(index)``;
``obj`` unset: the whole image); reader problems have ``index=None`` because the reader already
left the bad part out.

The report itself (statistics, anchor coverage, the text) and :func:`sanitize` live in
:mod:`fasterrcnn.data.check_report`; the problem kinds, :class:`Problem` and the helpers the
readers share in :mod:`fasterrcnn.data.problems`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

from fasterrcnn.config import AnchorConfig, InputConfig
from fasterrcnn.data.check_report import CheckReport, build_report, sanitize
from fasterrcnn.data.dataset import Annotation, DataError, DetectionDataset
from fasterrcnn.data.images import DEFAULT_READER, ImageReader, mismatch_message
from fasterrcnn.data.problems import (
    BOX_TOLERANCE, CORRUPT_IMAGE, MALFORMED, MISSING_IMAGE, SIZE_MISMATCH, UNKNOWN_CLASS, Problem,
    ProblemError, box_issues, collect_notes, collect_problems,
)

__all__ = [
    "ON_BAD_DATA", "check_dataset", "check_image_file", "count_objects", "open_dataset",
    "prepare_dataset", "read_image_size",
]

logger = logging.getLogger("fasterrcnn.data")

MAX_NOTES_PER_KIND = 20  # mapped / EXIF-turned images listed by name in a report


def read_image_size(path: str | Path, reader: ImageReader = DEFAULT_READER) -> tuple[int, int]:
    """(height, width) from the image header (no full decode), as ``reader`` loads it."""
    return reader.size(path)


def check_image_file(
    path: Path, height: int, width: int, decode: bool = True,
    reader: ImageReader = DEFAULT_READER, notes: list[tuple[str, str]] | None = None,
) -> list[tuple[str, str]]:
    """``(kind, message)`` problems of one image file: missing, unreadable, too large, size
    mismatch. With ``decode`` the pixels are decoded too so that truncated files are found.
    ``notes`` receives ``(kind, text)`` for what the reader does on purpose to this file:
    ``("exif", ...)`` for an EXIF turn it applies, ``("mapped", ...)`` for a high-bit-depth
    value mapping."""
    try:
        info = reader.inspect(path, decode)
    except ProblemError as exc:
        return [(exc.problem.kind, exc.problem.message)]
    except DataError as exc:
        return [(CORRUPT_IMAGE, str(exc))]
    if notes is not None:
        if info.orientation != 1 and reader.exif == "apply":
            notes.append(("exif", f"{path}: EXIF orientation {info.orientation} applied"))
        if info.mapping:
            notes.append(("mapped", f"{path}: {info.mapping}"))
    if (info.height, info.width) != (height, width):
        return [(SIZE_MISMATCH, mismatch_message(info, height, width, reader))]
    return []


# --------------------------------------------------------------------------- checking a dataset


def open_dataset(
    data: str | DetectionDataset,
    classes: Sequence[str] | None = None,
    strict: bool = False,
    *,
    images: ImageReader | None = None,
    unannotated: str = "skip",
) -> tuple[DetectionDataset, str]:
    """``(dataset, source text)`` for a data spec (opened leniently by default) or a dataset."""
    if isinstance(data, str):
        from fasterrcnn.data.spec import parse_data_spec

        ds = parse_data_spec(data, classes=classes, strict=strict,
                             images=images or DEFAULT_READER, unannotated=unannotated)
        return ds, data
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
    images: ImageReader | None = None,
    unannotated: str = "skip",
) -> CheckReport:
    """Check a data spec (``"voc:..."``, read leniently) or a dataset; list every problem.

    Checks: the readers' problems (malformed / empty / missing annotation files, unknown
    classes, bad boxes), then per image: the image file exists and can be read (``decode_images``
    decodes the pixels, finding truncated files; otherwise only the header is read), it is not
    over the reader's pixel ceiling, its size agrees with the annotation (naming EXIF
    orientation when that is the cause), boxes are inside the image (``tolerance`` px) and not
    degenerate, labels are in 1..K. Images whose ``file_name`` is not a file (e.g. synthetic
    data) are produced with ``dataset[i]`` instead when ``decode_images``.

    ``classes``, ``images`` (the :class:`~fasterrcnn.data.images.ImageReader`; default: the
    dataset's own, else the default rules) and ``unannotated`` (flat VOC folders: images
    without an XML) are passed to the readers when ``data`` is a spec.

    The report's ``notes`` list what was done on purpose: the readers' notes (images without an
    annotation file), images turned by their EXIF orientation, high-bit-depth images and how
    their values were mapped.

    Statistics: counts per class, box statistics, and the coverage of the anchors in
    ``anchors`` (default: the paper's) on boxes resized as ``input_cfg`` (default 600 / 1000)
    resizes each whole image, or, with ``crop``, as it resizes a ``crop`` x ``crop`` window (training
    on random crops and sliced inference see large photos that way).
    """
    ds, source = open_dataset(data, classes, images=images, unannotated=unannotated)
    reader = images or getattr(ds, "image_reader", None) or DEFAULT_READER
    anchors = anchors or AnchorConfig()
    input_cfg = input_cfg or InputConfig()
    problems = collect_problems(ds)
    file_notes: list[tuple[str, str]] = []
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
        problems.extend(_image_problems(ds, i, ann, decode_images, reader, file_notes))
    report = build_report(source, ds.classes, len(ds), anns, problems, anchors, input_cfg, crop)
    report.notes = collect_notes(ds) + _summarise_notes(file_notes, reader)
    return report


def _summarise_notes(notes: list[tuple[str, str]], reader: ImageReader) -> list[str]:
    out: list[str] = []
    for kind, title in (
        ("exif", "turned by their EXIF orientation as viewers show them (--exif apply; "
                 "--exif ignore uses the raw pixel grid)"),
        ("mapped", f"of high bit depth, mapped to 0..255 (--high-bit-depth {reader.high_bit})"),
    ):
        lines = [text for k, text in notes if k == kind]
        if not lines:
            continue
        out.append(f"{len(lines)} image(s) {title}:")
        out.extend(f"  {t}" for t in lines[:MAX_NOTES_PER_KIND])
        if len(lines) > MAX_NOTES_PER_KIND:
            out.append(f"  ... and {len(lines) - MAX_NOTES_PER_KIND} more")
    return out


def _image_problems(
    ds: DetectionDataset, i: int, ann: Annotation, decode: bool, reader: ImageReader,
    notes: list[tuple[str, str]],
) -> list[Problem]:
    path = Path(ann.file_name)
    if path.is_file():
        return [
            Problem(ann.file_name, msg, kind, index=i)
            for kind, msg in check_image_file(path, ann.height, ann.width, decode, reader, notes)
        ]
    if not decode:
        return []
    try:
        image, _ = ds[i]
    except ProblemError as exc:
        return [Problem(ann.file_name, exc.problem.message, exc.problem.kind, index=i)]
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


def count_objects(dataset: DetectionDataset) -> int:
    """Objects (boxes) in ``dataset``, from its annotations (no image is decoded)."""
    return sum(len(dataset.annotation(i).boxes) for i in range(len(dataset)))


def prepare_dataset(
    data: str | DetectionDataset,
    *,
    on_bad_data: str = "error",
    classes: Sequence[str] | None = None,
    decode_images: bool = True,
    anchors: AnchorConfig | None = None,
    input_cfg: InputConfig | None = None,
    log: logging.Logger | None = None,
    images: ImageReader | None = None,
    unannotated: str = "skip",
) -> tuple[DetectionDataset, CheckReport]:
    """Open and check ``data`` for training; ``(dataset, report)``.

    ``on_bad_data="error"``: any problem raises :class:`DataError` whose message is the full
    report. ``"skip"``: the bad images / boxes are dropped (:func:`sanitize`) with a logged
    warning each; ``report.used_images`` / ``report.used_objects`` then count what is left.
    The report's notes are logged as warnings. DataError too when nothing usable is left: no
    image, no class, or not a single object (a detector cannot learn from that).
    """
    if on_bad_data not in ON_BAD_DATA:
        raise DataError(f"on_bad_data must be one of {ON_BAD_DATA}, got {on_bad_data!r}")
    log = log or logger
    ds, source = open_dataset(data, classes, images=images, unannotated=unannotated)
    report = check_dataset(
        ds, decode_images=decode_images, anchors=anchors, input_cfg=input_cfg, images=images
    )
    report.source = source
    for note in report.notes:
        log.warning("note: %s", note)
    if not report.ok:
        if on_bad_data == "error":
            raise DataError(
                report.format(max_problems=None)
                + "\n(fix the data, or pass --on-bad-data skip to leave the bad parts out)"
            )
        ds = sanitize(ds, report, log)
    report.used_images = len(ds)
    report.used_objects = count_objects(ds)
    if len(ds) == 0:
        raise DataError(f"{source}: no usable images")
    if not ds.classes:
        raise DataError(f"{source}: no object classes found (no image has a box and no class "
                        "list was given): there is nothing to train a detector on")
    if report.used_objects == 0:
        dropped = " after leaving out the bad parts" if not report.ok else ""
        raise DataError(
            f"{source}: none of the {len(ds)} image(s) has an object{dropped}; a detector needs "
            "labelled boxes to learn from (are the annotations in this folder, and in the format "
            "the spec names?)"
        )
    return ds, report
