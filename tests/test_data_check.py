"""check_dataset on a deliberately broken dataset; sanitize / prepare_dataset (skip / error)."""

from __future__ import annotations

import io
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fasterrcnn.data.check import check_dataset, prepare_dataset
from fasterrcnn.data.check_report import CheckReport, sanitize
from fasterrcnn.data.dataset import Annotation, DataError
from fasterrcnn.data.images import ImageReader
from fasterrcnn.data.problems import PROBLEM_KINDS

from helpers import MemoryDataset

FIXTURES = Path(__file__).parent / "fixtures" / "voc"

XML = """<annotation>
	<folder>VOC2007</folder>
	<filename>{id}.jpg</filename>
	<size>
		<width>{w}</width>
		<height>{h}</height>
		<depth>3</depth>
	</size>
	<segmented>0</segmented>
{objects}</annotation>
"""
OBJ = """	<object>
		<name>{name}</name>
		<pose>Unspecified</pose>
		<truncated>0</truncated>
		<difficult>0</difficult>
		<bndbox>
			<xmin>{box[0]}</xmin>
			<ymin>{box[1]}</ymin>
			<xmax>{box[2]}</xmax>
			<ymax>{box[3]}</ymax>
		</bndbox>
	</object>
"""


def jpeg_bytes(width: int, height: int) -> bytes:
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def broken_devkit(tmp_path: Path) -> Path:
    """A VOC devkit with one image per kind of problem, plus two good images."""
    root = tmp_path / "VOC2007"
    for d in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / d).mkdir(parents=True)
    good = [("cat", (1, 1, 20, 20))]

    def add(id_: str, w: int = 40, h: int = 30, objects=good, image: bytes | None = b"") -> None:
        objs = "".join(OBJ.format(name=n, box=b) for n, b in objects)
        (root / "Annotations" / f"{id_}.xml").write_text(XML.format(id=id_, w=w, h=h, objects=objs))
        if image is not None:
            (root / "JPEGImages" / f"{id_}.jpg").write_bytes(image or jpeg_bytes(w, h))

    add("good1")
    add("good2", objects=[("cat", (1, 1, 20, 20)), ("dog", (5, 5, 40, 30))])
    add("missing_image", image=None)
    add("corrupt_image", image=b"this is not a jpeg")
    add("truncated_image", image=jpeg_bytes(40, 30)[:-500])
    add("size_mismatch", w=50, image=jpeg_bytes(40, 30))  # XML says 50 wide, the file is 40
    add("box_outside", objects=[("cat", (1, 1, 20, 20)), ("dog", (10, 10, 60, 30))])
    add("degenerate_box", objects=[("dog", (30, 5, 10, 20)), ("cat", (1, 1, 20, 20))])
    add("unknown_class", objects=[("cat", (1, 1, 20, 20)), ("zebra", (2, 2, 9, 9))])
    add("too_large_image", w=200, h=150)  # over the 10 000-pixel ceiling the test sets
    (root / "Annotations" / "empty_annotation.xml").write_text("")
    (root / "Annotations" / "malformed.xml").write_text("<annotation><size></annotation>")
    ids = ["good1", "good2", "missing_image", "corrupt_image", "truncated_image", "size_mismatch",
           "box_outside", "degenerate_box", "unknown_class", "empty_annotation", "malformed",
           "missing_annotation", "too_large_image"]
    (root / "ImageSets" / "Main" / "trainval.txt").write_text("\n".join(ids) + "\n")
    return root


def test_every_kind_of_problem_is_listed(tmp_path: Path) -> None:
    root = broken_devkit(tmp_path)
    report = check_dataset(f"voc:{root}", classes=("cat", "dog"),
                           images=ImageReader(max_pixels=10_000))
    assert isinstance(report, CheckReport) and not report.ok
    by_file = {(Path(p.file).stem, p.kind) for p in report.problems}
    assert by_file == {
        ("missing_annotation", "missing_annotation"),
        ("empty_annotation", "empty_annotation"),
        ("malformed", "malformed"),
        ("missing_image", "missing_image"),
        ("corrupt_image", "corrupt_image"),
        ("truncated_image", "corrupt_image"),
        ("size_mismatch", "size_mismatch"),
        ("box_outside", "box_outside"),
        ("degenerate_box", "degenerate_box"),
        ("unknown_class", "unknown_class"),
        ("too_large_image", "too_large_image"),
    }
    assert set(report.counts_by_kind()) == set(PROBLEM_KINDS)
    assert len(report.problems) == 11
    # images kept by the lenient reader: good1, good2, corrupt, truncated, size, outside,
    # degenerate, unknown (their bad objects left out), too large
    assert report.num_images == 9
    assert report.class_counts == {"cat": 9, "dog": 1}
    text = report.format()
    assert "PROBLEMS: 11" in text and "degenerate_box.xml: object 0 ('dog'): degenerate box" in text
    assert "truncated_image.jpg: cannot read image" in text
    assert "anchor coverage" in text and "cat: 9" in text
    # header-only checking misses the truncated file but not the others
    quick = check_dataset(f"voc:{root}", classes=("cat", "dog"), decode_images=False)
    assert len(quick.problems) == 9


