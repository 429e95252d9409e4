"""Large images: tile grids, cropping targets to a window, and random-crop training data.

Shapes: an image is [3, H, W]; a window is ``(y0, x0, y1, x1)`` in integer pixels (rows y0..y1-1,
columns x0..x1-1); boxes are ``[N, 4]`` xyxy in continuous pixel coordinates (package convention).

* :func:`tile_grid` covers an image with overlapping tiles; the last row/column of tiles is
  flush with the bottom/right border (so every tile has the full tile size when the image is
  at least that large, and the overlap there is larger than asked).
* :func:`crop_target` keeps what remains of the boxes inside a window (see its docstring for
  the rule).
* :class:`RandomCropDataset` turns a few huge annotated photos (aerial imagery, slides) into a
  dataset of ``crops_per_image`` crops per photo that the ordinary trainer can use; crop ``k``
  is a pure function of ``(seed, index)``.
"""

from __future__ import annotations

import math
from collections import OrderedDict
import numpy as np
import torch

from fasterrcnn.data.dataset import Annotation, DetectionDataset
from fasterrcnn.modeling.transform import Orientation

Window = tuple[int, int, int, int]  # (y0, x0, y1, x1)


def _starts(length: int, tile: int, overlap: int) -> list[int]:
    """Tile start offsets along one axis; the last tile ends at ``length``."""
    if length <= tile:
        return [0]
    step = tile - overlap
    n = math.ceil((length - tile) / step) + 1
    starts = [min(i * step, length - tile) for i in range(n)]
    return sorted(set(starts))


def tile_grid(height: int, width: int, tile: int | tuple[int, int], overlap: int = 0) -> list[Window]:
    """Windows ``(y0, x0, y1, x1)`` covering an ``height x width`` image, row-major.

    ``tile`` is the tile size (an int for square tiles or ``(th, tw)``); neighbouring tiles
    overlap by at least ``overlap`` pixels (0 <= overlap < tile). Tiles are clipped to the image
    when it is smaller than a tile; otherwise the last tiles are shifted to end exactly at the
    border. Every pixel is covered and no tile leaves the image.
    """
    th, tw = (tile, tile) if isinstance(tile, int) else (int(tile[0]), int(tile[1]))
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive, got {height}x{width} (HxW)")
    if th < 1 or tw < 1:
        raise ValueError(f"tile size must be positive, got {tile}")
    if not 0 <= overlap < min(th, tw):
        raise ValueError(f"overlap must be in 0..{min(th, tw) - 1}, got {overlap}")
    ys = _starts(height, th, overlap)
    xs = _starts(width, tw, overlap)
    return [(y, x, min(y + th, height), min(x + tw, width)) for y in ys for x in xs]


