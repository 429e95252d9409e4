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

One XML file is parsed by :mod:`fasterrcnn.data.voc_xml`; the flat folder's XMLs and its images
without an XML are found by :mod:`fasterrcnn.data.voc_flat`.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from fasterrcnn.data.dataset import Annotation, DataError
from fasterrcnn.data.images import DEFAULT_READER, ImageReader, load_sample
from fasterrcnn.data.problems import (
    MISSING_ANNOTATION, MISSING_IMAGE, UNKNOWN_CLASS, Problem, ProblemError, ProblemLog,
    box_issues, find_image, stem_candidates,
)
from fasterrcnn.data.voc_flat import (
    UNANNOTATED_MODES, ImageEntry, flat_annotation_files, unannotated_images,
)
from fasterrcnn.data.voc_xml import VOCRecord, parse_voc_xml

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)

UNKNOWN_CLASS_MODES = ("error", "skip")


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
            xmls = flat_annotation_files(root)
            ids = [p.stem for p in xmls]
            image_folder = root

        records: list[ImageEntry] = []
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
            extra, notes = unannotated_images(
                root, {r[2].resolve() for r in records}, unannotated, log, images)
            records += extra
            self.notes += notes

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

    def __len__(self) -> int:
        return len(self._annotations)

    def __repr__(self) -> str:
        return (f"VOCDataset({str(self.root)!r}, split={self.split!r}, {len(self)} images, "
                f"{len(self.classes)} classes)")

    def annotation(self, index: int) -> Annotation:
        return self._annotations[index].copy()

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict]:
        return load_sample(self.image_files[index], self._annotations[index], self.image_reader)

