"""Tests of the synthetic shapes dataset: determinism, geometry invariants, API."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from fasterrcnn.config import ConfigError
from fasterrcnn.data.dataset import DataError, DetectionDataset
from fasterrcnn.data.shapes import (
    SHAPES_CLASSES,
    SPLIT_SPECS,
    ShapeObject,
    ShapesLayout,
    ShapesDataset,
    ShapesSpec,
    cross_mask,
    ellipse_mask,
    layout_for,
    paint_layout,
    rectangle_mask,
    render_shapes_image,
    ring_mask,
    sample_layout,
    triangle_mask,
)


def _pairwise_iou(boxes: np.ndarray) -> np.ndarray:
    b = boxes.astype(np.float64)
    lt = np.maximum(b[:, None, :2], b[None, :, :2])
    rb = np.minimum(b[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area = (b[:, 2:] - b[:, :2]).prod(-1)
    return inter / (area[:, None] + area[None, :] - inter)


@pytest.fixture(scope="module")
def train() -> ShapesDataset:
    return ShapesDataset("train", num_images=400, seed=0)


@pytest.fixture(scope="module")
def annotations(train: ShapesDataset) -> list:
    return [train.annotation(i) for i in range(len(train))]


def test_classes_and_protocol(train: ShapesDataset) -> None:
    assert SHAPES_CLASSES == ("ellipse", "rectangle", "triangle", "cross", "ring")
    assert train.classes == SHAPES_CLASSES
    assert isinstance(train, DetectionDataset)
    assert len(train) == 400


def test_item_types_and_target(train: ShapesDataset) -> None:
    image, target = train[3]
    assert image.dtype == torch.uint8 and image.ndim == 3 and image.shape[0] == 3
    assert target["size"] == tuple(image.shape[1:])
    assert target["boxes"].dtype == torch.float32 and target["labels"].dtype == torch.int64
    assert target["image_id"] == 3 and target["file_name"] == "shapes/train/000003.png"
    assert image.float().std() > 10  # not a blank canvas


def test_deterministic_and_order_independent() -> None:
    a = ShapesDataset("train", 20, seed=7, cache=False)
    b = ShapesDataset("train", 20, seed=7)
    later = b[11]  # accessed first in b, after other items in a
    for i in (0, 5):
        assert torch.equal(a[i][0], b[i][0])
    first = a[11]
    assert torch.equal(first[0], later[0]) and torch.equal(first[1]["boxes"], later[1]["boxes"])
    assert torch.equal(a[11][0], first[0])  # repeated access
    assert torch.equal(a[-1][0], a[19][0])


def test_split_settings_crowded_training_scenes() -> None:
    # only the object count differs: the training split draws 4-16 objects, val and test 1-8
    assert SPLIT_SPECS["train"] == ShapesSpec(min_objects=4, max_objects=16)
    assert ShapesDataset("train", 1).spec == SPLIT_SPECS["train"]
    assert ShapesDataset("val", 1).spec == ShapesDataset("test", 1).spec == ShapesSpec()
    given = ShapesSpec(max_objects=2)
    assert ShapesDataset("train", 1, spec=given).spec is given  # an explicit spec wins
    train, test = ShapesDataset("train", 60), ShapesDataset("test", 60)
    per_train = [len(train.annotation(i).labels) for i in range(60)]
    per_test = [len(test.annotation(i).labels) for i in range(60)]
    assert max(per_test) <= 8 < max(per_train) <= 16
    assert np.mean(per_train) > 1.8 * np.mean(per_test)


def test_seed_and_split_change_images() -> None:
    base = ShapesDataset("train", 4, seed=0)
    other_seed = ShapesDataset("train", 4, seed=1)
    test = ShapesDataset("test", 4, seed=0)
    val = ShapesDataset("val", 4, seed=0)
    for i in range(2):
        img = base[i][0]
        for ds in (other_seed, test, val):
            o = ds[i][0]
            assert o.shape != img.shape or not torch.equal(o, img)
    sizes = {(d.annotation(0).height, d.annotation(0).width) for d in (base, other_seed, test, val)}
    assert len(sizes) > 1


def test_boxes_inside_nondegenerate_labels(train: ShapesDataset, annotations: list) -> None:
    spec = train.spec
    with_boxes = 0
    for ann in annotations:
        assert spec.min_side <= ann.height <= spec.max_side
        assert spec.min_side <= ann.width <= spec.max_side
        b = ann.boxes
        assert b.dtype == np.float32 and ann.labels.dtype == np.int64
        assert len(ann.boxes) <= spec.max_objects
        if len(b) == 0:
            continue
        with_boxes += 1
        assert (b[:, 0] >= 0).all() and (b[:, 1] >= 0).all()
        assert (b[:, 2] <= ann.width).all() and (b[:, 3] <= ann.height).all()
        assert ((b[:, 2] - b[:, 0]) >= 3).all() and ((b[:, 3] - b[:, 1]) >= 3).all()
        assert ((ann.labels >= 1) & (ann.labels <= len(SHAPES_CLASSES))).all()
        assert not ann.difficult.any() and not ann.iscrowd.any()
    assert with_boxes > len(annotations) // 2  # the box checks ran on most images


def test_scale_aspect_class_and_size_variety(train: ShapesDataset, annotations: list) -> None:
    boxes = np.concatenate([a.boxes for a in annotations])
    labels = np.concatenate([a.labels for a in annotations])
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    side = np.sqrt(w * h)
    assert side.max() / side.min() >= 8.0
    aspect = w / h
    assert aspect.min() < 0.6 and aspect.max() > 1.7
    # the generator's aspect bound holds for the full shapes (occlusion may narrow a visible box)
    full = np.concatenate([
        layout_for(train._rng(i), train.spec).boxes() for i in range(200)])
    full_aspect = (full[:, 2] - full[:, 0]) / (full[:, 3] - full[:, 1])
    assert full_aspect.min() > 0.4 and full_aspect.max() < 2.5
    assert set(labels.tolist()) == set(range(1, len(SHAPES_CLASSES) + 1))
    assert len({a.height for a in annotations}) > 20 and len({a.width for a in annotations}) > 20
    counts = {len(a.boxes) for a in annotations}
    assert {0, 4, 16} <= counts  # empty images, the fewest and the most objects all occur


def test_overlaps_occur_but_bounded(train: ShapesDataset) -> None:
    spec = train.spec
    overlapping = 0
    for i in range(200):
        # the bound holds for the whole shapes' boxes, where placement checks it; a visible box,
        # shrunk by occlusion, can overlap a neighbour's somewhat more
        boxes = layout_for(train._rng(i), spec).boxes()
        if len(boxes) < 2:
            continue
        iou = _pairwise_iou(boxes)
        np.fill_diagonal(iou, 0.0)
        assert iou.max() <= spec.max_iou + 1e-6
        overlapping += int(iou.max() > 0)
    assert overlapping >= 20


def test_visible_fraction_respected() -> None:
    spec = ShapesSpec(max_objects=12, min_objects=8, min_visible=0.6)
    rng = np.random.default_rng(3)
    occluded = 0
    for _ in range(40):
        layout = sample_layout(rng, spec)
        vis = layout.visible_fractions()
        assert (vis >= spec.min_visible - 1e-9).all()
        occluded += int((vis < 1.0).sum())
    assert occluded > 0


def test_masks_are_tight_and_match_boxes() -> None:
    rng = np.random.default_rng(5)
    for _ in range(30):
        layout = sample_layout(rng, ShapesSpec())
        for o, box in zip(layout.objects, layout.boxes()):
            m = o.mask
            assert m[0].any() and m[-1].any() and m[:, 0].any() and m[:, -1].any()
            assert tuple(box.tolist()) == (o.x0, o.y0, o.x0 + m.shape[1], o.y0 + m.shape[0])


def test_visible_boxes_hand_made() -> None:
    """Exact visible boxes: B covers A's right 6 columns, C covers nothing and nothing covers it."""
    a = ShapeObject(1, 0, 0, np.ones((10, 10), bool))
    b = ShapeObject(2, 4, 2, np.ones((6, 8), bool))  # x 4..12, y 2..8
    c = ShapeObject(3, 20, 20, np.ones((4, 5), bool))
    layout = ShapesLayout(30, 30, (a, b, c))
    np.testing.assert_array_equal(
        layout.boxes(), [[0, 0, 10, 10], [4, 2, 12, 8], [20, 20, 25, 24]]
    )
    # A keeps columns 0..3 everywhere and columns 4..9 in rows 0-1 and 8-9: its box is unchanged
    np.testing.assert_array_equal(layout.visible_boxes()[0], [0, 0, 10, 10])
    # a full-height cover of A's right part shrinks A's visible box to x 0..4
    d = ShapeObject(2, 4, 0, np.ones((10, 8), bool))
    two = ShapesLayout(30, 30, (a, d))
    np.testing.assert_array_equal(two.visible_boxes(), [[0, 0, 4, 10], [4, 0, 12, 10]])
    np.testing.assert_array_equal(two.annotated_boxes("full"), two.boxes())
    np.testing.assert_array_equal(two.annotated_boxes("visible"), two.visible_boxes())
    with pytest.raises(ValueError, match="visible"):
        two.annotated_boxes("amodal")
    with pytest.raises(ConfigError, match="boxes"):
        ShapesSpec(boxes="amodal")


