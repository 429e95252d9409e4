"""Where the objects go: generator settings (:class:`ShapesSpec`) and the layout of one image.

:func:`sample_layout` draws the image size and, per object, its class, size, aspect ratio and a
position that keeps box overlaps and occlusion within the settings (geometry only, no pixels).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from fasterrcnn.config import ConfigError
from fasterrcnn.data.shapes.masks import SHAPES_CLASSES, _crop_tight, _random_mask


@dataclass(frozen=True)
class ShapesSpec:
    """Generator settings (all sizes in pixels)."""

    min_side: int = 224  # image height and width are each uniform in [min_side, max_side]
    max_side: int = 352
    min_object: float = 16.0  # object size sqrt(w * h), log-uniform in [min_object, max_object]
    max_object: float = 144.0
    max_aspect: float = 2.0  # box w / h log-uniform in [1 / max_aspect, max_aspect]
    min_objects: int = 1  # objects per non-empty image: uniform in [min_objects, max_objects]
    max_objects: int = 8
    empty_fraction: float = 0.03  # probability that an image has no objects at all
    max_iou: float = 0.35  # largest IoU allowed between two gt boxes
    min_visible: float = 0.6  # smallest visible fraction of every object's pixels
    min_contrast: float = 90.0  # RGB distance of an object's colour to its surroundings
    class_hues: bool = True  # each class draws its hue from its own band (see package docstring)
    clutter: float = 1.0  # scales background clutter and noise; 0 = plain smooth gradient
    placement_tries: int = 30  # positions tried per object before it is dropped
    boxes: str = "visible"  # "visible": tight box of the pixels left visible (VOC/COCO); "full"

    def __post_init__(self) -> None:
        if not 8 <= self.min_side <= self.max_side:
            raise ConfigError(
                f"need 8 <= min_side <= max_side, got {self.min_side}, {self.max_side}"
            )
        if not 4.0 <= self.min_object <= self.max_object:
            raise ConfigError(
                f"need 4 <= min_object <= max_object, got {self.min_object}, {self.max_object}"
            )
        if self.max_aspect < 1.0:
            raise ConfigError(f"max_aspect must be >= 1, got {self.max_aspect}")
        if not 0 <= self.min_objects <= self.max_objects:
            raise ConfigError(
                f"need 0 <= min_objects <= max_objects, got {self.min_objects}, {self.max_objects}"
            )
        for name in ("empty_fraction", "max_iou", "min_visible"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.boxes not in ("visible", "full"):
            raise ConfigError(f"boxes must be 'visible' or 'full', got {self.boxes!r}")
        if self.min_contrast < 0 or self.clutter < 0 or self.placement_tries < 1:
            raise ConfigError("min_contrast and clutter must be >= 0, placement_tries >= 1")


@dataclass(frozen=True, eq=False)
class ShapeObject:
    """One placed object: ``mask`` [h, w] bool is tight (touches all four borders)."""

    label: int  # 1..K
    x0: int
    y0: int
    mask: np.ndarray = field(repr=False)

    @property
    def box(self) -> tuple[int, int, int, int]:
        h, w = self.mask.shape
        return (self.x0, self.y0, self.x0 + w, self.y0 + h)


@dataclass(frozen=True, eq=False)
class ShapesLayout:
    """Image size and objects in drawing order (later objects occlude earlier ones)."""

    height: int
    width: int
    objects: tuple[ShapeObject, ...]

    def boxes(self) -> np.ndarray:
        """[N, 4] float32 xyxy: the tight box of each *full* shape (occluded parts included)."""
        return np.asarray([o.box for o in self.objects], np.float32).reshape(-1, 4)

    def visible_boxes(self) -> np.ndarray:
        """[N, 4] float32 xyxy: the tight box of the pixels each object keeps visible.

        This is what VOC and COCO annotate ("all visible pixels of the object"); it equals
        :meth:`boxes` for objects nothing covers.
        """
        owner = self._owner()
        out = np.zeros((len(self.objects), 4), np.float32)
        for k, o in enumerate(self.objects):
            h, w = o.mask.shape
            ys, xs = np.nonzero(owner[o.y0 : o.y0 + h, o.x0 : o.x0 + w] == k)
            if len(xs):  # sample_layout keeps min_visible > 0 of every object
                out[k] = (o.x0 + xs.min(), o.y0 + ys.min(), o.x0 + xs.max() + 1, o.y0 + ys.max() + 1)
            else:
                out[k] = o.box
        return out

    def annotated_boxes(self, kind: str) -> np.ndarray:
        """[N, 4] float32 xyxy: :meth:`visible_boxes` (``"visible"``) or :meth:`boxes` (``"full"``)."""
        if kind == "visible":
            return self.visible_boxes()
        if kind == "full":
            return self.boxes()
        raise ValueError(f"box kind must be 'visible' or 'full', got {kind!r}")

    def labels(self) -> np.ndarray:
        """[N] int64 in 1..K."""
        return np.asarray([o.label for o in self.objects], np.int64).reshape(-1)

    def _owner(self) -> np.ndarray:
        """[H, W] int32: index of the topmost object at each pixel, -1 for background."""
        owner = np.full((self.height, self.width), -1, np.int32)
        for k, o in enumerate(self.objects):
            h, w = o.mask.shape
            owner[o.y0 : o.y0 + h, o.x0 : o.x0 + w][o.mask] = k
        return owner

    def visible_fractions(self) -> np.ndarray:
        """[N] fraction of each object's pixels not covered by later objects."""
        owner = self._owner()
        counts = np.bincount(owner.ravel() + 1, minlength=len(self.objects) + 1)[1:]
        areas = np.asarray([o.mask.sum() for o in self.objects], np.float64)
        return counts / np.maximum(areas, 1.0)


