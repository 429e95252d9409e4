"""Tiling of large images, cropping targets, random-crop training data, anchor fit for small boxes."""

import numpy as np
import pytest
import torch

from fasterrcnn.config import TrainConfig
from fasterrcnn.presets import preset
from fasterrcnn.data.dataset import Annotation
from fasterrcnn.data.loader import build_train_loader
from fasterrcnn.data.stats import anchor_coverage, suggest_anchors
from fasterrcnn.data.tiling import RandomCropDataset, crop_target, dihedral_boxes, tile_grid


@pytest.mark.parametrize(
    "h, w, tile, overlap",
    [(2472, 2299, 512, 64), (1035, 1249, 512, 128), (512, 512, 512, 0), (600, 100, 256, 32),
     (97, 300, 64, 63), (10, 10, 512, 64)],
)
def test_tile_grid_covers_image_exactly(h, w, tile, overlap):
    wins = tile_grid(h, w, tile, overlap)
    cover = np.zeros((h, w), np.int32)
    for y0, x0, y1, x1 in wins:
        assert 0 <= y0 < y1 <= h and 0 <= x0 < x1 <= w
        assert y1 - y0 == min(tile, h) and x1 - x0 == min(tile, w)  # full tiles, none sticks out
        cover[y0:y1, x0:x1] += 1
    assert cover.min() >= 1  # every pixel covered
    ys = sorted({y0 for y0, _, _, _ in wins})
    xs = sorted({x0 for _, x0, _, _ in wins})
    assert ys[0] == 0 and xs[0] == 0
    assert max(y1 for _, _, y1, _ in wins) == h and max(x1 for _, _, _, x1 in wins) == w
    for starts in (ys, xs):  # neighbours overlap by at least `overlap`
        for a, b in zip(starts, starts[1:]):
            assert tile - (b - a) >= overlap
    assert len(wins) == len(ys) * len(xs)


def test_tile_grid_counts_and_errors():
    assert tile_grid(1035, 1249, 512, 128) == [
        (y, x, y + 512, x + 512) for y in (0, 384, 523) for x in (0, 384, 737)
    ]
    assert tile_grid(300, 200, 512, 64) == [(0, 0, 300, 200)]
    with pytest.raises(ValueError, match="overlap"):
        tile_grid(100, 100, 64, 64)
    with pytest.raises(ValueError):
        tile_grid(0, 100, 64, 0)


def test_crop_target_rules():
    boxes = np.array([
        [110, 110, 130, 130],  # inside: kept unchanged (shifted)
        [90, 120, 110, 140],   # half outside on the left (50% visible): kept, clipped
        [80, 120, 106, 140],   # 23% visible: dropped
        [195, 150, 260, 170],  # 5 px of 65 visible: dropped
        [300, 300, 320, 320],  # outside: dropped
        [150, 150, 151.5, 170],  # 1.5 px wide sliver inside: dropped (min_size)
        [100, 100, 200, 200],  # exactly the window: kept
    ], np.float32)
    labels = np.array([1, 2, 3, 4, 5, 6, 7])
    out, lab, keep = crop_target(boxes, labels, (100, 100, 200, 200), min_visible=0.5, min_size=2)
    assert lab.tolist() == [1, 2, 7] and keep.tolist() == [0, 1, 6]
    np.testing.assert_allclose(out, [[10, 10, 30, 30], [0, 20, 10, 40], [0, 0, 100, 100]])
    out, lab, _ = crop_target(torch.tensor(boxes), torch.tensor(labels), (100, 100, 200, 200),
                              min_visible=0.2)
    assert lab.tolist() == [1, 2, 3, 7]
    out, lab, _ = crop_target(np.zeros((0, 4)), np.zeros(0), (0, 0, 10, 10))
    assert out.shape == (0, 4)


