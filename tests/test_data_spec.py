"""Data spec strings: voc / coco / folder / shapes, joined with '+'."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fasterrcnn.data.coco import COCODataset
from fasterrcnn.data.dataset import ConcatDataset, DataError
from fasterrcnn.data.folder import FolderDataset
from fasterrcnn.data.spec import RelabeledDataset, parse_data_spec
from fasterrcnn.data.voc import VOCDataset

FIXTURES = Path(__file__).parent / "fixtures"


def write_image(path: Path, width: int, height: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (width, height), (1, 2, 3)).save(path)


def make_voc(root: Path, ids: dict[str, tuple[int, int]], split: str = "trainval") -> Path:
    (root / "Annotations").mkdir(parents=True, exist_ok=True)
    (root / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
    for id_, (w, h) in ids.items():
        shutil.copy(FIXTURES / "voc" / f"{id_}.xml", root / "Annotations" / f"{id_}.xml")
        write_image(root / "JPEGImages" / f"{id_}.jpg", w, h)
    (root / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
    return root


def test_voc_spec_and_split(tmp_path: Path) -> None:
    root = make_voc(tmp_path / "VOC2007", {"000001": (120, 90), "000003": (64, 48)})
    make_voc(root, {"000003": (64, 48)}, split="test")
    ds = parse_data_spec(f"voc:{root}")
    assert isinstance(ds, VOCDataset) and ds.split == "trainval" and len(ds) == 2
    test = parse_data_spec(f"voc:{root}:test", classes=("dog", "person"))
    assert test.split == "test" and len(test) == 1 and test.classes == ("dog", "person")
    assert parse_data_spec(f"voc:{root}", split_default="test").split == "test"


def test_voc_07_plus_12_unions_classes(tmp_path: Path) -> None:
    a = make_voc(tmp_path / "VOC2007", {"000001": (120, 90)})  # dog, person
    b = make_voc(tmp_path / "VOC2012", {"000002": (80, 64)})  # person, cat
    ds = parse_data_spec(f"voc:{a}:trainval+voc:{b}:trainval")
    assert isinstance(ds, ConcatDataset) and len(ds) == 2
    assert ds.classes == ("cat", "dog", "person")
    assert ds.annotation(0).labels.tolist() == [2, 3]
    assert ds.annotation(1).labels.tolist() == [3, 1]
    _, target = ds[1]
    assert target["labels"].tolist() == [3, 1]
    assert any(isinstance(p, RelabeledDataset) for p in ds.parts)


def test_coco_and_folder_specs(tmp_path: Path) -> None:
    data = json.loads((FIXTURES / "coco" / "instances_mini.json").read_text())
    for im in data["images"]:
        write_image(tmp_path / "img" / im["file_name"], im["width"], im["height"])
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(data))
    ds = parse_data_spec(f"coco:{ann}:{tmp_path / 'img'}")
    assert isinstance(ds, COCODataset) and len(ds) == 3
    with pytest.raises(DataError, match="coco needs both"):
        parse_data_spec(f"coco:{ann}")
    folder = tmp_path / "yolo"
    write_image(folder / "x.jpg", 10, 10)
    (folder / "classes.txt").write_text("thing\n")
    f = parse_data_spec(f"folder:{folder}")
    assert isinstance(f, FolderDataset) and f.classes == ("thing",)


def test_shapes_specs() -> None:
    assert len(parse_data_spec("shapes")) == 800
    assert len(parse_data_spec("shapes:test")) == 200
    assert len(parse_data_spec("shapes:val")) == 200
    small = parse_data_spec("shapes:test:3")
    assert len(small) == 3 and small.split == "test"
    for bad in ("shapes:nope", "shapes:test:0", "shapes:test:x", "shapes:test:3:4"):
        with pytest.raises(DataError, match="bad data spec"):
            parse_data_spec(bad)


def test_shapes_with_other_classes_relabels() -> None:
    sorted_names = ("cross", "ellipse", "rectangle", "ring", "triangle")
    ds = parse_data_spec("shapes:train:2", classes=sorted_names)
    assert isinstance(ds, RelabeledDataset)
    base = parse_data_spec("shapes:train:2")
    want = [ds.classes.index(base.classes[l - 1]) + 1 for l in base.annotation(0).labels.tolist()]
    assert ds.annotation(0).labels.tolist() == want
    np.testing.assert_array_equal(ds.annotation(0).boxes, base.annotation(0).boxes)
    with pytest.raises(DataError, match="not in the class list"):
        parse_data_spec("shapes:train:2", classes=("ellipse",))


def test_unknown_scheme_lists_forms(tmp_path: Path) -> None:
    forms = r"(?s)unknown scheme 'yolo'.*voc:ROOT\[:SPLIT\].*coco:.*folder:.*shapes"
    with pytest.raises(DataError, match=forms):
        parse_data_spec("yolo:/data")
    with pytest.raises(DataError, match="write voc:"):
        parse_data_spec(str(tmp_path))
    for bad in ("", "voc:", "voc:a+", "  "):
        with pytest.raises(DataError, match="bad data spec"):
            parse_data_spec(bad)