def test_visible_boxes_inside_full_boxes() -> None:
    """Visible boxes lie inside full boxes; they are equal exactly for objects nothing covers."""
    spec = ShapesSpec(max_objects=12, min_objects=8)
    rng = np.random.default_rng(11)
    shrunk = 0
    for _ in range(30):
        layout = sample_layout(rng, spec)
        full, vis = layout.boxes(), layout.visible_boxes()
        assert (vis[:, :2] >= full[:, :2]).all() and (vis[:, 2:] <= full[:, 2:]).all()
        assert (vis[:, 2:] > vis[:, :2]).all()
        fully_visible = layout.visible_fractions() == 1.0
        np.testing.assert_array_equal(vis[fully_visible], full[fully_visible])
        shrunk += int((vis != full).any(axis=1).sum())
    assert shrunk > 0


def test_dataset_box_kind() -> None:
    full = ShapesDataset("train", 40, spec=dataclasses.replace(SPLIT_SPECS["train"], boxes="full"))
    vis = ShapesDataset("train", 40)
    differ = 0
    for i in range(40):
        layout = layout_for(vis._rng(i), vis.spec)
        np.testing.assert_array_equal(vis.annotation(i).boxes, layout.visible_boxes())
        np.testing.assert_array_equal(full.annotation(i).boxes, layout.boxes())
        differ += int(not np.array_equal(vis.annotation(i).boxes, full.annotation(i).boxes))
    assert differ > 0
    _, target = vis[3]
    assert torch.equal(target["boxes"], torch.from_numpy(vis.annotation(3).boxes))