def crop_target(
    boxes: np.ndarray | torch.Tensor,
    labels: np.ndarray | torch.Tensor,
    window: Window,
    *,
    min_visible: float = 0.5,
    min_size: float = 2.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Boxes and labels of the objects kept in ``window``, in the window's coordinates.

    Rule: each box is clipped to the window; it is kept when the clipped part covers at least
    ``min_visible`` of the box's own area *and* the clipped box is at least ``min_size`` pixels
    wide and high. So boxes wholly inside are kept as they are, boxes cut by the window border
    are kept (clipped) when mostly visible, and slivers or mostly-cut objects are dropped.
    Returns ``(boxes [M, 4] float32, labels [M], kept indices [M])``.
    """
    b = np.asarray(boxes.detach().cpu() if isinstance(boxes, torch.Tensor) else boxes, np.float64)
    b = b.reshape(-1, 4)
    lab = np.asarray(labels.detach().cpu() if isinstance(labels, torch.Tensor) else labels).reshape(-1)
    if len(lab) != len(b):
        raise ValueError(f"{len(b)} boxes but {len(lab)} labels")
    y0, x0, y1, x1 = (float(v) for v in window)
    if y1 <= y0 or x1 <= x0:
        raise ValueError(f"empty window {window}")
    clipped = np.stack(
        [
            np.clip(b[:, 0], x0, x1), np.clip(b[:, 1], y0, y1),
            np.clip(b[:, 2], x0, x1), np.clip(b[:, 3], y0, y1),
        ],
        axis=1,
    ) if len(b) else np.zeros((0, 4))
    cw = clipped[:, 2] - clipped[:, 0]
    ch = clipped[:, 3] - clipped[:, 1]
    area = np.maximum(b[:, 2] - b[:, 0], 0) * np.maximum(b[:, 3] - b[:, 1], 0)
    visible = np.where(area > 0, cw * ch / np.maximum(area, 1e-12), 0.0)
    keep = np.nonzero((visible >= min_visible - 1e-9) & (cw >= min_size) & (ch >= min_size))[0]
    out = clipped[keep] - np.array([x0, y0, x0, y0])
    return out.astype(np.float32), lab[keep], keep


def random_window(
    height: int, width: int, crop: tuple[int, int], rng: np.random.Generator
) -> Window:
    """A uniformly placed ``crop`` (h, w) window inside the image (clipped when larger)."""
    ch, cw = min(crop[0], height), min(crop[1], width)
    y0 = int(rng.integers(0, height - ch + 1))
    x0 = int(rng.integers(0, width - cw + 1))
    return (y0, x0, y0 + ch, x0 + cw)


def dihedral_boxes(boxes: np.ndarray, height: int, width: int, transpose: bool, vflip: bool) -> np.ndarray:
    """Boxes after transposing (swap x/y) and then flipping vertically an ``height x width``
    image (pure). With the trainer's horizontal flip this spans all 8 right-angle symmetries."""
    b = torch.from_numpy(np.asarray(boxes, np.float32).reshape(-1, 4).copy())
    return Orientation(transpose=transpose, vflip=vflip).boxes(b, (height, width)).numpy()


class RandomCropDataset:
    """``crops_per_image`` random crops of every image of ``dataset`` (a DetectionDataset).

    Item ``k`` is crop ``k % crops_per_image`` of image ``k // crops_per_image``; its window
    (and, with ``dihedral=True``, a random transpose / vertical flip, valid for overhead
    imagery) comes from a generator seeded with ``(seed, k)``, so ``dataset[k]`` and
    ``annotation(k)`` always agree and never depend on global RNG state. Boxes follow
    :func:`crop_target` (``min_visible``, ``min_size``). Decoded images are kept in a small
    LRU cache (``cache_size`` images) since many consecutive crops come from the same photo.
    Images smaller than ``crop_size`` are used whole.
    """

    def __init__(
        self,
        dataset: DetectionDataset,
        crop_size: int | tuple[int, int],
        crops_per_image: int,
        seed: int = 0,
        *,
        min_visible: float = 0.5,
        min_size: float = 2.0,
        dihedral: bool = False,
        cache_size: int = 2,
    ) -> None:
        crop = (crop_size, crop_size) if isinstance(crop_size, int) else tuple(crop_size)
        if len(crop) != 2 or min(crop) < 1:
            raise ValueError(f"crop_size must be a positive int or (h, w), got {crop_size}")
        if crops_per_image < 1:
            raise ValueError(f"crops_per_image must be >= 1, got {crops_per_image}")
        self.dataset = dataset
        self.base = dataset  # for check.collect_problems
        self.classes = tuple(dataset.classes)
        self.crop = (int(crop[0]), int(crop[1]))
        self.crops_per_image = int(crops_per_image)
        self.seed = int(seed)
        self.min_visible = float(min_visible)
        self.min_size = float(min_size)
        self.dihedral = bool(dihedral)
        self.cache_size = int(cache_size)
        self._cache: OrderedDict[int, tuple[torch.Tensor, dict]] = OrderedDict()
        self._sizes: dict[int, tuple[int, int]] = {}

    def __len__(self) -> int:
        return len(self.dataset) * self.crops_per_image

    def __repr__(self) -> str:
        return (f"RandomCropDataset({self.crops_per_image} crops of {self.crop[0]}x{self.crop[1]} "
                f"per image of {self.dataset!r})")

    def _plan(self, index: int, height: int, width: int) -> tuple[Window, bool, bool]:
        from fasterrcnn.data.loader import derive_seed

        rng = np.random.Generator(np.random.PCG64(derive_seed(self.seed, index, 0xC40F)))
        window = random_window(height, width, self.crop, rng)
        transpose = vflip = False
        if self.dihedral:
            transpose, vflip = bool(rng.random() < 0.5), bool(rng.random() < 0.5)
        return window, transpose, vflip

    def _check(self, index: int) -> int:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        return index

    def annotation(self, index: int) -> Annotation:
        index = self._check(index)
        ann = self.dataset.annotation(index // self.crops_per_image)
        window, transpose, vflip = self._plan(index, ann.height, ann.width)
        boxes, labels, keep = crop_target(
            ann.boxes, ann.labels, window, min_visible=self.min_visible, min_size=self.min_size
        )
        h, w = window[2] - window[0], window[3] - window[1]
        boxes = dihedral_boxes(boxes, h, w, transpose, vflip)
        if transpose:
            h, w = w, h
        return Annotation(
            index, ann.file_name, h, w, boxes, labels,
            ann.difficult[keep] if len(ann.difficult) else ann.difficult,
            ann.iscrowd[keep] if len(ann.iscrowd) else ann.iscrowd,
        )

    def _image(self, i: int) -> tuple[torch.Tensor, dict]:
        if i in self._cache:
            self._cache.move_to_end(i)
            return self._cache[i]
        item = self.dataset[i]
        if self.cache_size > 0:
            self._cache[i] = item
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return item

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict]:
        index = self._check(index)
        image, target = self._image(index // self.crops_per_image)
        ann = self.annotation(index)
        window, transpose, vflip = self._plan(index, int(image.shape[-2]), int(image.shape[-1]))
        y0, x0, y1, x1 = window
        crop = Orientation(transpose=transpose, vflip=vflip).image(image[:, y0:y1, x0:x1])
        out = ann.as_target()
        out["file_name"] = target.get("file_name", ann.file_name)
        out["window"] = window
        return crop.contiguous(), out

