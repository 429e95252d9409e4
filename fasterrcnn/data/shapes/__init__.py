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
keeps at least ``min_visible`` of its pixels visible. The box is the tight box of the object's
*visible* pixels, as VOC and COCO annotate (``boxes="full"``: of the whole shape, occluded parts
included).

Backgrounds are cluttered with things that are not objects: smooth colour gradients, mottled
low-contrast texture, faint stripes, thin curves (1-2 px wide), small specks (< 6 px) and pixel
noise; a few curves and specks are drawn over the objects too.

The training split draws more crowded scenes than val and test (4-16 objects per image instead
of 1-8; :data:`SPLIT_SPECS`), so that each training step sees more small, overlapping and partly
hidden objects; everything else is generated alike.

Generation is split in two so that annotations are cheap: :func:`sample_layout` draws the image
size and the objects (geometry only), :func:`paint_layout` renders the pixels. Image ``i`` of a
split depends only on ``(seed, split, i)``.

Modules: :mod:`~fasterrcnn.data.shapes.masks` (the classes and their shape masks),
:mod:`~fasterrcnn.data.shapes.layout` (settings, sizes, positions and occlusion),
:mod:`~fasterrcnn.data.shapes.paint` (background, clutter, colours, one whole sample) and
:mod:`~fasterrcnn.data.shapes.dataset` (:class:`ShapesDataset`).
"""

from __future__ import annotations

from fasterrcnn.data.shapes.dataset import SPLIT_IDS, SPLIT_SPECS, ShapesDataset
from fasterrcnn.data.shapes.layout import ShapeObject, ShapesLayout, ShapesSpec, sample_layout
from fasterrcnn.data.shapes.masks import (
    SHAPES_CLASSES, cross_mask, ellipse_mask, rectangle_mask, ring_mask, triangle_mask,
)
from fasterrcnn.data.shapes.paint import HUE_BAND, layout_for, paint_layout, render_shapes_image

__all__ = [
    "HUE_BAND",
    "SHAPES_CLASSES",
    "SPLIT_IDS",
    "SPLIT_SPECS",
    "ShapeObject",
    "ShapesDataset",
    "ShapesLayout",
    "ShapesSpec",
    "cross_mask",
    "ellipse_mask",
    "layout_for",
    "paint_layout",
    "rectangle_mask",
    "render_shapes_image",
    "ring_mask",
    "sample_layout",
    "triangle_mask",
]
