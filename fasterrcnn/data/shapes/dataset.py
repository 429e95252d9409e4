"""The shapes dataset, :class:`ShapesDataset`: image ``i`` of a split is made from
``(seed, split, i)`` only; annotations come without rendering the pixels."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from fasterrcnn.data.dataset import Annotation, DataError
from fasterrcnn.data.shapes.layout import ShapesSpec
from fasterrcnn.data.shapes.masks import SHAPES_CLASSES
from fasterrcnn.data.shapes.paint import layout_for, render_shapes_image

SPLIT_IDS: dict[str, int] = {"train": 0, "val": 1, "test": 2}

# The generator settings of each split when none are given. Training scenes are more crowded
# (4-16 objects, about 9.6 per image, against 1-8 and 4.5): every training step then holds about
# twice as many objects, and more of them small, overlapping or partly hidden, the cases a
# detector misses. Object classes, sizes, colours and occlusion rules are the same, and val /
# test keep the evaluation scenes. On the demo preset val VOC07 went from 0.933-0.951 to
# 0.955-0.968 and test from 0.905-0.927 to 0.922-0.945; see benchmarks/RESULTS.md, "Crowded
# training scenes".
SPLIT_SPECS: dict[str, ShapesSpec] = {
    "train": ShapesSpec(min_objects=4, max_objects=16),
    "val": ShapesSpec(),
    "test": ShapesSpec(),
}


class ShapesDataset:
    """Deterministic synthetic detection dataset (a :class:`DetectionDataset`).

    Image ``i`` is generated from ``np.random.default_rng([seed, split_id, i])`` only, with
    ``spec`` or, when it is None, the split's own settings (:data:`SPLIT_SPECS`: crowded training
    scenes). With ``cache`` the (small) annotations are kept in memory; images are re-rendered on
    each access.
    """

    classes: tuple[str, ...] = SHAPES_CLASSES

    def __init__(
        self,
        split: str = "train",
        num_images: int = 800,
        seed: int = 0,
        spec: ShapesSpec | None = None,
        cache: bool = True,
    ) -> None:
        if split not in SPLIT_IDS:
            raise DataError(f"shapes: unknown split {split!r}; expected one of {sorted(SPLIT_IDS)}")
        if num_images < 0 or seed < 0:
            raise DataError(f"shapes: num_images and seed must be >= 0, got {num_images}, {seed}")
        self.split = split
        self.num_images = int(num_images)
        self.seed = int(seed)
        self.spec = SPLIT_SPECS[split] if spec is None else spec
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
                i, layout.annotated_boxes(self.spec.boxes), layout.labels(), layout.height, layout.width
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