def test_dihedral_boxes():
    b = np.array([[10, 20, 30, 60]], np.float32)  # in a 100 (h) x 80 (w) image
    np.testing.assert_allclose(dihedral_boxes(b, 100, 80, False, True), [[10, 40, 30, 80]])
    np.testing.assert_allclose(dihedral_boxes(b, 100, 80, True, False), [[20, 10, 60, 30]])
    np.testing.assert_allclose(dihedral_boxes(b, 100, 80, True, True), [[20, 50, 60, 70]])


class PaintedPhoto:
    """One large 'photo' whose objects are painted white squares (to check pixels vs boxes)."""

    classes = ("tree",)

    def __init__(self, h=300, w=420, n=40, seed=0):
        rng = np.random.default_rng(seed)
        xy = rng.uniform(0, [w - 20, h - 20], size=(n, 2)).round()
        s = rng.integers(6, 20, size=(n, 1))
        self.boxes = np.concatenate([xy, xy + s], 1).astype(np.float32)
        self.h, self.w = h, w
        self.image = torch.zeros(3, h, w, dtype=torch.uint8)
        for x1, y1, x2, y2 in self.boxes.astype(int):
            self.image[:, y1:y2, x1:x2] = 255
        self.reads = 0

    def __len__(self):
        return 1

    def annotation(self, i):
        return Annotation(0, "photo.png", self.h, self.w, self.boxes, np.ones(len(self.boxes), np.int64))

    def __getitem__(self, i):
        self.reads += 1
        return self.image.clone(), self.annotation(i).as_target()


@pytest.mark.parametrize("dihedral", [False, True])
def test_random_crop_dataset(dihedral):
    photo = PaintedPhoto()
    ds = RandomCropDataset(photo, 128, crops_per_image=12, seed=3, dihedral=dihedral, min_visible=1.0)
    assert len(ds) == 12 and ds.classes == ("tree",)
    windows, kept = set(), 0
    for k in range(len(ds)):
        image, target = ds[k]
        ann = ds.annotation(k)
        assert image.shape == (3, 128, 128) and image.dtype == torch.uint8
        assert (ann.height, ann.width) == (128, 128)
        np.testing.assert_array_equal(target["boxes"].numpy(), ann.boxes)
        for x1, y1, x2, y2 in ann.boxes.astype(int):  # every kept (whole) box is a white square
            assert image[:, y1:y2, x1:x2].min() == 255
        kept += len(ann.boxes)
        windows.add(target["window"])
    assert len(windows) > 6  # different crops
    assert kept > 0  # the white-square check saw boxes
    again = RandomCropDataset(photo, 128, crops_per_image=12, seed=3, dihedral=dihedral)
    assert torch.equal(again[5][0], ds[5][0])  # deterministic from (seed, index)
    assert photo.reads <= 2  # decoded images are cached
    with pytest.raises(IndexError):
        ds[12]


def test_random_crop_dataset_small_image_and_loader():
    photo = PaintedPhoto(h=90, w=100, n=5)
    ds = RandomCropDataset(photo, 128, crops_per_image=4, seed=0)
    assert ds[0][0].shape == (3, 90, 100)  # smaller than a crop: used whole
    tl = build_train_loader(ds, TrainConfig(images_per_batch=2, num_workers=0))
    images, targets = next(iter(tl.loader))
    assert len(images) == 2 and images[0].dtype == torch.float32


def test_anchor_coverage_small_boxes():
    rng = np.random.default_rng(0)
    c = rng.uniform(50, 400, size=(200, 2))
    s = rng.uniform(22, 28, size=(200, 1))  # ~25-px tree crowns
    boxes = np.concatenate([c - s / 2, c + s / 2], 1)
    paper = preset("vgg16-voc07").model.anchors
    assert anchor_coverage(boxes, paper.sizes, paper.aspect_ratios)[0.5] == 0.0
    assert anchor_coverage(boxes, (16, 32), (0.5, 1.0, 2.0))[0.5] > 0.9
    trees = preset("mobilenetv2-trees").model.anchors
    assert anchor_coverage(boxes, trees.sizes, trees.aspect_ratios)[0.7] > 0.9
    sizes, _ = suggest_anchors(boxes, 3, 3)
    assert all(20 <= v <= 30 for v in sizes)