def _box_iou(box: tuple[int, int, int, int], others: np.ndarray) -> np.ndarray:
    """IoU of one xyxy box against [M, 4] boxes."""
    if len(others) == 0:
        return np.zeros(0)
    ix = np.clip(np.minimum(box[2], others[:, 2]) - np.maximum(box[0], others[:, 0]), 0, None)
    iy = np.clip(np.minimum(box[3], others[:, 3]) - np.maximum(box[1], others[:, 1]), 0, None)
    inter = ix * iy
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    return inter / (area + areas - inter)


def _sample_object_mask(
    rng: np.random.Generator, spec: ShapesSpec, height: int, width: int
) -> tuple[int, np.ndarray]:
    """A random class and its tight mask (size/aspect sampled, shrunk to fit the image)."""
    label = int(rng.integers(1, len(SHAPES_CLASSES) + 1))
    size = math.exp(rng.uniform(math.log(spec.min_object), math.log(spec.max_object)))
    log_a = math.log(spec.max_aspect)
    aspect = math.exp(rng.uniform(-log_a, log_a))  # w / h
    w, h = size * math.sqrt(aspect), size / math.sqrt(aspect)
    shrink = min(1.0, (width - 2) / w, (height - 2) / h)
    w, h = max(3, round(w * shrink)), max(3, round(h * shrink))
    mask, _, _ = _crop_tight(_random_mask(rng, label, h, w))
    return label, mask


def sample_layout(rng: np.random.Generator, spec: ShapesSpec) -> ShapesLayout:
    """Image size and objects of one image (geometry only; no pixels are rendered)."""
    height = int(rng.integers(spec.min_side, spec.max_side + 1))
    width = int(rng.integers(spec.min_side, spec.max_side + 1))
    if rng.random() < spec.empty_fraction:
        return ShapesLayout(height, width, ())
    n = int(rng.integers(spec.min_objects, spec.max_objects + 1))
    owner = np.full((height, width), -1, np.int32)  # index of the topmost object per pixel
    visible: list[int] = []  # visible pixel count per placed object
    areas: list[int] = []
    objects: list[ShapeObject] = []
    boxes = np.zeros((0, 4), np.float64)
    for _ in range(n):
        label, mask = _sample_object_mask(rng, spec, height, width)
        h, w = mask.shape
        xs = rng.integers(0, width - w + 1, size=spec.placement_tries)
        ys = rng.integers(0, height - h + 1, size=spec.placement_tries)
        for x0, y0 in zip(xs.tolist(), ys.tolist()):
            box = (x0, y0, x0 + w, y0 + h)
            if np.any(_box_iou(box, boxes) > spec.max_iou):
                continue
            region = owner[y0 : y0 + h, x0 : x0 + w]
            covered = region[mask]
            lost = np.bincount(covered + 1, minlength=len(objects) + 1)[1:]
            if any(
                (visible[k] - lost[k]) < spec.min_visible * areas[k] for k in np.flatnonzero(lost)
            ):
                continue
            for k in np.flatnonzero(lost):
                visible[k] -= int(lost[k])
            region[mask] = len(objects)
            area = int(mask.sum())
            visible.append(area)
            areas.append(area)
            objects.append(ShapeObject(label, x0, y0, mask))
            boxes = np.concatenate([boxes, np.asarray([box], np.float64)])
            break
    return ShapesLayout(height, width, tuple(objects))
