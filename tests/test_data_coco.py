"""COCO reader and COCO export round trip."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fasterrcnn.data.problems import MALFORMED, MISSING_IMAGE, UNKNOWN_CLASS
from fasterrcnn.data.coco import COCODataset
from fasterrcnn.data.dataset import Annotation, DataError, DetectionDataset
from fasterrcnn.data.export import export_coco

from helpers import MemoryDataset

FIXTURE = Path(__file__).parent / "fixtures" / "coco" / "instances_mini.json"


def write_image(path: Path, width: int, height: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (width, height), (90, 120, 30)).save(path)


def make_coco(tmp_path: Path, data: dict | None = None) -> tuple[Path, Path]:
    data = data or json.loads(FIXTURE.read_text())
    images = tmp_path / "val2017"
    for im in data["images"]:
        write_image(images / im["file_name"], im.get("width", 8), im.get("height", 8))
    ann = tmp_path / "instances_val2017.json"
    ann.write_text(json.dumps(data))
    return ann, images


def test_reads_official_format(tmp_path: Path) -> None:
    ds = COCODataset(*make_coco(tmp_path))
    assert isinstance(ds, DetectionDataset)
    assert ds.classes == ("person", "car", "train")
    assert ds.category_ids == (1, 3, 7)  # gaps in the ids; label l is category_ids[l - 1]
    assert len(ds) == 3 and ds.image_ids == [1, 5, 9]
    a = ds.annotation(0)
    assert a.image_id == 1 and (a.height, a.width) == (60, 80)
    np.testing.assert_allclose(a.boxes, [[10, 20, 40, 40], [0.5, 1.25, 11, 10]])  # xywh -> xyxy
    assert a.labels.tolist() == [2, 1]
    assert ds.category_ids[a.labels[0] - 1] == 3
    empty = ds.annotation(1)  # an image without annotations is included
    assert empty.image_id == 5 and empty.boxes.shape == (0, 4)
    c = ds.annotation(2)
    assert c.labels.tolist() == [3, 1] and c.iscrowd.tolist() == [True, False]
    np.testing.assert_array_equal(c.boxes[0], [0, 0, 64, 40])
    image, target = ds[2]
    assert image.dtype == torch.uint8 and tuple(image.shape) == (3, 48, 64)
    assert target["iscrowd"].tolist() == [True, False] and target["image_id"] == 9


def test_given_classes_map_by_name(tmp_path: Path) -> None:
    ds = COCODataset(*make_coco(tmp_path), classes=("bus", "car", "person", "train"))
    assert ds.category_ids == (-1, 3, 1, 7)
    assert ds.annotation(0).labels.tolist() == [2, 3]
    with pytest.raises(DataError, match=r"instances_val2017\.json: annotations\[0\] \(id 101\): "
                                        r"category 'car'"):
        COCODataset(*make_coco(tmp_path), classes=("person", "train"))
    skip = COCODataset(*make_coco(tmp_path), classes=("person", "train"), unknown_classes="skip")
    assert skip.annotation(0).labels.tolist() == [1]
    assert [p.kind for p in skip.problems] == [UNKNOWN_CLASS]


def test_invalid_json_names_file_and_line(tmp_path: Path) -> None:
    ann, images = make_coco(tmp_path)
    ann.write_text('{"images": [],\n "categories": [}')
    with pytest.raises(DataError, match=r"instances_val2017\.json:2: invalid JSON"):
        COCODataset(ann, images)
    lenient = COCODataset(ann, images, strict=False)
    assert len(lenient) == 0 and lenient.problems[0].kind == MALFORMED


def test_missing_top_level_key(tmp_path: Path) -> None:
    ann, images = make_coco(tmp_path)
    ann.write_text(json.dumps({"images": []}))
    with pytest.raises(DataError, match=r"instances_val2017\.json: top-level key 'categories'"):
        COCODataset(ann, images)


def test_bad_entries_name_the_entry(tmp_path: Path) -> None:
    data = json.loads(FIXTURE.read_text())
    del data["annotations"][1]["bbox"]
    with pytest.raises(DataError, match=r"annotations\[1\] \(id 102\): missing key\(s\) bbox"):
        COCODataset(*make_coco(tmp_path, data))
    data = json.loads(FIXTURE.read_text())
    data["annotations"][3]["bbox"] = [20, 10, "10", 20]
    with pytest.raises(DataError, match=r"annotations\[3\] \(id 104\): bbox must be 4"):
        COCODataset(*make_coco(tmp_path, data))
    data = json.loads(FIXTURE.read_text())
    data["annotations"][0]["category_id"] = 2
    with pytest.raises(DataError, match=r"annotations\[0\] \(id 101\): category_id 2 is not"):
        COCODataset(*make_coco(tmp_path, data))
    data = json.loads(FIXTURE.read_text())
    data["annotations"][0]["image_id"] = 77
    with pytest.raises(DataError, match=r"annotations\[0\] \(id 101\): image_id 77"):
        COCODataset(*make_coco(tmp_path, data))
    data = json.loads(FIXTURE.read_text())
    del data["images"][1]["width"]
    with pytest.raises(DataError, match=r"images\[1\] \(id 5\): missing key\(s\) width"):
        COCODataset(*make_coco(tmp_path, data))
    data = json.loads(FIXTURE.read_text())
    data["annotations"][3]["bbox"] = [20, 10, 0, 20]
    with pytest.raises(DataError, match=r"annotations\[3\] \(id 104\): image 9: degenerate box"):
        COCODataset(*make_coco(tmp_path, data))


def test_lenient_collects_and_drops(tmp_path: Path) -> None:
    data = json.loads(FIXTURE.read_text())
    data["annotations"][1]["bbox"] = [70, 50, 30, 30]  # outside the 80x60 image
    ann, images = make_coco(tmp_path, data)
    (images / "000000000005.jpg").unlink()
    ds = COCODataset(ann, images, strict=False)
    assert sorted(p.kind for p in ds.problems) == ["box_outside", MISSING_IMAGE]
    assert ds.image_ids == [1, 9] and ds.annotation(0).labels.tolist() == [2]
    assert all(p.index is None and p.file == str(ann) for p in ds.problems)


# --------------------------------------------------------------------------- export


def test_export_coco_round_trip(tmp_path: Path) -> None:
    anns = [
        Annotation(0, "a", 40, 60, [[0, 0, 60, 40], [10, 5, 21, 30]], [3, 1],
                   difficult=[False, True]),
        Annotation(1, "b", 32, 48),
        Annotation(2, "c", 50, 30, [[3, 4, 13, 24], [1.25, 2.5, 7.75, 9.5]], [2, 2],
                   iscrowd=[True, False]),
    ]
    ds = MemoryDataset(anns, ("cat", "dog", "emu"))
    obj = export_coco(ds, tmp_path / "train.json", tmp_path / "images", "png")
    assert set(obj) == {"info", "licenses", "images", "annotations", "categories"}
    assert obj["annotations"][0]["bbox"] == [0, 0, 60, 40] and obj["annotations"][0]["area"] == 2400
    back = COCODataset(tmp_path / "train.json", tmp_path / "images")
    assert back.classes == ds.classes and back.category_ids == (1, 2, 3)
    assert len(back) == 3
    for i in range(3):
        a, b = ds.annotation(i), back.annotation(i)
        assert (b.height, b.width) == (a.height, a.width)
        np.testing.assert_array_equal(b.boxes, a.boxes)
        np.testing.assert_array_equal(b.labels, a.labels)
        np.testing.assert_array_equal(b.difficult, a.difficult)
        np.testing.assert_array_equal(b.iscrowd, a.iscrowd)
        assert torch.equal(back[i][0], ds[i][0])
    from pycocotools.coco import COCO

    coco = COCO(str(tmp_path / "train.json"))  # the official API reads it
    assert sorted(coco.getCatIds()) == [1, 2, 3] and len(coco.getAnnIds()) == 4
