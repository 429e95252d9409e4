"""Writing any dataset as a PASCAL VOC devkit year folder or as COCO instances JSON + images.

Both read back with :class:`~fasterrcnn.data.voc.VOCDataset` / :class:`~.coco.COCODataset`
(``voc:OUT_ROOT:SPLIT``, ``coco:JSON:IMAGES_DIR``), e.g. to train on a VOC-format or COCO-format
copy of the built-in shapes data.

VOC (:func:`export_voc`): ``Annotations/<id>.xml``, ``JPEGImages/<id>.<ext>``,
``ImageSets/Main/<split>.txt`` and the per-class ``ImageSets/Main/<class>_<split>.txt``
(``<id>  1`` present, ``-1`` absent, `` 0`` only difficult) as in the official devkit
(skipped for class names containing a path separator). Image ids
are ``<prefix><index:06d>`` with prefix ``"<split>_"`` by default, so that several splits can
share one folder; a split file is overwritten. VOC stores integer 1-based inclusive pixel
indices, so export rounds each box to whole pixels as VOC does: ``xmin = round(x1) + 1``,
``xmax = round(x2)`` (halves rounded up), clamped to the image and to at least one pixel.
Reading back gives ``[round(x1), round(y1), round(x2), round(y2)]``. COCO crowd boxes (which
VOC cannot express) are written as ``difficult``; pose is ``Unspecified``, truncated ``0``.

COCO (:func:`export_coco`): ``images`` (``id`` 1..N, ``file_name``, ``width``, ``height``),
``annotations`` (``id``, ``image_id``, ``category_id`` = label, ``bbox`` ``[x, y, w, h]``
rounded to 1/100 px, ``area`` = box area, ``iscrowd``, a box-shaped polygon ``segmentation``,
and ``"difficult": 1`` for VOC difficult objects, a non-standard key COCO tools ignore),
``categories`` (``id`` 1..K, ``name``, ``supercategory`` ``"object"``), ``info``, ``licenses``.
Image files are ``<prefix><index:06d>.<ext>`` in ``images_dir`` (prefix: the JSON's stem + ``_``).
Integer boxes round-trip exactly.
"""

from __future__ import annotations

import datetime
import json
import math
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import torch

from fasterrcnn.data.dataset import DataError, DetectionDataset

IMAGE_FORMATS: dict[str, str] = {"jpg": "JPEG", "png": "PNG"}
JPEG_QUALITY = 95


def _half_up(v: float) -> int:
    return int(math.floor(v + 0.5))


def voc_box(box: np.ndarray | list[float], height: int, width: int) -> tuple[int, int, int, int]:
    """Continuous xyxy -> VOC ``(xmin, ymin, xmax, ymax)``, 1-based inclusive integers."""
    x1, y1, x2, y2 = (float(v) for v in box)
    xmin = min(max(_half_up(x1) + 1, 1), width)
    ymin = min(max(_half_up(y1) + 1, 1), height)
    xmax = min(max(_half_up(x2), xmin), width)
    ymax = min(max(_half_up(y2), ymin), height)
    return xmin, ymin, xmax, ymax


def _sample(dataset: DetectionDataset, i: int) -> tuple[np.ndarray, dict]:
    """(HWC uint8 RGB array, target with numpy arrays)."""
    image, target = dataset[i]
    if not isinstance(image, torch.Tensor) or image.ndim != 3 or image.shape[0] != 3:
        raise DataError(f"sample {i}: expected a [3, H, W] image tensor")
    arr = image.detach().cpu()
    if arr.dtype != torch.uint8:
        arr = (arr.float().clamp(0, 1) * 255).round().to(torch.uint8)
    out = {k: (v.cpu().numpy() if isinstance(v, torch.Tensor) else v) for k, v in target.items()}
    n = len(out["boxes"])
    for key in ("difficult", "iscrowd"):
        if key not in out or len(out[key]) != n:
            out[key] = np.zeros(n, bool)
    return arr.permute(1, 2, 0).contiguous().numpy(), out


def _save_image(arr: np.ndarray, path: Path, image_format: str) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(arr, "RGB")
    if image_format == "jpg":
        im.save(path, "JPEG", quality=JPEG_QUALITY)
    else:
        im.save(path, "PNG")


def _check_format(image_format: str) -> str:
    fmt = image_format.lower().lstrip(".")
    fmt = "jpg" if fmt == "jpeg" else fmt
    if fmt not in IMAGE_FORMATS:
        raise DataError(
            f"image_format must be one of {sorted(IMAGE_FORMATS)}, got {image_format!r}"
        )
    return fmt


def _sub(parent: ET.Element, tag: str, text: str | int | None = None) -> ET.Element:
    el = ET.SubElement(parent, tag)
    if text is not None:
        el.text = str(text)
    return el


