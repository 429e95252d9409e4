"""The built-in synthetic detection dataset ("shapes"): no download, fully deterministic.

Shapes: H x W image size (each side uniform in ``[min_side, max_side]``); N objects per image;
image arrays ``[H, W, 3]`` uint8 (numpy) or ``[3, H, W]`` uint8 (torch); boxes ``[N, 4]`` xyxy.

Five classes of solid geometric shapes (:data:`SHAPES_CLASSES`, labels 1..5):

  * ``ellipse``   filled ellipse;
  * ``rectangle`` filled axis-aligned rectangle;
  * ``triangle``  filled triangle, apex anywhere on one side, four orientations;
  * ``cross``     plus-shaped cross, random bar thickness and bar offsets;
  * ``ring``      hollow ellipse (annulus), random hole size; the hole shows what is behind.

Each object has a random colour (kept at least ``min_contrast`` away, in RGB, from the local
background and from the objects it touches). With ``class_hues`` (the default) the hue comes from
a band of its class (hue centres 72 degrees apart: ellipse red, rectangle yellow-green, triangle
green, cross azure, ring purple; +-18 degrees, random saturation and brightness), so that a small network trained from
scratch on a CPU for minutes can tell the classes apart; ``class_hues=False`` draws any colour
and leaves the shape as the only cue (a harder variant). Objects also get a mild linear
shading, a log-uniform size (``sqrt(w * h)`` in ``[min_object, max_object]``) and a log-uniform
aspect ratio ``w / h`` in ``[1 / max_aspect, max_aspect]``. Objects lie inside the image, may
overlap (box IoU at most ``max_iou``) and occlude each other (later ones on top), but every object
keeps at least ``min_visible`` of its pixels visible. The box is the tight box of the *full* shape.

Backgrounds are cluttered with things that are not objects: smooth colour gradients, mottled
low-contrast texture, faint stripes, thin curves (1-2 px wide), small specks (< 6 px) and pixel
noise; a few curves and specks are drawn over the objects too.

Generation is split in two so that annotations are cheap: :func:`sample_layout` draws the image
size and the objects (geometry only), :func:`paint_layout` renders the pixels. Image ``i`` of a
split depends only on ``(seed, split, i)``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from PIL import Image, ImageDraw

from fasterrcnn.config import ConfigError
from fasterrcnn.data.dataset import Annotation, DataError

SHAPES_CLASSES: tuple[str, ...] = ("ellipse", "rectangle", "triangle", "cross", "ring")
SPLIT_IDS: dict[str, int] = {"train": 0, "val": 1, "test": 2}

_BILINEAR = getattr(Image, "Resampling", Image).BILINEAR
_BICUBIC = getattr(Image, "Resampling", Image).BICUBIC


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
    class_hues: bool = True  # each class draws its hue from its own band (see module docstring)
    clutter: float = 1.0  # scales background clutter and noise; 0 = plain smooth gradient
    placement_tries: int = 30  # positions tried per object before it is dropped

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
        """[N, 4] float32 xyxy."""
        return np.asarray([o.box for o in self.objects], np.float32).reshape(-1, 4)

    def labels(self) -> np.ndarray:
        """[N] int64 in 1..K."""
        return np.asarray([o.label for o in self.objects], np.int64).reshape(-1)

    def visible_fractions(self) -> np.ndarray:
        """[N] fraction of each object's pixels not covered by later objects."""
        owner = np.full((self.height, self.width), -1, np.int32)
        for k, o in enumerate(self.objects):
            h, w = o.mask.shape
            owner[o.y0 : o.y0 + h, o.x0 : o.x0 + w][o.mask] = k
        counts = np.bincount(owner.ravel() + 1, minlength=len(self.objects) + 1)[1:]
        areas = np.asarray([o.mask.sum() for o in self.objects], np.float64)
        return counts / np.maximum(areas, 1.0)


# --------------------------------------------------------------------------- shape masks


