"""COCO "instances" annotations (one JSON file) plus a folder of images.

Read from the JSON: ``images`` (``id``, ``file_name`` relative to ``images_dir``, ``width``,
``height``), ``annotations`` (``image_id``, ``category_id``, ``bbox`` = ``[x, y, w, h]``,
``iscrowd``; optional, so image-info files without annotations load) and ``categories``
(``id``, ``name``). ``info``, ``licenses``, ``segmentation`` and ``area`` are not used.

* ``bbox`` ``[x, y, w, h]`` (already continuous pixel coordinates) becomes xyxy
  ``[x, y, x + w, y + h]``;
* ``iscrowd`` boxes are kept and marked (the trainer ignores them; evaluation treats them as
  COCO does); a non-standard ``"difficult": 1`` key (written by :func:`export_coco` for VOC
  difficult objects) is read back into ``difficult``;
* category ids (often with gaps, e.g. 1, 3, 7) map to labels 1..K in increasing id order, with
  class names from the categories; ``category_ids[label - 1]`` maps a label back to its id.
  With ``classes`` given, categories map to labels by name; ``category_ids`` then holds -1 for
  a class that has no category in this file;
* images come in file order, including images without annotations; ``image_id`` in each
  :class:`Annotation` is the COCO image id.

Problems (invalid JSON, missing keys, bad entries, missing images, bad boxes, unknown classes)
raise DataError naming the file and the entry (``annotations[17] (id 1234)``) in strict mode;
with ``strict=False`` they are collected in ``problems`` and the entry is left out.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from fasterrcnn.data.dataset import Annotation, DataError
from fasterrcnn.data.images import DEFAULT_READER, ImageReader, load_sample
from fasterrcnn.data.problems import (
    MALFORMED, MISSING_IMAGE, UNKNOWN_CLASS, Problem, ProblemError, ProblemLog, box_issue,
    problem_error,
)

UNKNOWN_CLASS_MODES = ("error", "skip")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _entry(section: str, k: int, entry: Any) -> str:
    if isinstance(entry, dict) and "id" in entry:
        return f"{section}[{k}] (id {entry['id']!r})"
    return f"{section}[{k}]"


def load_coco_json(path: Path) -> dict:
    """The parsed JSON object; DataError naming the file (and line / column when invalid)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{path}: COCO annotation file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read COCO annotation file ({exc})") from None
    if not text.strip():
        raise problem_error(path, "empty annotation file", MALFORMED)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise problem_error(path, f"invalid JSON ({exc.msg}, column {exc.colno})", MALFORMED,
                            line=exc.lineno) from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object at the top, got {type(data).__name__}")
    for key in ("images", "categories"):
        if not isinstance(data.get(key), list):
            got = "missing" if key not in data else f"a {type(data[key]).__name__}"
            raise DataError(f"{path}: top-level key {key!r} must be a list, but it is {got}")
    if not isinstance(data.get("annotations", []), list):
        raise DataError(f"{path}: top-level key 'annotations' must be a list")
    return data


