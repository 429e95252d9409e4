"""The flat VOC folder (``voc:DIR``): images with an XML beside each, as LabelImg and CVAT's
"PASCAL VOC" export write them, and the images no XML names.

:func:`flat_annotation_files` lists the XMLs (a folder without any is refused, pointing at a
VOCdevkit year folder inside when there is one). :func:`unannotated_images` finds the images
that no XML names and treats them as ``unannotated`` (``--unannotated-images``) says:

* ``"skip"`` (default): left out as not annotated yet, with a note;
* ``"negative"``: used as images with no objects (LabelImg writes no XML for an image left
  without boxes), with a note;
* ``"error"``: each is a ``missing_annotation`` problem.
"""

from __future__ import annotations

from pathlib import Path

from fasterrcnn.data.dataset import DataError
from fasterrcnn.data.images import ImageReader
from fasterrcnn.data.problems import IMAGE_EXTENSIONS, MISSING_ANNOTATION, ProblemError, ProblemLog
from fasterrcnn.data.voc_xml import VOCRecord

UNANNOTATED_MODES = ("skip", "negative", "error")

# (image id, record, image file, height, width): one image a VOC dataset will hold
ImageEntry = tuple[str, VOCRecord, Path, int, int]


def flat_annotation_files(root: Path) -> list[Path]:
    """The ``*.xml`` files directly in ``root``, sorted; DataError when there are none."""
    xmls = sorted(root.glob("*.xml"))
    if not xmls:
        years = sorted(p.name for p in root.glob("VOC*") if (p / "Annotations").is_dir())
        hint = (f"; it looks like a VOCdevkit folder, use {root / years[0]}" if years
                else "; expected Annotations/ (devkit year folder) or *.xml beside images")
        raise DataError(f"{root}: no VOC annotations found{hint}")
    return xmls


def unannotated_images(
    root: Path, used: set[Path], mode: str, log: ProblemLog, reader: ImageReader
) -> tuple[list[ImageEntry], list[str]]:
    """``(entries, notes)`` for the images of ``root`` that no XML names (``used``: the resolved
    images the XMLs name; an image with an XML of its own stem counts as named): with ``mode``
    ``"negative"`` each becomes an entry without objects (its size from ``reader``), otherwise
    none does; ``"error"`` logs each as a problem, the others return a note saying what was done."""
    lonely = sorted(p for p in root.iterdir()
                    if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
                    and p.resolve() not in used and not p.with_suffix(".xml").is_file())
    if not lonely:
        return [], []
    names = ", ".join(p.name for p in lonely[:5]) + (", ..." if len(lonely) > 5 else "")
    if mode == "error":
        for p in lonely:
            log.add(p, f"no annotation file: no XML in {root} names this image (pass "
                    "--unannotated-images skip to leave such images out, or negative to use "
                    "them as images with no objects)", MISSING_ANNOTATION)
        return [], []
    if mode == "skip":
        other = ("--unannotated-images negative uses them as images with no objects (LabelImg "
                 "writes no XML for an image without boxes), error refuses them")
        return [], [f"{root}: {len(lonely)} image(s) without an XML left out as not annotated "
                    f"yet ({names}); {other}"]
    out: list[ImageEntry] = []
    for p in lonely:
        try:
            h, w = reader.size(p)
        except ProblemError as exc:
            log.add(p, exc.problem.message, exc.problem.kind)
            continue
        record = VOCRecord(xml=p.with_suffix(".xml"), filename=p.name, path=None, width=w, height=h)
        out.append((p.stem, record, p, h, w))
    return out, [f"{root}: {len(lonely)} image(s) without an XML used as images with no objects "
                 f"({names}; --unannotated-images negative)"]