def _centres(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates normalised to [0, 1]: v [h, 1], u [1, w]."""
    v = ((np.arange(h, dtype=np.float32) + 0.5) / h)[:, None]
    u = ((np.arange(w, dtype=np.float32) + 0.5) / w)[None, :]
    return v, u


def ellipse_mask(h: int, w: int) -> np.ndarray:
    """Filled ellipse inscribed in an h x w box."""
    v, u = _centres(h, w)
    return (2 * u - 1) ** 2 + (2 * v - 1) ** 2 <= 1.0


def rectangle_mask(h: int, w: int) -> np.ndarray:
    """Filled h x w rectangle."""
    return np.ones((h, w), bool)


def triangle_mask(h: int, w: int, apex: float, turns: int) -> np.ndarray:
    """Filled triangle: apex at ``apex`` (0..1) along one side, base along the opposite side.

    ``turns`` quarter turns (0: apex on top) rotate the shape; the box stays h x w.
    """
    hh, ww = (w, h) if turns % 2 else (h, w)
    v, u = _centres(hh, ww)
    inside = (u >= apex * (1 - v)) & (u <= apex + (1 - apex) * v)
    return np.rot90(inside, turns % 4).copy()


def cross_mask(h: int, w: int, thick_h: float, thick_w: float, cy: float, cx: float) -> np.ndarray:
    """Plus sign: a full-width bar (height ``thick_h * h`` at row ``cy``) and a full-height bar."""
    v, u = _centres(h, w)
    return (np.abs(v - cy) <= thick_h / 2) | (np.abs(u - cx) <= thick_w / 2)


def ring_mask(h: int, w: int, inner: float) -> np.ndarray:
    """Elliptic annulus in an h x w box; the hole has ``inner`` times the outer radii."""
    v, u = _centres(h, w)
    d = (2 * u - 1) ** 2 + (2 * v - 1) ** 2
    return (d <= 1.0) & (d > inner * inner)


def _random_mask(rng: np.random.Generator, label: int, h: int, w: int) -> np.ndarray:
    """Mask of class ``label`` (1..5) with random class-specific parameters."""
    name = SHAPES_CLASSES[label - 1]
    if name == "ellipse":
        return ellipse_mask(h, w)
    if name == "rectangle":
        return rectangle_mask(h, w)
    if name == "triangle":
        return triangle_mask(h, w, float(rng.uniform(0.0, 1.0)), int(rng.integers(0, 4)))
    if name == "cross":
        th, tw = rng.uniform(0.24, 0.4, size=2)
        cy = rng.uniform(max(0.32, th / 2), min(0.68, 1 - th / 2))
        cx = rng.uniform(max(0.32, tw / 2), min(0.68, 1 - tw / 2))
        return cross_mask(h, w, float(th), float(tw), float(cy), float(cx))
    return ring_mask(h, w, float(rng.uniform(0.4, 0.65)))


def _crop_tight(mask: np.ndarray) -> tuple[np.ndarray, int, int]:
    """Crop ``mask`` to its tight bounding box; returns (mask, dx, dy) offsets of the crop."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1], int(cols[0]), int(rows[0])


# --------------------------------------------------------------------------- layout


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


# --------------------------------------------------------------------------- painting


def _smooth_field(
    rng: np.random.Generator, height: int, width: int, grid: tuple[int, int], lo: float, hi: float,
    resample: int,
) -> np.ndarray:
    """[H, W, 3] float32 field: random colours on a coarse grid, interpolated up."""
    coarse = rng.uniform(lo, hi, size=(grid[0], grid[1], 3)).round().astype(np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((width, height), resample), np.float32)


def _background(rng: np.random.Generator, height: int, width: int, clutter: float) -> np.ndarray:
    """[H, W, 3] float32: colour gradient + mottled texture + faint stripes (scaled by clutter)."""
    gh, gw = rng.integers(2, 5, size=2)
    image = _smooth_field(rng, height, width, (int(gh), int(gw)), 15, 240, _BICUBIC)
    if clutter <= 0:
        return image
    cell = float(rng.uniform(6, 16))
    amp = 18.0 * clutter
    grid = (max(2, round(height / cell)), max(2, round(width / cell)))
    texture = _smooth_field(rng, height, width, grid, 128 - amp, 128 + amp, _BILINEAR) - 128.0
    image += texture.mean(axis=2, keepdims=True) * 0.6 + texture * 0.4
    if rng.random() < 0.5:
        theta = rng.uniform(0, math.pi)
        period = rng.uniform(5, 24)
        yy = np.arange(height, dtype=np.float32)[:, None]
        xx = np.arange(width, dtype=np.float32)[None, :]
        phase = (xx * math.cos(theta) + yy * math.sin(theta)) * (2 * math.pi / period)
        image += (rng.uniform(4, 12) * clutter * np.sin(phase))[:, :, None]
    return image


def _draw_curves(draw: ImageDraw.ImageDraw, rng: np.random.Generator, count: int, height: int,
                 width: int, max_width: int) -> None:
    """Thin quadratic Bezier curves in random colours (never closed, never filled)."""
    t = np.linspace(0.0, 1.0, 17)[:, None]
    for _ in range(count):
        p0 = rng.uniform((0, 0), (width, height))
        length = rng.uniform(20, 0.6 * max(height, width))
        angle = rng.uniform(0, 2 * math.pi)
        p2 = p0 + length * np.array([math.cos(angle), math.sin(angle)])
        normal = np.array([-math.sin(angle), math.cos(angle)])
        p1 = (p0 + p2) / 2 + normal * length * rng.uniform(-0.5, 0.5)
        pts = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        line_width = int(rng.integers(1, max_width + 1))
        draw.line([tuple(p) for p in pts.tolist()], fill=colour, width=line_width)


def _draw_specks(draw: ImageDraw.ImageDraw, rng: np.random.Generator, count: int, height: int,
                 width: int) -> None:
    """Small dots and squares, 1..5 px across."""
    for _ in range(count):
        x, y = rng.uniform((0, 0), (width, height))
        d = float(rng.uniform(1.0, 5.0))
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        xy = (x, y, x + d - 1, y + d - 1)
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(xy, fill=colour)


def _with_pil(image: np.ndarray, fn: Callable[[ImageDraw.ImageDraw], None]) -> np.ndarray:
    """Apply PIL drawing ``fn`` to a float [H, W, 3] image; returns float32."""
    pil = Image.fromarray(np.clip(image, 0, 255).round().astype(np.uint8))
    fn(ImageDraw.Draw(pil))
    return np.asarray(pil, np.float32).copy()


def _clutter_painter(
    rng: np.random.Generator, clutter: float, height: int, width: int,
    curves: tuple[int, int], specks: tuple[int, int], max_width: int,
) -> Callable[[ImageDraw.ImageDraw], None]:
    """A drawing function adding ``clutter``-scaled random curves and specks."""
    n_curves = round(clutter * int(rng.integers(*curves)))
    n_specks = round(clutter * int(rng.integers(*specks)))

    def paint(draw: ImageDraw.ImageDraw) -> None:
        _draw_curves(draw, rng, n_curves, height, width, max_width)
        _draw_specks(draw, rng, n_specks, height, width)

    return paint


HUE_BAND = 18.0  # degrees either side of a class's hue centre


def _hue_candidates(rng: np.random.Generator, label: int, n: int) -> np.ndarray:
    """[n, 3] RGB colours whose hue lies in the band of ``label`` (centres 72 degrees apart)."""
    hue = ((label - 1) * 72.0 + rng.uniform(-HUE_BAND, HUE_BAND, size=n)) % 360.0 / 60.0
    sat = rng.uniform(0.55, 1.0, size=n)
    val = rng.uniform(0.45, 1.0, size=n)
    chroma = val * sat
    x = chroma * (1 - np.abs(hue % 2 - 1))
    zero = np.zeros(n)
    sector = np.floor(hue).astype(int) % 6
    table = [(chroma, x, zero), (x, chroma, zero), (zero, chroma, x),
             (zero, x, chroma), (x, zero, chroma), (chroma, zero, x)]
    rgb = np.empty((n, 3))
    for k, (r, g, b) in enumerate(table):
        sel = sector == k
        rgb[sel] = np.stack((r[sel], g[sel], b[sel]), axis=1)
    return ((rgb + (val - chroma)[:, None]) * 255.0).astype(np.float32)


def _pick_colour(
    rng: np.random.Generator, refs: np.ndarray, min_dist: float, label: int | None = None
) -> np.ndarray:
    """A random RGB colour at least ``min_dist`` from every row of ``refs`` (or the farthest);
    from the hue band of ``label`` when given."""
    if label is None:
        cand = rng.integers(0, 256, size=(48, 3)).astype(np.float32)
    else:
        cand = _hue_candidates(rng, label, 48)
    dist = np.sqrt(((cand[:, None, :] - refs[None, :, :]) ** 2).sum(-1)).min(axis=1)
    ok = np.flatnonzero(dist >= min_dist)
    return cand[ok[0] if len(ok) else int(np.argmax(dist))]


def _paint_objects(
    image: np.ndarray,
    rng: np.random.Generator,
    objects: tuple[ShapeObject, ...],
    min_contrast: float,
    class_hues: bool = False,
) -> None:
    """Draw objects in order onto ``image`` (float [H, W, 3], in place)."""
    colours: list[np.ndarray] = []
    for k, o in enumerate(objects):
        h, w = o.mask.shape
        patch = image[o.y0 : o.y0 + h, o.x0 : o.x0 + w]
        hy, hx = max(1, h // 2), max(1, w // 2)
        refs = [q.reshape(-1, 3).mean(axis=0) for q in (
            patch[:hy, :hx], patch[:hy, hx:], patch[hy:, :hx], patch[hy:, hx:]) if q.size]
        x0, y0, x1, y1 = o.box
        for j in range(k):
            a = objects[j].box
            if a[0] <= x1 + 2 and x0 - 2 <= a[2] and a[1] <= y1 + 2 and y0 - 2 <= a[3]:
                refs.append(colours[j])
        colour = _pick_colour(rng, np.stack(refs), min_contrast, o.label if class_hues else None)
        colours.append(colour)
        v, u = _centres(h, w)
        angle = rng.uniform(0, 2 * math.pi)
        ramp = (u - 0.5) * math.cos(angle) + (v - 0.5) * math.sin(angle)
        shaded = colour[None, None, :] + (rng.uniform(10, 35) * ramp)[:, :, None]
        patch[o.mask] = shaded[o.mask]


def _child_rngs(rng: np.random.Generator, n: int) -> list[np.random.Generator]:
    """``n`` independent generators derived from ``rng`` (consumes a fixed amount of it)."""
    return [np.random.default_rng(int(s)) for s in rng.integers(0, 2**63 - 1, size=n)]


def paint_layout(layout: ShapesLayout, rng: np.random.Generator, spec: ShapesSpec) -> np.ndarray:
    """Render ``layout``: [H, W, 3] uint8 RGB.

    Background, objects and the overlay (clutter on top + noise) use separate random streams, so
    the background and overlay do not depend on the objects.
    """
    bg_rng, obj_rng, top_rng = _child_rngs(rng, 3)
    h, w, c = layout.height, layout.width, spec.clutter
    image = _background(bg_rng, h, w, c)
    if c > 0:
        image = _with_pil(image, _clutter_painter(bg_rng, c, h, w, (3, 13), (15, 60), 2))
    _paint_objects(image, obj_rng, layout.objects, spec.min_contrast, spec.class_hues)
    if c > 0:
        image = _with_pil(image, _clutter_painter(top_rng, c, h, w, (0, 3), (3, 15), 1))
        sigma = float(top_rng.uniform(2.0, 7.0)) * c
        image += sigma * top_rng.standard_normal((h, w, 3), dtype=np.float32)
    return np.clip(image, 0, 255).round().astype(np.uint8)


def render_shapes_image(
    rng: np.random.Generator, spec: ShapesSpec = ShapesSpec()
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One sample: (image [H, W, 3] uint8, boxes [N, 4] float32 xyxy, labels [N] int64 1..K)."""
    layout_rng, paint_rng = _child_rngs(rng, 2)
    layout = sample_layout(layout_rng, spec)
    return paint_layout(layout, paint_rng, spec), layout.boxes(), layout.labels()


def layout_for(rng: np.random.Generator, spec: ShapesSpec = ShapesSpec()) -> ShapesLayout:
    """The layout :func:`render_shapes_image` would draw from this ``rng`` state (no pixels)."""
    layout_rng, _ = _child_rngs(rng, 2)
    return sample_layout(layout_rng, spec)


# --------------------------------------------------------------------------- dataset


class ShapesDataset:
    """Deterministic synthetic detection dataset (a :class:`DetectionDataset`).

    Image ``i`` is generated from ``np.random.default_rng([seed, split_id, i])`` only. With
    ``cache`` the (small) annotations are kept in memory; images are re-rendered on each access.
    """

    classes: tuple[str, ...] = SHAPES_CLASSES

    def __init__(
        self,
        split: str = "train",
        num_images: int = 800,
        seed: int = 0,
        spec: ShapesSpec = ShapesSpec(),
        cache: bool = True,
    ) -> None:
        if split not in SPLIT_IDS:
            raise DataError(f"shapes: unknown split {split!r}; expected one of {sorted(SPLIT_IDS)}")
        if num_images < 0 or seed < 0:
            raise DataError(f"shapes: num_images and seed must be >= 0, got {num_images}, {seed}")
        self.split = split
        self.num_images = int(num_images)
        self.seed = int(seed)
        self.spec = spec
        self.cache = cache
        self._annotations: dict[int, Annotation] = {}

    def __len__(self) -> int:
        return self.num_images

    def __repr__(self) -> str:
        return (
            f"ShapesDataset(split={self.split!r}, num_images={self.num_images}, seed={self.seed})"
        )

    def _index(self, index: int) -> int:
        i = int(index)
        if i < 0:
            i += self.num_images
        if not 0 <= i < self.num_images:
            raise IndexError(f"shapes: index {index} out of range for {self.num_images} images")
        return i

    def _rng(self, i: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, SPLIT_IDS[self.split], i])

    def _make_annotation(self, i: int, boxes: np.ndarray, labels: np.ndarray, h: int, w: int
                         ) -> Annotation:
        return Annotation(i, f"shapes/{self.split}/{i:06d}.png", h, w, boxes, labels)

    def annotation(self, index: int) -> Annotation:
        """Ground truth of image ``index`` (geometry only; no pixels are rendered)."""
        i = self._index(index)
        ann = self._annotations.get(i)
        if ann is None:
            layout = layout_for(self._rng(i), self.spec)
            ann = self._make_annotation(
                i, layout.boxes(), layout.labels(), layout.height, layout.width
            )
            if self.cache:
                self._annotations[i] = ann
        return dataclasses.replace(
            ann, boxes=ann.boxes.copy(), labels=ann.labels.copy(),
            difficult=ann.difficult.copy(), iscrowd=ann.iscrowd.copy(),
        )

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict]:
        """(uint8 image [3, H, W], target dict of :meth:`Annotation.as_target`)."""
        i = self._index(index)
        image, boxes, labels = render_shapes_image(self._rng(i), self.spec)
        ann = self._make_annotation(i, boxes, labels, image.shape[0], image.shape[1])
        if self.cache:
            self._annotations.setdefault(i, ann)
        tensor = torch.from_numpy(image).permute(2, 0, 1).contiguous()
        return tensor, ann.as_target()