@pytest.mark.parametrize("clutter", [0.0, 1.0])
def test_drawn_pixels_fill_the_box(clutter: float) -> None:
    """The pixels that drawing an object changes have the gt box as their bounding box."""
    spec = ShapesSpec(min_objects=1, max_objects=1, empty_fraction=0.0, clutter=clutter)
    exact = 0
    for seed in range(12):
        layout = layout_for(np.random.default_rng(seed), spec)
        image = paint_layout(layout, np.random.default_rng(100 + seed), spec)
        empty = dataclasses.replace(layout, objects=())
        background = paint_layout(empty, np.random.default_rng(100 + seed), spec)
        assert image.shape == (layout.height, layout.width, 3)
        changed = (image != background).any(axis=2)
        ys, xs = np.nonzero(changed)
        drawn = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        box = layout.boxes()[0]
        # clutter drawn on top may hide an extreme pixel; without clutter the match is exact
        err = np.abs(drawn - box).max()
        assert err <= (1 if clutter == 0 else 6)
        exact += int(err <= 1)
    assert exact >= 10


def test_annotation_matches_item() -> None:
    for cache in (True, False):
        ds = ShapesDataset("test", 12, seed=2, cache=cache)
        before = ds.annotation(4)
        for i in range(12):
            image, target = ds[i]
            ann = ds.annotation(i)
            assert (ann.height, ann.width) == tuple(image.shape[1:])
            got = ann.as_target()
            for k in ("boxes", "labels", "difficult", "iscrowd"):
                assert torch.equal(got[k], target[k]), k
            for k in ("image_id", "file_name", "size"):
                assert got[k] == target[k], k
        assert np.array_equal(before.boxes, ds.annotation(4).boxes)
        before.boxes[:] = -1  # callers cannot corrupt the cache
        assert (ds.annotation(4).boxes >= 0).all()


def test_empty_images() -> None:
    ds = ShapesDataset("train", 5, spec=ShapesSpec(empty_fraction=1.0))
    for i in range(3):
        image, target = ds[i]
        assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)
        assert image.shape[0] == 3 and image.float().std() > 5
        assert len(ds.annotation(i).boxes) == 0
    spec = ShapesSpec(empty_fraction=1.0)
    image, boxes, labels = render_shapes_image(np.random.default_rng(0), spec)
    assert image.dtype == np.uint8 and boxes.shape == (0, 4) and labels.shape == (0,)


