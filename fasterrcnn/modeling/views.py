"""Test-time views: the scales and orientations ``FasterRCNN.predict`` runs each image at.

A view rescales the image (shorter side ``min_size``, longer side at most ``max_size``), turns it
(:class:`~.transform.Orientation`: mirrored, upside down, transposed) and maps its candidate boxes
back to the original image. A zoomed view (``max_box`` finite) is run at a larger scale for small
objects only: its candidates count for boxes smaller than ``max_box`` (sqrt of the area, original
image pixels), as in SNIP's valid ranges (Singh & Davis 2018).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from .transform import Orientation


@dataclass(frozen=True)
class InferenceView:
    """One test-time view: the shorter side / longer-side cap to rescale to, and an orientation
    (mirrors and a transpose, see :class:`~.transform.Orientation`)."""

    min_size: int
    max_size: int
    hflip: bool = False
    vflip: bool = False
    transpose: bool = False
    # the view's candidates count only for boxes smaller than this (sqrt of the area in
    # original-image pixels): the valid range of a zoomed view (TestAugConfig.zoom_sizes)
    max_box: float = math.inf

    @property
    def orientation(self) -> Orientation:
        return Orientation(transpose=self.transpose, hflip=self.hflip, vflip=self.vflip)


def inference_views(
    min_sizes: Sequence[int],
    hflip: bool,
    min_size_test: int,
    max_size_test: int,
    *,
    vflip: bool = False,
    transpose: bool = False,
) -> tuple[InferenceView, ...]:
    """The views of a TestAugConfig: each shorter side (default: ``min_size_test``), its longer
    side capped in proportion (``max_size_test / min_size_test``), and every combination of the
    orientations asked for (plain first; then mirrored, flipped upside down, transposed)."""
    sizes = tuple(min_sizes) or (min_size_test,)
    options = lambda on: (False, True) if on else (False,)  # noqa: E731
    return tuple(
        InferenceView(int(s), int(round(s * max_size_test / min_size_test)), h, v, t)
        for s in sizes for t in options(transpose) for v in options(vflip) for h in options(hflip)
    )


def zoom_views(
    sizes: Sequence[int], max_box: float, min_size_test: int, max_size_test: int
) -> tuple[InferenceView, ...]:
    """Plain views at each shorter side in ``sizes`` (longer side capped in proportion) whose
    candidates count only for boxes smaller than ``max_box`` pixels (TestAugConfig.zoom_sizes)."""
    return tuple(
        InferenceView(int(s), int(round(s * max_size_test / min_size_test)), max_box=float(max_box))
        for s in sizes
    )
