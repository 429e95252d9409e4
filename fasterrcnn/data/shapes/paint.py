"""Painting a layout: background, clutter, object colours and shading, noise.

:func:`paint_layout` renders a :class:`~fasterrcnn.data.shapes.layout.ShapesLayout`;
:func:`render_shapes_image` makes one whole sample from a generator (layout, then pixels) and
:func:`layout_for` the same layout without the pixels: the two split the generator alike, so
they stay side by side.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw

from fasterrcnn.data.shapes.layout import ShapeObject, ShapesLayout, ShapesSpec, sample_layout
from fasterrcnn.data.shapes.masks import _centres

_BILINEAR = getattr(Image, "Resampling", Image).BILINEAR
_BICUBIC = getattr(Image, "Resampling", Image).BICUBIC


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
    """One sample: (image [H, W, 3] uint8, boxes [N, 4] float32 xyxy, labels [N] int64 1..K).

    The boxes are the kind ``spec.boxes`` names (see :meth:`ShapesLayout.annotated_boxes`)."""
    layout_rng, paint_rng = _child_rngs(rng, 2)
    layout = sample_layout(layout_rng, spec)
    return (paint_layout(layout, paint_rng, spec), layout.annotated_boxes(spec.boxes),
            layout.labels())


def layout_for(rng: np.random.Generator, spec: ShapesSpec = ShapesSpec()) -> ShapesLayout:
    """The layout :func:`render_shapes_image` would draw from this ``rng`` state (no pixels)."""
    layout_rng, _ = _child_rngs(rng, 2)
    return sample_layout(layout_rng, spec)