def test_custom_spec_sizes() -> None:
    spec = ShapesSpec(min_side=100, max_side=120, min_object=10, max_object=40, max_objects=3)
    ds = ShapesDataset("val", 30, spec=spec)
    for i in range(30):
        ann = ds.annotation(i)
        assert 100 <= ann.height <= 120 and 100 <= ann.width <= 120
        assert len(ann.boxes) <= 3
        side = np.sqrt((ann.boxes[:, 2:] - ann.boxes[:, :2]).prod(1))
        assert (side <= 40 * 1.05).all()
    image, _ = ds[0]
    assert tuple(image.shape[1:]) == (ds.annotation(0).height, ds.annotation(0).width)


def test_shape_masks() -> None:
    for m in (ellipse_mask(20, 30), rectangle_mask(20, 30), ring_mask(20, 30, 0.5),
              cross_mask(20, 30, 0.3, 0.3, 0.5, 0.5)):
        assert m.shape == (20, 30) and m.dtype == bool
        assert m[0].any() and m[-1].any() and m[:, 0].any() and m[:, -1].any()
    assert not ring_mask(21, 21, 0.5)[10, 10] and ellipse_mask(21, 21)[10, 10]
    cross = cross_mask(21, 21, 0.3, 0.3, 0.5, 0.5)
    assert cross[10, 10] and not cross[0, 0] and not cross[-1, -1]
    up = triangle_mask(20, 20, 0.5, 0)
    # the sharp apex may miss its pixel centre: layouts crop masks tight (tested above)
    for turns in range(4):
        t = triangle_mask(20, 30, 0.3, turns)
        assert t.shape == (20, 30) and t.sum() > 0.4 * 20 * 30
    assert up[-1].sum() > up[1].sum()  # apex on top, base at the bottom
    assert not ellipse_mask(20, 20)[0, 0]


def test_errors() -> None:
    with pytest.raises(DataError):
        ShapesDataset("training")
    with pytest.raises(DataError):
        ShapesDataset("train", seed=-1)
    with pytest.raises(ConfigError):
        ShapesSpec(min_side=300, max_side=200)
    with pytest.raises(ConfigError):
        ShapesSpec(max_iou=1.5)
    ds = ShapesDataset("train", 3)
    with pytest.raises(IndexError):
        ds[3]
    with pytest.raises(IndexError):
        ds.annotation(-4)
    assert len(list(ds)) == 3  # sequence iteration stops at the end


def test_class_hues_give_each_class_its_hue_band():
    import colorsys

    from fasterrcnn.data.shapes import HUE_BAND, ShapesSpec, layout_for, paint_layout

    spec = ShapesSpec(clutter=0.0, max_objects=1, min_objects=1, empty_fraction=0.0, min_object=40.0)
    for i in range(12):
        layout = layout_for(np.random.default_rng([7, i]), spec)
        image = paint_layout(layout, np.random.default_rng([8, i]), spec)
        obj = layout.objects[0]
        patch = image[obj.y0 : obj.y0 + obj.mask.shape[0], obj.x0 : obj.x0 + obj.mask.shape[1]]
        r, g, b = (patch[obj.mask].mean(axis=0) / 255.0).tolist()
        hue = colorsys.rgb_to_hsv(r, g, b)[0] * 360.0
        centre = (obj.label - 1) * 72.0
        distance = min(abs(hue - centre), 360 - abs(hue - centre))
        assert distance <= HUE_BAND + 12.0, (obj.label, hue)  # + shading


def test_in_memory_dataset_with_workers_holds_the_same_items_in_order():
    from fasterrcnn.data.dataset import InMemoryDataset

    base = ShapesDataset("train", 40, seed=3)  # three chunks of the loader
    plain, parallel = InMemoryDataset(base), InMemoryDataset(base, workers=2)
    assert len(parallel) == 40 and parallel.classes == base.classes
    for i in range(40):
        (a, ta), (b, tb) = plain[i], parallel[i]
        assert torch.equal(a, b) and a.dtype == b.dtype == torch.uint8
        assert ta.keys() == tb.keys()
        for k in ta:  # tensors stay tensors, tuples stay tuples (no collation)
            assert type(ta[k]) is type(tb[k]), k
            assert torch.equal(ta[k], tb[k]) if isinstance(ta[k], torch.Tensor) else ta[k] == tb[k]
        assert np.array_equal(plain.annotation(i).boxes, parallel.annotation(i).boxes)