def test_prepare_dataset_error_and_skip(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    spec = f"voc:{broken_devkit(tmp_path)}"
    small = ImageReader(max_pixels=10_000)
    with pytest.raises(DataError, match=r"(?s)PROBLEMS: 11.*--on-bad-data skip"):
        prepare_dataset(spec, classes=("cat", "dog"), images=small)
    with caplog.at_level(logging.WARNING, logger="fasterrcnn.data"):
        ds, report = prepare_dataset(spec, on_bad_data="skip", classes=("cat", "dog"), images=small)
    assert not report.ok
    assert caplog.text.count("bad data") == 11
    # the counts after skipping: the dropped images' and boxes' objects are not counted
    assert (report.used_images, report.used_objects) == (5, 6) and report.num_objects > 6
    names = [Path(ds.annotation(i).file_name).stem for i in range(len(ds))]
    assert names == ["good1", "good2", "box_outside", "degenerate_box", "unknown_class"]
    for i in range(len(ds)):
        ann = ds.annotation(i)
        image, target = ds[i]
        assert tuple(image.shape[1:]) == (ann.height, ann.width)
        np.testing.assert_array_equal(target["boxes"].numpy(), ann.boxes)
    assert ds.annotation(2).labels.tolist() == [1]  # the outside 'dog' box dropped
    with pytest.raises(DataError, match="on_bad_data"):
        prepare_dataset(spec, on_bad_data="ignore")


def test_foreign_dataset_checks_and_sanitize(caplog: pytest.LogCaptureFixture) -> None:
    anns = [
        Annotation(0, "mem/0", 20, 20, [[0, 0, 10, 10], [5, 5, 5, 8], [1, 1, 4, 4]], [1, 2, 3]),
        Annotation(1, "mem/1", 20, 20, [[0, 0, 10, 10]], [2]),
        Annotation(2, "mem/2", 20, 20, [[0, 0, 10, 10]], [1]),
    ]
    ds = MemoryDataset(anns, wrong_size=2)
    report = check_dataset(ds)
    assert [(p.kind, p.index, p.obj) for p in report.problems] == [
        ("degenerate_box", 0, 1), ("unknown_class", 0, 2), ("size_mismatch", 2, None),
    ]
    assert check_dataset(ds, decode_images=False).counts_by_kind() == {
        "degenerate_box": 1, "unknown_class": 1,
    }
    with caplog.at_level(logging.WARNING, logger="fasterrcnn.data"):
        clean = sanitize(ds, report)
    assert "skipping image 2" in caplog.text and "skipping object 1 of image 0" in caplog.text
    assert len(clean) == 2
    np.testing.assert_array_equal(clean.annotation(0).boxes, [[0, 0, 10, 10]])
    _, target = clean[0]
    assert target["labels"].tolist() == [1] and target["boxes"].shape == (1, 4)
    assert clean.annotation(1).image_id == 1
    assert check_dataset(clean).ok
    with pytest.raises(ValueError, match="report covers"):
        sanitize(clean, report)


def test_clean_dataset_is_ok(tmp_path: Path) -> None:
    root = tmp_path / "VOC2007"
    for d in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / d).mkdir(parents=True)
    shutil.copy(FIXTURES / "000001.xml", root / "Annotations" / "000001.xml")
    (root / "JPEGImages" / "000001.jpg").write_bytes(jpeg_bytes(120, 90))
    (root / "ImageSets" / "Main" / "trainval.txt").write_text("000001\n")
    report = check_dataset(f"voc:{root}")
    assert report.ok and report.num_objects == 2 and report.num_difficult == 1
    assert report.format().endswith("no problems found")
    ds, rep2 = prepare_dataset(f"voc:{root}")
    assert len(ds) == 1 and rep2.ok


def test_anchor_fit_warns_for_small_boxes_and_measures_at_crop_scale():
    import numpy as np

    from fasterrcnn.config import AnchorConfig, InputConfig
    from fasterrcnn.data.check import check_dataset
    from fasterrcnn.data.dataset import Annotation

    class Photo:
        """One 2000 x 2000 photo with 25-px 'tree crowns' (never decoded here)."""

        classes = ("tree",)

        def __len__(self):
            return 1

        def annotation(self, i):
            boxes = np.array([[100.0 * k, 100.0, 100.0 * k + 25, 125.0] for k in range(1, 11)])
            return Annotation(0, "photo.png", 2000, 2000, boxes, np.ones(10, np.int64))

        def __getitem__(self, i):
            raise AssertionError("not decoded")

    paper = check_dataset(Photo(), decode_images=False, anchors=AnchorConfig(), crop=600,
                          input_cfg=InputConfig())
    assert paper.anchor_coverage[0.5] == 0.0
    assert "WARNING: these anchors cannot match most boxes" in paper.format()
    assert "600-px crops (x1)" in paper.format()
    small = check_dataset(Photo(), decode_images=False, anchors=AnchorConfig(sizes=(16.0, 32.0), aspect_ratios=(1.0,)),
                          crop=600, input_cfg=InputConfig())
    assert small.anchor_coverage[0.5] == 1.0 and "WARNING" not in small.format()
    # whole-photo scale: 2000 px shrunk to 600, the crowns become 7.5 px
    whole = check_dataset(Photo(), decode_images=False, anchors=AnchorConfig(sizes=(16.0, 32.0), aspect_ratios=(1.0,)),
                          input_cfg=InputConfig())
    assert whole.anchor_coverage[0.5] == 0.0
