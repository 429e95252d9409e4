"""The five shape classes and their masks: bool ``[h, w]`` arrays filling an h x w box.

Each class has a mask function (:func:`ellipse_mask`, ...); ``_random_mask`` draws the random
class-specific parameters (triangle apex, cross bars, ring hole) in a fixed order.
"""

from __future__ import annotations

import numpy as np

SHAPES_CLASSES: tuple[str, ...] = ("ellipse", "rectangle", "triangle", "cross", "ring")


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