def voc_xml(
    folder: str,
    filename: str,
    height: int,
    width: int,
    objects: list[tuple[str, tuple[int, int, int, int], bool]],
) -> str:
    """Text of one VOC annotation file (tab-indented like the official ones)."""
    root = ET.Element("annotation")
    _sub(root, "folder", folder)
    _sub(root, "filename", filename)
    source = _sub(root, "source")
    _sub(source, "database", "fasterrcnn export")
    _sub(source, "annotation", "PASCAL VOC")
    _sub(source, "image", "fasterrcnn")
    size = _sub(root, "size")
    _sub(size, "width", width)
    _sub(size, "height", height)
    _sub(size, "depth", 3)
    _sub(root, "segmented", 0)
    for name, (xmin, ymin, xmax, ymax), difficult in objects:
        obj = _sub(root, "object")
        _sub(obj, "name", name)
        _sub(obj, "pose", "Unspecified")
        _sub(obj, "truncated", 0)
        _sub(obj, "difficult", int(difficult))
        bb = _sub(obj, "bndbox")
        for tag, v in (("xmin", xmin), ("ymin", ymin), ("xmax", xmax), ("ymax", ymax)):
            _sub(bb, tag, v)
    ET.indent(root, space="\t")
    return ET.tostring(root, encoding="unicode") + "\n"


def export_voc(
    dataset: DetectionDataset,
    out_root: str | Path,
    split: str = "trainval",
    image_format: str = "jpg",
    prefix: str | None = None,
) -> list[str]:
    """Write ``dataset`` as the ``split`` of a VOC devkit year folder ``out_root``; returns the
    image ids written (see the module docstring for the exact layout and rounding)."""
    fmt = _check_format(image_format)
    out_root = Path(out_root)
    prefix = f"{split}_" if prefix is None else prefix
    ann_dir, img_dir, sets_dir = (
        out_root / "Annotations", out_root / "JPEGImages", out_root / "ImageSets" / "Main",
    )
    for d in (ann_dir, img_dir, sets_dir):
        d.mkdir(parents=True, exist_ok=True)
    classes = list(dataset.classes)
    ids: list[str] = []
    presence: dict[str, list[int]] = {c: [] for c in classes}
    for i in range(len(dataset)):
        arr, t = _sample(dataset, i)
        h, w = arr.shape[:2]
        id_ = f"{prefix}{i:06d}"
        filename = f"{id_}.{fmt}"
        _save_image(arr, img_dir / filename, fmt)
        objects = []
        flags = {c: -1 for c in classes}
        for box, label, diff, crowd in zip(t["boxes"], t["labels"], t["difficult"], t["iscrowd"]):
            if not 1 <= int(label) <= len(classes):
                raise DataError(f"sample {i}: label {int(label)} is not in 1..{len(classes)}")
            name = classes[int(label) - 1]
            hard = bool(diff) or bool(crowd)
            objects.append((name, voc_box(box, h, w), hard))
            flags[name] = max(flags[name], 0 if hard else 1)
        (ann_dir / f"{id_}.xml").write_text(
            voc_xml(out_root.name, filename, h, w, objects), encoding="utf-8"
        )
        ids.append(id_)
        for c in classes:
            presence[c].append(flags[c])
    (sets_dir / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids), encoding="utf-8")
    for c in classes:
        if "/" in c or "\\" in c:  # not a usable file name; these lists are only an extra
            continue
        lines = "".join(f"{id_} {v:>2}\n" for id_, v in zip(ids, presence[c]))
        (sets_dir / f"{c}_{split}.txt").write_text(lines, encoding="utf-8")
    return ids


def _r2(v: float) -> float:
    r = round(float(v), 2)
    return int(r) if r == int(r) else r


def export_coco(
    dataset: DetectionDataset,
    json_path: str | Path,
    images_dir: str | Path,
    image_format: str = "jpg",
    prefix: str | None = None,
) -> dict:
    """Write ``dataset`` as COCO instances JSON ``json_path`` with its images in ``images_dir``;
    returns the JSON object written (see the module docstring)."""
    fmt = _check_format(image_format)
    json_path, images_dir = Path(json_path), Path(images_dir)
    prefix = f"{json_path.stem}_" if prefix is None else prefix
    images_dir.mkdir(parents=True, exist_ok=True)
    classes = list(dataset.classes)
    images, annotations = [], []
    for i in range(len(dataset)):
        arr, t = _sample(dataset, i)
        h, w = arr.shape[:2]
        file_name = f"{prefix}{i:06d}.{fmt}"
        _save_image(arr, images_dir / file_name, fmt)
        images.append({"id": i + 1, "file_name": file_name, "width": int(w), "height": int(h)})
        for box, label, diff, crowd in zip(t["boxes"], t["labels"], t["difficult"], t["iscrowd"]):
            if not 1 <= int(label) <= len(classes):
                raise DataError(f"sample {i}: label {int(label)} is not in 1..{len(classes)}")
            x1, y1, x2, y2 = (float(v) for v in box)
            bw, bh = _r2(x2 - x1), _r2(y2 - y1)
            x, y = _r2(x1), _r2(y1)
            ann = {
                "id": len(annotations) + 1,
                "image_id": i + 1,
                "category_id": int(label),
                "bbox": [x, y, bw, bh],
                "area": _r2(float(bw) * float(bh)),
                "iscrowd": int(bool(crowd)),
                "segmentation": [[x, y, _r2(x + bw), y, _r2(x + bw), _r2(y + bh), x, _r2(y + bh)]],
            }
            if bool(diff):
                ann["difficult"] = 1
            annotations.append(ann)
    obj = {
        "info": {
            "description": "exported by fasterrcnn",
            "version": "1.0",
            "year": datetime.date.today().year,
            "date_created": datetime.date.today().isoformat(),
        },
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [
            {"id": j + 1, "name": name, "supercategory": "object"} for j, name in enumerate(classes)
        ],
    }
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(obj), encoding="utf-8")
    return obj
