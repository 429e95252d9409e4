"""One PASCAL VOC annotation file: its ``<annotation>`` XML parsed into a :class:`VOCRecord`.

:func:`parse_voc_xml` reads the image name (``<filename>``, ``<path>``), ``<size>`` and every
``<object>`` (``<name>``, ``<bndbox>``, ``<difficult>``, ``<truncated>``, ``<pose>``); boxes are
turned from VOC's 1-based inclusive pixel indices into continuous xyxy (``[xmin - 1, ymin - 1,
xmax, ymax]``). The file's problems (unreadable, empty, malformed XML, an object without a name
or box, a coordinate or flag that is not a number) go to a
:class:`~fasterrcnn.data.problems.ProblemLog`: a file that cannot be used gives ``None``, a bad
object is left out of the record. Which objects a dataset keeps (classes, boxes inside the image,
``difficult``) is :class:`~fasterrcnn.data.voc.VOCDataset`'s business.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from fasterrcnn.data.problems import EMPTY_ANNOTATION, MALFORMED, ProblemLog


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