class COCODataset:
    """COCO detection data (a :class:`~fasterrcnn.data.dataset.DetectionDataset`).

    Attributes: ``classes``, ``category_ids``, ``image_ids`` (COCO ids, dataset order),
    ``image_files``, ``annotations_json``, ``images_dir``, ``problems`` (lenient mode).
    """

    def __init__(
        self,
        annotations_json: str | Path,
        images_dir: str | Path,
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
        path = Path(annotations_json)
        self.annotations_json = path
        self.images_dir = Path(images_dir)
        self.image_reader = images
        if not self.images_dir.is_dir():
            raise DataError(f"{self.images_dir}: COCO images folder not found")
        log = ProblemLog(strict)
        try:
            data = load_coco_json(path)
        except DataError as exc:
            if strict:
                raise
            problem = (exc.problem if isinstance(exc, ProblemError)
                       else Problem(str(path), str(exc).removeprefix(f"{path}: "), MALFORMED))
            log.problems.append(problem)
            data = {"images": [], "categories": [], "annotations": []}

        # categories
        cat_names: dict[int, str] = {}
        for k, c in enumerate(data["categories"]):
            where = _entry("categories", k, c)
            if not (isinstance(c, dict) and _is_int(c.get("id"))
                    and isinstance(c.get("name"), str)):
                log.add(path, f"{where}: needs an integer 'id' and a string 'name'", MALFORMED)
            elif c["id"] in cat_names:
                log.add(path, f"{where}: duplicate category id", MALFORMED)
            elif c["name"] in cat_names.values():
                log.add(path, f"{where}: duplicate category name {c['name']!r}", MALFORMED)
            else:
                cat_names[c["id"]] = c["name"]
        if classes is None:
            ids_sorted = sorted(cat_names)
            self.classes: tuple[str, ...] = tuple(cat_names[i] for i in ids_sorted)
            self.category_ids: tuple[int, ...] = tuple(ids_sorted)
        else:
            self.classes = tuple(str(c) for c in classes)
            if len(set(self.classes)) != len(self.classes):
                raise DataError(f"duplicate class names in {list(self.classes)}")
            by_name = {n: i for i, n in cat_names.items()}
            self.category_ids = tuple(by_name.get(n, -1) for n in self.classes)
        label_of = {n: j + 1 for j, n in enumerate(self.classes)}
        cat_label = {i: label_of.get(n, 0) for i, n in cat_names.items()}

        # images
        images: dict[int, tuple[Path, int, int]] = {}
        order: list[int] = []
        known_ids: set[int] = set()
        for k, im in enumerate(data["images"]):
            where = _entry("images", k, im)
            if not isinstance(im, dict):
                log.add(path, f"{where}: expected an object", MALFORMED)
                continue
            missing = [key for key in ("id", "file_name", "width", "height") if key not in im]
            if missing:
                log.add(path, f"{where}: missing key(s) {', '.join(missing)}", MALFORMED)
                continue
            if not _is_int(im["id"]) or not isinstance(im["file_name"], str):
                log.add(path, f"{where}: 'id' must be an integer and 'file_name' a string",
                        MALFORMED)
                continue
            if im["id"] in known_ids:
                log.add(path, f"{where}: duplicate image id", MALFORMED)
                continue
            known_ids.add(im["id"])
            w, h = im["width"], im["height"]
            if not all(_is_number(v) and v >= 1 and v == int(v) for v in (w, h)):
                log.add(path, f"{where}: width and height must be positive integers, got "
                        f"{w!r}, {h!r}", MALFORMED)
                continue
            file = self.images_dir / im["file_name"]
            if not file.is_file():
                log.add(path, f"{where}: image {str(file)!r} not found", MISSING_IMAGE)
                continue
            images[im["id"]] = (file, int(h), int(w))
            order.append(im["id"])

        # annotations
        objects: dict[int, list[tuple[list[float], int, bool, bool]]] = {i: [] for i in order}
        skipped: Counter[int] = Counter()
        for k, a in enumerate(data.get("annotations", [])):
            where = _entry("annotations", k, a)
            if not isinstance(a, dict):
                log.add(path, f"{where}: expected an object", MALFORMED)
                continue
            missing = [key for key in ("image_id", "category_id", "bbox") if key not in a]
            if missing:
                log.add(path, f"{where}: missing key(s) {', '.join(missing)}", MALFORMED)
                continue
            img_id, cat_id, bbox = a["image_id"], a["category_id"], a["bbox"]
            if img_id not in known_ids:
                log.add(path, f"{where}: image_id {img_id!r} is not in 'images'", MALFORMED)
                continue
            if img_id not in images:
                continue  # the image itself was left out (its problem is already recorded)
            if cat_id not in cat_names:
                log.add(path, f"{where}: category_id {cat_id!r} is not in 'categories'",
                        UNKNOWN_CLASS)
                continue
            if cat_label[cat_id] == 0:
                name = cat_names[cat_id]
                if unknown_classes == "skip":
                    if skipped[cat_id] == 0:
                        log.add(path, f"{where}: category {name!r} is not in the class list; its "
                                "annotations are skipped", UNKNOWN_CLASS, fatal=False)
                    skipped[cat_id] += 1
                else:
                    log.add(path, f"{where}: category {name!r} (id {cat_id}) is not in the class "
                            f"list ({', '.join(self.classes)})", UNKNOWN_CLASS)
                continue
            if not (isinstance(bbox, (list, tuple)) and len(bbox) == 4
                    and all(_is_number(v) for v in bbox)):
                log.add(path, f"{where}: bbox must be 4 finite numbers [x, y, w, h], got {bbox!r}",
                        MALFORMED)
                continue
            crowd = a.get("iscrowd", 0)
            if crowd not in (0, 1) or (not _is_int(crowd) and not isinstance(crowd, bool)):
                log.add(path, f"{where}: iscrowd must be 0 or 1, got {crowd!r}", MALFORMED)
                continue
            x, y, w, h = (float(v) for v in bbox)
            box = [x, y, x + w, y + h]
            _, ih, iw = images[img_id]
            issue = box_issue(box, ih, iw)
            if issue is not None:
                log.add(path, f"{where}: image {img_id}: {issue[1]} (bbox {bbox})", issue[0])
                continue
            difficult = bool(a.get("difficult", 0))
            objects[img_id].append((box, cat_label[cat_id], difficult, bool(crowd)))

        self.image_ids: list[int] = order
        self.image_files: list[Path] = [images[i][0] for i in order]
        self._annotations: list[Annotation] = []
        for i in order:
            file, h, w = images[i]
            objs = objects[i]
            self._annotations.append(Annotation(
                image_id=i, file_name=str(file), height=h, width=w,
                boxes=np.asarray([o[0] for o in objs], np.float32).reshape(-1, 4),
                labels=np.asarray([o[1] for o in objs], np.int64),
                difficult=np.asarray([o[2] for o in objs], bool),
                iscrowd=np.asarray([o[3] for o in objs], bool),
            ))
        self.problems: list[Problem] = log.problems

    def __len__(self) -> int:
        return len(self._annotations)

    def __repr__(self) -> str:
        return (f"COCODataset({str(self.annotations_json)!r}, {str(self.images_dir)!r}, "
                f"{len(self)} images, {len(self.classes)} classes)")

    def annotation(self, index: int) -> Annotation:
        return self._annotations[index].copy()

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict]:
        return load_sample(self.image_files[index], self._annotations[index], self.image_reader)
