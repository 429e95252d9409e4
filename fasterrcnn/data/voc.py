"""PASCAL VOC annotations: a devkit year folder, or a flat folder of images with an XML beside each.

Layouts (chosen automatically from ``root``):
  * devkit year folder (``VOCdevkit/VOC2007``): ``Annotations/<id>.xml``, ``JPEGImages/``,
    ``ImageSets/Main/<split>.txt`` listing the ids of the split;
  * flat folder (LabelImg / CVAT "PASCAL VOC" export): ``*.xml`` directly in ``root``, each
    beside its image; ``split`` is ignored. The image is the XML's ``<filename>`` (beside the
    XML, or its ``<path>``); when that is stale (another extension or folder, e.g. the XML
    says ``OSBS_029.tif`` but the file is ``OSBS_029.png``) it is the XML's own stem, or the
    ``<filename>`` stem, with any common image extension. An XML without objects marks an
    image with no objects. An image without any XML (LabelImg writes none for an image left
    without boxes, but the image may also not be annotated yet) is taken as
    ``unannotated`` (``--unannotated-images``) says: ``"skip"`` (default) leaves it out as not
    annotated yet, ``"negative"`` uses it as an image with no objects, ``"error"`` makes it a
    problem (``missing_annotation``). Either way the count is in ``notes`` (and so in
    ``check-data``'s report) and logged.

Coordinates: VOC stores 1-based inclusive pixel indices; a box over pixel columns
``xmin..xmax`` (1-based) is ``[xmin - 1, ymin - 1, xmax, ymax]`` in the package's continuous
xyxy convention. Fractional values (some tools write them) are accepted as they are.

Image size: ``<size>`` when it holds positive numbers, else the image header (no decode).

Classes: ``classes=None`` takes the sorted set of names found in the split's XMLs. Sorted order
is also the standard order of :data:`VOC_CLASSES` (which is alphabetical), so the full VOC data
gets the usual labels 1..20. Datasets that must share labels (a model's train and test sets)
should pass the same ``classes``: a test split may lack a class. With ``classes`` given, an
object of any other class is a problem (``unknown_classes="error"``) or is skipped with a
logged warning (``unknown_classes="skip"``).

``difficult`` objects are kept and marked (``keep_difficult=False`` drops them); ``truncated``,
``pose``, ``occluded`` and ``<part>`` elements are read leniently and not used.

Problems (malformed XML, empty file, missing image, bad box, unknown class) raise DataError
naming the file and object in strict mode; with ``strict=False`` they are collected in
``problems`` and the bad object / image is left out (see :mod:`fasterrcnn.data.check`).
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from fasterrcnn.data.dataset import Annotation, DataError
from fasterrcnn.data.images import DEFAULT_READER, ImageReader, load_sample
from fasterrcnn.data.problems import (
    EMPTY_ANNOTATION, IMAGE_EXTENSIONS, MALFORMED, MISSING_ANNOTATION, MISSING_IMAGE,
    UNKNOWN_CLASS, Problem, ProblemError, ProblemLog, box_issues, find_image,
    stem_candidates,
)

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)

UNKNOWN_CLASS_MODES = ("error", "skip")
UNANNOTATED_MODES = ("skip", "negative", "error")


@dataclass
class VOCObject:
    """One ``<object>`` as read from the XML (box already in continuous xyxy)."""

    name: str
    box: tuple[float, float, float, float]
    difficult: bool = False
    truncated: bool = False
    pose: str = "Unspecified"


@dataclass
class VOCRecord:
    """One parsed annotation file."""

    xml: Path
    filename: str | None
    path: str | None  # <path> (LabelImg writes the absolute image path)
    width: int | None  # from <size>, None when missing or not positive
    height: int | None
    objects: list[VOCObject] = field(default_factory=list)


def _text(el: ET.Element, tag: str) -> str | None:
    t = el.findtext(tag)
    return t.strip() if t is not None else None


def _positive_int(text: str | None) -> int | None:
    try:
        v = float(text) if text is not None else 0.0
    except ValueError:
        return None
    return int(round(v)) if math.isfinite(v) and v >= 1 else None


def _flag(text: str | None) -> bool | None:
    """VOC 0/1 flags; None when unreadable."""
    if text is None or text == "":
        return False
    t = text.strip().lower()
    if t in ("true", "yes"):
        return True
    if t in ("false", "no"):
        return False
    try:
        return float(t) != 0.0
    except ValueError:
        return None


def parse_voc_xml(xml: Path, log: ProblemLog) -> VOCRecord | None:
    """Parse one VOC XML; problems go to ``log``. None when the file cannot be used at all;
    bad objects are left out of the record."""
    try:
        data = xml.read_bytes()
    except OSError as exc:
        log.add(xml, f"cannot read annotation file ({exc})", MALFORMED)
        return None
    if not data.strip():
        log.add(xml, "empty annotation file", EMPTY_ANNOTATION)
        return None
    try:
        root = ET.fromstring(data)
    except ET.ParseError as exc:
        log.add(xml, f"malformed XML ({exc})", MALFORMED, line=exc.position[0])
        return None
    if root.tag != "annotation":
        log.add(xml, f"not a VOC annotation: root element is <{root.tag}>, expected <annotation>",
                MALFORMED)
        return None
    size = root.find("size")
    rec = VOCRecord(
        xml=xml,
        filename=_text(root, "filename") or None,
        path=_text(root, "path") or None,
        width=_positive_int(_text(size, "width")) if size is not None else None,
        height=_positive_int(_text(size, "height")) if size is not None else None,
    )
    for k, obj in enumerate(root.findall("object")):
        name = _text(obj, "name")
        where = f"object {k}" + (f" ({name!r})" if name else "")
        if not name:
            log.add(xml, f"{where}: missing <name>", MALFORMED)
            continue
        bndbox = obj.find("bndbox")
        if bndbox is None:
            log.add(xml, f"{where}: missing <bndbox>", MALFORMED)
            continue
        coords: list[float] = []
        for tag in ("xmin", "ymin", "xmax", "ymax"):
            text = _text(bndbox, tag)
            try:
                coords.append(float(text))  # type: ignore[arg-type]
            except (TypeError, ValueError):
                shown = "missing" if text is None else f"{text!r}, not a number"
                log.add(xml, f"{where}: <{tag}> is {shown}", MALFORMED)
                break
        if len(coords) < 4:
            continue
        difficult = _flag(_text(obj, "difficult"))
        if difficult is None:
            log.add(xml, f"{where}: <difficult> is {_text(obj, 'difficult')!r}, expected 0 or 1",
                    MALFORMED)
            continue
        xmin, ymin, xmax, ymax = coords
        rec.objects.append(VOCObject(
            name=name,
            box=(xmin - 1.0, ymin - 1.0, xmax, ymax),
            difficult=difficult,
            truncated=bool(_flag(_text(obj, "truncated"))),
            pose=_text(obj, "pose") or "Unspecified",
        ))
    return rec


def _split_ids(root: Path, split: str) -> tuple[Path, list[str]]:
    main = root / "ImageSets" / "Main"
    split_file = main / f"{split}.txt"
    if not split_file.is_file():
        found = sorted(p.stem for p in main.glob("*.txt") if "_" not in p.stem)
        hint = f"; splits found: {', '.join(found)}" if found else ""
        raise DataError(f"{split_file}: VOC split file not found{hint}")
    try:
        lines = split_file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{split_file}: cannot read split file ({exc})") from None
    return split_file, [ln.split()[0] for ln in lines if ln.strip()]


def _image_candidates(rec: VOCRecord, folder: Path, stem: str) -> list[Path]:
    out: list[Path] = []
    if rec.filename:
        out += [folder / rec.filename, folder / Path(rec.filename).name]
    if rec.path:
        out.append(Path(rec.path))
    out += stem_candidates(folder, stem)
    if rec.filename:
        out += stem_candidates(folder, Path(rec.filename).stem)
    return out


class VOCDataset:
    """PASCAL VOC detection data (a :class:`~fasterrcnn.data.dataset.DetectionDataset`).

    Attributes: ``classes``, ``ids`` (image ids / XML stems), ``xml_files``, ``image_files``,
    ``problems`` (lenient mode), ``layout`` (``"devkit"`` or ``"flat"``).
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "trainval",
        classes: Sequence[str] | None = None,
        *,
        keep_difficult: bool = True,
        unknown_classes: str = "error",
        strict: bool = True,
        images: ImageReader = DEFAULT_READER,
        unannotated: str = "skip",
    ) -> None:
        root = Path(root)
        if unknown_classes not in UNKNOWN_CLASS_MODES:
            raise DataError(
                f"unknown_classes must be one of {UNKNOWN_CLASS_MODES}, got {unknown_classes!r}"
            )
        if unannotated not in UNANNOTATED_MODES:
            raise DataError(
                f"unannotated must be one of {UNANNOTATED_MODES}, got {unannotated!r}"
            )
        self.image_reader = images
        self.notes: list[str] = []
        if not root.is_dir():
            raise DataError(f"{root}: VOC folder not found")
        self.root = root
        self.split = split
        self.keep_difficult = keep_difficult
        log = ProblemLog(strict)
        if (root / "Annotations").is_dir():
            self.layout = "devkit"
            split_file, ids = _split_ids(root, split)
            xmls = [root / "Annotations" / f"{i}.xml" for i in ids]
            image_folder = root / "JPEGImages"
        else:
            self.layout = "flat"
            xmls = sorted(root.glob("*.xml"))
            ids = [p.stem for p in xmls]
            image_folder = root
            if not xmls:
                years = sorted(p.name for p in root.glob("VOC*") if (p / "Annotations").is_dir())
                hint = (f"; it looks like a VOCdevkit folder, use {root / years[0]}" if years
                        else "; expected Annotations/ (devkit year folder) or *.xml beside images")
                raise DataError(f"{root}: no VOC annotations found{hint}")

        records: list[tuple[str, VOCRecord, Path, int, int]] = []
        for id_, xml in zip(ids, xmls):
            if not xml.is_file():
                log.add(xml, f"annotation file not found (image id {id_!r} of split "
                             f"{split!r})", MISSING_ANNOTATION)
                continue
            rec = parse_voc_xml(xml, log)
            if rec is None:
                continue
            image = find_image(_image_candidates(rec, image_folder, id_))
            if image is None:
                named = rec.filename or f"{id_}.*"
                log.add(xml, f"image {named!r} not found in {image_folder}", MISSING_IMAGE)
                continue
            if rec.width is not None and rec.height is not None:
                h, w = rec.height, rec.width
            else:
                try:
                    h, w = images.size(image)
                except ProblemError as exc:
                    log.add(xml, f"<size> missing and the image is unreadable: {exc}",
                            exc.problem.kind)
                    continue
            records.append((id_, rec, image, h, w))
        if self.layout == "flat":
            records += self._unannotated(root, {r[2].resolve() for r in records}, unannotated, log)

        if classes is None:
            names = sorted({o.name for _, rec, _, _, _ in records for o in rec.objects})
        else:
            names = [str(c) for c in classes]
            if len(set(names)) != len(names):
                raise DataError(f"duplicate class names in {names}")
        self.classes: tuple[str, ...] = tuple(names)
        index = {n: j + 1 for j, n in enumerate(self.classes)}

        self.ids: list[str] = []
        self.xml_files: list[Path] = []
        self.image_files: list[Path] = []
        self._annotations: list[Annotation] = []
        skipped: Counter[str] = Counter()
        for id_, rec, image, h, w in records:
            boxes, labels, difficult = [], [], []
            bad = {k: (kind, msg) for k, kind, msg in box_issues(
                np.asarray([o.box for o in rec.objects], np.float64).reshape(-1, 4), h, w)}
            for k, o in enumerate(rec.objects):
                if o.name not in index:
                    if unknown_classes == "skip":
                        if skipped[o.name] == 0:
                            log.add(rec.xml, f"object {k}: class {o.name!r} is not in the class "
                                    "list; objects of this class are skipped", UNKNOWN_CLASS,
                                    fatal=False)
                        skipped[o.name] += 1
                    else:
                        log.add(rec.xml, f"object {k}: unknown class {o.name!r} (classes: "
                                f"{', '.join(self.classes)})", UNKNOWN_CLASS)
                    continue
                if k in bad:
                    log.add(rec.xml, f"object {k} ({o.name!r}): {bad[k][1]}", bad[k][0])
                    continue
                if o.difficult and not keep_difficult:
                    continue
                boxes.append(o.box)
                labels.append(index[o.name])
                difficult.append(o.difficult)
            self._annotations.append(Annotation(
                image_id=len(self._annotations), file_name=str(image), height=h, width=w,
                boxes=np.asarray(boxes, np.float32).reshape(-1, 4),
                labels=np.asarray(labels, np.int64), difficult=np.asarray(difficult, bool),
            ))
            self.ids.append(id_)
            self.xml_files.append(rec.xml)
            self.image_files.append(image)
        self.problems: list[Problem] = log.problems

    def _unannotated(
        self, root: Path, used: set[Path], mode: str, log: ProblemLog
    ) -> list[tuple[str, VOCRecord, Path, int, int]]:
        """Images of a flat folder that no XML names: left out, used as negatives, or problems."""
        lonely = sorted(p for p in root.iterdir()
                        if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
                        and p.resolve() not in used and not p.with_suffix(".xml").is_file())
        if not lonely:
            return []
        names = ", ".join(p.name for p in lonely[:5]) + (", ..." if len(lonely) > 5 else "")
        other = "--unannotated-images negative uses them as images with no objects (LabelImg " \
                "writes no XML for an image without boxes), error refuses them"
        if mode == "error":
            for p in lonely:
                log.add(p, f"no annotation file: no XML in {root} names this image (pass "
                        "--unannotated-images skip to leave such images out, or negative to use "
                        "them as images with no objects)", MISSING_ANNOTATION)
            return []
        if mode == "skip":
            note = (f"{root}: {len(lonely)} image(s) without an XML left out as not annotated "
                    f"yet ({names}); {other}")
            self.notes.append(note)
            return []
        out = []
        for p in lonely:
            try:
                h, w = self.image_reader.size(p)
            except ProblemError as exc:
                log.add(p, exc.problem.message, exc.problem.kind)
                continue
            out.append((p.stem, VOCRecord(xml=p.with_suffix(".xml"), filename=p.name, path=None, width=w, height=h),
                        p, h, w))
        note = (f"{root}: {len(lonely)} image(s) without an XML used as images with no objects "
                f"({names}; --unannotated-images negative)")
        self.notes.append(note)
        return out

    def __len__(self) -> int:
        return len(self._annotations)

    def __repr__(self) -> str:
        return (f"VOCDataset({str(self.root)!r}, split={self.split!r}, {len(self)} images, "
                f"{len(self.classes)} classes)")

    def annotation(self, index: int) -> Annotation:
        return self._annotations[index].copy()

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict]:
        return load_sample(self.image_files[index], self._annotations[index], self.image_reader)

