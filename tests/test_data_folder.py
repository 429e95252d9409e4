"""Folder of images with YOLO txt labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fasterrcnn.data.problems import (
    BOX_OUTSIDE, CORRUPT_IMAGE, DEGENERATE_BOX, MALFORMED, UNKNOWN_CLASS,
)
from fasterrcnn.data.dataset import DataError, DetectionDataset
from fasterrcnn.data.folder import FolderDataset


def write_image(path: Path, width: int, height: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (width, height), (10, 200, 30)).save(path)


def make_folder(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    write_image(root / "a.jpg", 100, 50)
    (root / "a.txt").write_text("0 0.5 0.5 1.0 1.0\n1 0.25 0.5 0.1 0.2\n\n")
    write_image(root / "b.png", 40, 40)  # no .txt: an image without objects
    write_image(root / "sub" / "c.jpg", 20, 10)
    (root / "sub" / "c.txt").write_text("")  # empty: no objects either
    (root / "classes.txt").write_text("cat\ndog\n")
    return root


def test_reads_yolo_labels(tmp_path: Path) -> None:
    ds = FolderDataset(make_folder(tmp_path))
    assert isinstance(ds, DetectionDataset)
    assert ds.classes == ("cat", "dog") and len(ds) == 3
    assert [p.name for p in ds.image_files] == ["a.jpg", "b.png", "c.jpg"]
    a = ds.annotation(0)
    assert (a.height, a.width) == (50, 100)
    np.testing.assert_allclose(a.boxes, [[0, 0, 100, 50], [20, 20, 30, 30]], atol=1e-4)
    assert a.labels.tolist() == [1, 2]
    assert ds.annotation(1).boxes.shape == (0, 4) and ds.label_files[1] is None
    assert ds.annotation(2).boxes.shape == (0, 4)
    image, target = ds[0]
    assert image.dtype == torch.uint8 and tuple(image.shape) == (3, 50, 100)
    assert target["labels"].tolist() == [1, 2]


def test_ultralytics_layout_and_given_classes(tmp_path: Path) -> None:
    root = tmp_path / "yolo"
    write_image(root / "images" / "train" / "x.jpg", 64, 32)
    (root / "labels" / "train").mkdir(parents=True)
    (root / "labels" / "train" / "x.txt").write_text("1 0.5 0.5 0.5 0.5\n")
    ds = FolderDataset(root, classes=("a", "b"))  # no classes.txt: index order of the list
    assert ds.annotation(0).labels.tolist() == [2]
    np.testing.assert_allclose(ds.annotation(0).boxes, [[16, 8, 48, 24]])
    (root / "classes.txt").write_text("a\nb\n")
    mapped = FolderDataset(root, classes=("b", "z", "a"))  # classes.txt names mapped by name
    assert mapped.annotation(0).labels.tolist() == [1]


def test_missing_classes_file(tmp_path: Path) -> None:
    root = make_folder(tmp_path)
    (root / "classes.txt").unlink()
    with pytest.raises(DataError, match=r"classes\.txt: not found"):
        FolderDataset(root)


def test_bad_lines_name_file_and_line(tmp_path: Path) -> None:
    root = make_folder(tmp_path)
    (root / "a.txt").write_text("0 0.5 0.5 1.0 1.0\n0 0.5 0.5 0.2\n")
    with pytest.raises(DataError, match=r"a\.txt:2: expected 5 values"):
        FolderDataset(root)
    (root / "a.txt").write_text("# comment\n7 0.5 0.5 0.2 0.2\n")
    with pytest.raises(DataError, match=r"a\.txt:2: class index 7 but .*classes\.txt has 2 names"):
        FolderDataset(root)
    (root / "a.txt").write_text("x 0.5 0.5 0.2 0.2\n")
    with pytest.raises(DataError, match=r"a\.txt:1: class index 'x'"):
        FolderDataset(root)
    (root / "a.txt").write_text("0 0.5 0.5 0.2 nan?\n")
    with pytest.raises(DataError, match=r"a\.txt:1: box values must be numbers"):
        FolderDataset(root)
    (root / "a.txt").write_text("0 0.9 0.5 0.5 0.5\n")
    with pytest.raises(DataError, match=r"a\.txt:1: box .* outside the 100x50"):
        FolderDataset(root)
    (root / "a.txt").write_text("0 0.5 0.5 0 0.5\n")
    with pytest.raises(DataError, match=r"a\.txt:1: degenerate box"):
        FolderDataset(root)


def test_lenient_collects(tmp_path: Path) -> None:
    root = make_folder(tmp_path)
    (root / "a.txt").write_text(
        "0 0.5 0.5 1.0 1.0\n0 0.5\n0 0.9 0.5 0.5 0.5\n0 0.5 0.5 0 0.5\n5 0.5 0.5 0.1 0.1\n"
    )
    (root / "broken.jpg").write_bytes(b"not an image")
    ds = FolderDataset(root, strict=False)
    assert len(ds) == 3 and ds.annotation(0).labels.tolist() == [1]
    assert [(p.kind, p.line) for p in ds.problems] == [
        (MALFORMED, 2), (BOX_OUTSIDE, 3), (DEGENERATE_BOX, 4), (UNKNOWN_CLASS, 5),
        (CORRUPT_IMAGE, None),
    ]
