"""Data specs: one string naming a dataset, as used on the command line.

Forms (several joined with ``+`` read as one dataset, e.g. the paper's VOC 07+12
``voc:VOCdevkit/VOC2007:trainval+voc:VOCdevkit/VOC2012:trainval``):

  * ``voc:ROOT[:SPLIT]`` -- a VOC devkit year folder (split default ``split_default``) or a flat
    folder of images with an XML beside each (see :mod:`fasterrcnn.data.voc`);
  * ``coco:ANNOTATIONS.json:IMAGES_DIR`` -- COCO instances JSON and its images;
  * ``folder:DIR`` -- images with YOLO txt labels and ``classes.txt`` (:mod:`.folder`);
  * ``shapes``, ``shapes:SPLIT``, ``shapes:SPLIT:N`` -- the built-in synthetic data (split
    ``train`` | ``val`` | ``test``; ``shapes`` alone is ``train``; N images, default 800 for
    train and 200 for val / test).

Classes: with ``classes`` given every part uses them. Otherwise parts that all found the same
classes keep them; when they differ the dataset uses the sorted union of their names and each
part's labels are remapped to it by name (:class:`RelabeledDataset`).

Paths containing ``:`` or ``+`` (e.g. Windows drive letters) are not supported.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from fasterrcnn.data.dataset import Annotation, ConcatDataset, DataError, DetectionDataset
from fasterrcnn.data.images import DEFAULT_READER, ImageReader

SHAPES_DEFAULT_SIZES: dict[str, int] = {"train": 800, "val": 200, "test": 200}

SPEC_FORMS = (
    "voc:ROOT[:SPLIT]  (VOC devkit year folder, or folder of images with an XML beside each)",
    "coco:ANNOTATIONS.json:IMAGES_DIR",
    "folder:DIR  (images + YOLO .txt labels + classes.txt)",
    "shapes[:train|val|test[:N]]  (built-in synthetic data)",
    "several of these joined with '+'",
)


def _spec_error(spec: str, why: str) -> DataError:
    forms = "\n  ".join(SPEC_FORMS)
    return DataError(f"bad data spec {spec!r}: {why}; valid forms:\n  {forms}")


class RelabeledDataset:
    """``base`` with its labels remapped by class name to ``classes`` (a superset)."""

    def __init__(self, base: DetectionDataset, classes: Sequence[str]) -> None:
        self.base = base
        self.classes = tuple(classes)
        index = {n: j + 1 for j, n in enumerate(self.classes)}
        missing = [n for n in base.classes if n not in index]
        if missing:
            raise DataError(
                f"{base!r}: classes {missing} are not in the class list {list(self.classes)}"
            )
        self._map = np.asarray([0] + [index[n] for n in base.classes], np.int64)

    def __len__(self) -> int:
        return len(self.base)

    def __repr__(self) -> str:
        return f"RelabeledDataset({self.base!r})"

    def annotation(self, index: int) -> Annotation:
        ann = self.base.annotation(index)
        return dataclasses.replace(ann, labels=self._map[ann.labels])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict]:
        image, target = self.base[index]
        target = dict(target)
        target["labels"] = torch.from_numpy(self._map)[target["labels"]]
        return image, target


def _parse_one(
    part: str, spec: str, classes: Sequence[str] | None, split_default: str, strict: bool,
    images: ImageReader, unannotated: str,
) -> DetectionDataset:
    scheme, sep, rest = part.partition(":")
    scheme = scheme.strip().lower()
    if scheme == "shapes":
        return _shapes(rest if sep else "", spec)
    if not sep or not rest:
        if scheme in ("voc", "coco", "folder"):
            raise _spec_error(spec, f"{scheme!r} needs a path")
        hint = ""
        if Path(part).exists():
            hint = f" (a path: write voc:{part}, folder:{part} or coco:...)"
        raise _spec_error(spec, f"unknown data source {part!r}{hint}")
    if scheme == "voc":
        from fasterrcnn.data.voc import VOCDataset

        root, split = rest, split_default
        if ":" in rest:
            root, split = rest.rsplit(":", 1)
            if not split:
                raise _spec_error(spec, "empty VOC split")
        return VOCDataset(root, split, classes, strict=strict, images=images,
                          unannotated=unannotated)
    if scheme == "coco":
        from fasterrcnn.data.coco import COCODataset

        fields = rest.split(":")
        if len(fields) != 2 or not all(fields):
            raise _spec_error(spec, "coco needs both the annotation JSON and the images folder")
        return COCODataset(fields[0], fields[1], classes, strict=strict, images=images)
    if scheme == "folder":
        from fasterrcnn.data.folder import FolderDataset

        return FolderDataset(rest, classes, strict=strict, images=images)
    raise _spec_error(spec, f"unknown scheme {scheme!r}")


def _shapes(rest: str, spec: str) -> DetectionDataset:
    from fasterrcnn.data.shapes import ShapesDataset

    fields = rest.split(":") if rest else []
    split = fields[0] if fields else "train"
    if split not in SHAPES_DEFAULT_SIZES or len(fields) > 2:
        raise _spec_error(spec, f"shapes split must be one of {sorted(SHAPES_DEFAULT_SIZES)}")
    num = SHAPES_DEFAULT_SIZES[split]
    if len(fields) == 2:
        try:
            num = int(fields[1])
        except ValueError:
            num = -1
        if num < 1:
            raise _spec_error(
                spec, f"shapes image count must be a positive integer, got {fields[1]!r}"
            )
    return ShapesDataset(split=split, num_images=num)


def _with_classes(ds: DetectionDataset, classes: tuple[str, ...]) -> DetectionDataset:
    return ds if tuple(ds.classes) == classes else RelabeledDataset(ds, classes)


def parse_data_spec(
    spec: str,
    *,
    classes: Sequence[str] | None = None,
    split_default: str = "trainval",
    strict: bool = True,
    images: ImageReader = DEFAULT_READER,
    unannotated: str = "skip",
) -> DetectionDataset:
    """The dataset a spec names (see the module docstring). ``strict=False`` opens the readers
    in lenient mode (problems collected, see :mod:`fasterrcnn.data.check`). ``images``: how
    image files are read (:class:`~fasterrcnn.data.images.ImageReader`: EXIF, bit depth, pixel
    ceiling); ``unannotated``: what a flat VOC folder's images without an XML are
    (:class:`~fasterrcnn.data.voc.VOCDataset`)."""
    if not isinstance(spec, str) or not spec.strip():
        raise _spec_error(str(spec), "empty spec")
    parts = [p.strip() for p in spec.split("+")]
    if not all(parts):
        raise _spec_error(spec, "empty part around '+'")
    datasets = [_parse_one(p, spec, classes, split_default, strict, images, unannotated)
                for p in parts]
    if classes is not None:
        wanted = tuple(classes)
        datasets = [_with_classes(d, wanted) for d in datasets]
    elif len({tuple(d.classes) for d in datasets}) > 1:
        union = tuple(sorted({n for d in datasets for n in d.classes}))
        datasets = [_with_classes(d, union) for d in datasets]
    return datasets[0] if len(datasets) == 1 else ConcatDataset(datasets)
