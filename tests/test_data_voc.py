"""VOC reader (devkit and flat folders) and VOC export round trip."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fasterrcnn.data.problems import EMPTY_ANNOTATION, MALFORMED, MISSING_IMAGE, UNKNOWN_CLASS
from fasterrcnn.data.dataset import Annotation, DataError, DetectionDataset
from fasterrcnn.data.export import export_voc, voc_box
from fasterrcnn.data.voc import VOC_CLASSES, VOCDataset

from helpers import MemoryDataset

FIXTURES = Path(__file__).parent / "fixtures" / "voc"


def write_image(path: Path, width: int, height: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path)


def make_devkit(tmp_path: Path) -> Path:
    root = tmp_path / "VOC2007"
    (root / "Annotations").mkdir(parents=True)
    (root / "ImageSets" / "Main").mkdir(parents=True)
    sizes = {"000001": (120, 90), "000002": (80, 64), "000003": (64, 48)}
    for id_, (w, h) in sizes.items():
        shutil.copy(FIXTURES / f"{id_}.xml", root / "Annotations" / f"{id_}.xml")
        write_image(root / "JPEGImages" / f"{id_}.jpg", w, h)
    (root / "ImageSets" / "Main" / "trainval.txt").write_text("000001\n000002\n000003\n")
    (root / "ImageSets" / "Main" / "test.txt").write_text("000002\n")
    return root


def test_devkit_reads_and_converts_one_based_coords(tmp_path: Path) -> None:
    ds = VOCDataset(make_devkit(tmp_path))
    assert isinstance(ds, DetectionDataset)
    assert len(ds) == 3 and ds.layout == "devkit"
    assert ds.ids == ["000001", "000002", "000003"]
    assert ds.classes == ("cat", "dog", "person")  # sorted names found
    a = ds.annotation(0)
    assert (a.height, a.width) == (90, 120)
    # VOC 1-based inclusive [1, 1, 120, 90] covers the whole 120x90 image -> [0, 0, 120, 90]
    np.testing.assert_array_equal(a.boxes, [[0, 0, 120, 90], [9, 19, 30, 60]])
    np.testing.assert_array_equal(a.labels, [2, 3])
    np.testing.assert_array_equal(a.difficult, [False, True])
    np.testing.assert_array_equal(a.iscrowd, [False, False])
    b = ds.annotation(1)  # VOC2012 style: <part> boxes ignored, fractional coords kept
    np.testing.assert_allclose(b.boxes, [[40, 4, 70, 60], [2.5, 29.5, 20.5, 50]])
    np.testing.assert_array_equal(b.labels, [3, 1])
    c = ds.annotation(2)  # no objects: a valid negative image
    assert c.boxes.shape == (0, 4) and c.labels.shape == (0,)


def test_getitem_returns_image_and_target(tmp_path: Path) -> None:
    ds = VOCDataset(make_devkit(tmp_path))
    image, target = ds[1]
    assert image.dtype == torch.uint8 and tuple(image.shape) == (3, 64, 80)
    assert target["boxes"].shape == (2, 4) and target["labels"].tolist() == [3, 1]
    assert target["size"] == (64, 80) and target["image_id"] == 1


def test_split_keep_difficult_and_given_classes(tmp_path: Path) -> None:
    root = make_devkit(tmp_path)
    test = VOCDataset(root, "test", classes=VOC_CLASSES)
    assert len(test) == 1 and test.classes == VOC_CLASSES
    assert test.annotation(0).labels.tolist() == [15, 8]  # person, cat in the standard order
    easy = VOCDataset(root, keep_difficult=False)
    assert easy.annotation(0).labels.tolist() == [2]
    assert VOC_CLASSES == tuple(sorted(VOC_CLASSES))  # sorted found names = standard order


def test_unknown_class_error_names_file_and_class(tmp_path: Path) -> None:
    root = make_devkit(tmp_path)
    with pytest.raises(DataError, match=r"000001\.xml.*'dog'"):
        VOCDataset(root, classes=("cat", "person"))


def test_unknown_class_skip_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = make_devkit(tmp_path)
    with caplog.at_level(logging.WARNING, logger="fasterrcnn.data"):
        ds = VOCDataset(root, classes=("cat", "person"), unknown_classes="skip")
    assert "dog" in caplog.text
    assert ds.annotation(0).labels.tolist() == [2]
    assert [p.kind for p in ds.problems] == [UNKNOWN_CLASS]


def test_missing_split_lists_available(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"val\.txt.*splits found: test, trainval"):
        VOCDataset(make_devkit(tmp_path), "val")


def test_vocdevkit_parent_gets_hint(tmp_path: Path) -> None:
    make_devkit(tmp_path)
    with pytest.raises(DataError, match="VOC2007"):
        VOCDataset(tmp_path)


def test_malformed_xml_names_file(tmp_path: Path) -> None:
    root = make_devkit(tmp_path)
    (root / "Annotations" / "000002.xml").write_text("<annotation><object></annotation>")
    with pytest.raises(DataError, match=r"000002\.xml.*malformed XML"):
        VOCDataset(root)
    lenient = VOCDataset(root, strict=False)
    assert len(lenient) == 2 and [p.kind for p in lenient.problems] == [MALFORMED]
    assert lenient.problems[0].line == 1


def test_empty_xml_and_bad_number(tmp_path: Path) -> None:
    root = make_devkit(tmp_path)
    (root / "Annotations" / "000003.xml").write_text("")
    with pytest.raises(DataError, match=r"000003\.xml: empty annotation file"):
        VOCDataset(root)
    xml = (FIXTURES / "000001.xml").read_text().replace("<xmin>10</xmin>", "<xmin>ten</xmin>")
    (root / "Annotations" / "000001.xml").write_text(xml)
    assert len(VOCDataset(root, "test")) == 1  # other splits' files are not read
    ds = VOCDataset(root, strict=False)
    assert sorted(p.kind for p in ds.problems) == [EMPTY_ANNOTATION, MALFORMED]
    assert ds.annotation(0).labels.tolist() == [ds.classes.index("dog") + 1]


def test_bad_number_strict(tmp_path: Path) -> None:
    root = make_devkit(tmp_path)
    xml = (FIXTURES / "000001.xml").read_text().replace("<xmin>10</xmin>", "<xmin>ten</xmin>")
    (root / "Annotations" / "000001.xml").write_text(xml)
    with pytest.raises(DataError, match=r"000001\.xml: object 1 \('person'\): <xmin> is 'ten'"):
        VOCDataset(root)


def test_flat_folder_stale_filename_and_size_from_header(tmp_path: Path) -> None:
    flat = tmp_path / "labelimg"
    flat.mkdir()
    shutil.copy(FIXTURES / "OSBS_029.xml", flat / "OSBS_029.xml")
    write_image(flat / "OSBS_029.png", 48, 40)  # the XML says OSBS_029.tif, elsewhere, size 0
    shutil.copy(FIXTURES / "000003.xml", flat / "000003.xml")
    write_image(flat / "000003.jpg", 64, 48)
    ds = VOCDataset(flat)
    assert ds.layout == "flat" and ds.ids == ["000003", "OSBS_029"]
    assert ds.classes == ("Tree",)
    a = ds.annotation(1)
    assert Path(a.file_name) == flat / "OSBS_029.png"
    assert (a.height, a.width) == (40, 48)
    np.testing.assert_array_equal(a.boxes, [[4, 6, 25, 33], [29, 0, 40, 12]])
    image, _ = ds[1]
    assert tuple(image.shape) == (3, 40, 48)


def test_flat_folder_missing_image(tmp_path: Path) -> None:
    flat = tmp_path / "flat"
    flat.mkdir()
    shutil.copy(FIXTURES / "OSBS_029.xml", flat / "OSBS_029.xml")
    with pytest.raises(DataError, match=r"OSBS_029\.xml: image 'OSBS_029\.tif' not found"):
        VOCDataset(flat)
    ds = VOCDataset(flat, strict=False)
    assert len(ds) == 0 and ds.problems[0].kind == MISSING_IMAGE


def test_size_mismatch_on_load(tmp_path: Path) -> None:
    root = make_devkit(tmp_path)
    write_image(root / "JPEGImages" / "000003.jpg", 50, 48)
    ds = VOCDataset(root)
    with pytest.raises(DataError, match=r"000003\.jpg: image is 50x48"):
        ds[2]


# --------------------------------------------------------------------------- export


def sample_dataset() -> MemoryDataset:
    anns = [
        Annotation(0, "a", 40, 60, [[0, 0, 60, 40], [10.4, 5.5, 20.6, 30.2]], [1, 2],
                   difficult=[False, True]),
        Annotation(1, "b", 32, 48),
        Annotation(2, "c", 50, 30, [[3, 4, 13, 24]], [3], iscrowd=[True]),
    ]
    return MemoryDataset(anns, ("bird", "car", "zebra crossing"))


def test_voc_box_rounding() -> None:
    assert voc_box([0, 0, 60, 40], 40, 60) == (1, 1, 60, 40)
    assert voc_box([10.4, 5.5, 20.6, 30.2], 40, 60) == (11, 7, 21, 30)
    assert voc_box([-3, -2, 70, 45], 40, 60) == (1, 1, 60, 40)  # clamped to the image
    assert voc_box([10.2, 10.2, 10.4, 10.4], 40, 60) == (11, 11, 11, 11)  # at least one pixel


@pytest.mark.parametrize("fmt", ["png", "jpg"])
def test_export_voc_round_trip(tmp_path: Path, fmt: str) -> None:
    ds = sample_dataset()
    root = tmp_path / "VOC2099"
    ids = export_voc(ds, root, "trainval", fmt)
    assert ids == ["trainval_000000", "trainval_000001", "trainval_000002"]
    assert (root / "ImageSets" / "Main" / "trainval.txt").read_text().split() == ids
    assert (root / "ImageSets" / "Main" / "car_trainval.txt").read_text().splitlines() == [
        "trainval_000000  0", "trainval_000001 -1", "trainval_000002 -1",
    ]
    back = VOCDataset(root, "trainval", classes=ds.classes)
    assert VOCDataset(root).classes == ("bird", "car", "zebra crossing")
    assert len(back) == 3
    for i in range(3):
        a, b = ds.annotation(i), back.annotation(i)
        assert (b.height, b.width) == (a.height, a.width)
        np.testing.assert_array_equal(b.boxes, np.floor(a.boxes + 0.5))  # integer pixels
        np.testing.assert_array_equal(b.labels, a.labels)
        np.testing.assert_array_equal(b.difficult, a.difficult | a.iscrowd)
        image, _ = back[i]
        if fmt == "png":
            assert torch.equal(image, ds[i][0])
    xml = (root / "Annotations" / "trainval_000000.xml").read_text()
    for tag in ("<folder>VOC2099</folder>", "<filename>trainval_000000." + fmt, "<depth>3</depth>",
                "<segmented>0</segmented>", "<pose>Unspecified</pose>", "<truncated>0</truncated>",
                "<difficult>1</difficult>", "<xmin>11</xmin>", "<source>"):
        assert tag in xml
