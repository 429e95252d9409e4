"""The dataset interface every data source implements (shapes, VOC, COCO, folder).

Shapes: N objects in one image; H x W image size.

A dataset is a sequence of annotated images:
  * ``dataset[i] -> (image, target)``: ``image`` uint8 tensor ``[3, H, W]`` (RGB); ``target`` is
    :class:`Annotation` as a dict (see :meth:`Annotation.as_target`);
  * ``dataset.annotation(i) -> Annotation``: the same target without decoding the image (used by
    evaluation, statistics and aspect-ratio grouping);
  * ``dataset.classes``: object class names; label ``i`` (1..K) is ``classes[i - 1]``.

Boxes are xyxy in continuous pixel coordinates (a box over pixel columns 0..w-1 is [0, w]).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np
import torch


class DataError(ValueError):
    """A dataset file is missing, unreadable or malformed; the message names the file."""


@dataclass
class Annotation:
    """Ground truth of one image. Arrays are numpy so that loading stays cheap."""

    image_id: int
    file_name: str  # path of the image (as given by the dataset; may be relative to its root)
    height: int
    width: int
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))  # [N, 4]
    labels: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))  # [N] 1..K
    difficult: np.ndarray = field(default_factory=lambda: np.zeros((0,), bool))  # [N] VOC
    iscrowd: np.ndarray = field(default_factory=lambda: np.zeros((0,), bool))  # [N] COCO

    def __post_init__(self) -> None:
        self.boxes = np.asarray(self.boxes, np.float32).reshape(-1, 4)
        n = len(self.boxes)
        self.labels = np.asarray(self.labels, np.int64).reshape(n)
        self.difficult = (
            np.zeros(n, bool) if len(self.difficult) == 0 and n else np.asarray(self.difficult, bool)
        ).reshape(n)
        self.iscrowd = (
            np.zeros(n, bool) if len(self.iscrowd) == 0 and n else np.asarray(self.iscrowd, bool)
        ).reshape(n)

    def as_target(self) -> dict[str, torch.Tensor | int | str | tuple[int, int]]:
        """torchvision-style target dict: boxes, labels, difficult, iscrowd, image_id, ..."""
        return {
            "boxes": torch.from_numpy(self.boxes.copy()),
            "labels": torch.from_numpy(self.labels.copy()),
            "difficult": torch.from_numpy(self.difficult.copy()),
            "iscrowd": torch.from_numpy(self.iscrowd.copy()),
            "image_id": self.image_id,
            "file_name": self.file_name,
            "size": (self.height, self.width),
        }

    def copy(self, image_id: int | None = None) -> "Annotation":
        """An independent copy (arrays copied), optionally with another ``image_id``."""
        return Annotation(
            self.image_id if image_id is None else image_id,
            self.file_name,
            self.height,
            self.width,
            self.boxes.copy(),
            self.labels.copy(),
            self.difficult.copy(),
            self.iscrowd.copy(),
        )

    def select(self, keep: np.ndarray) -> "Annotation":
        """A copy keeping only the objects where ``keep`` (bool mask or indices) selects."""
        return Annotation(
            self.image_id,
            self.file_name,
            self.height,
            self.width,
            self.boxes[keep],
            self.labels[keep],
            self.difficult[keep],
            self.iscrowd[keep],
        )


@runtime_checkable
class DetectionDataset(Protocol):
    classes: tuple[str, ...]

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict]: ...

    def annotation(self, index: int) -> Annotation: ...


class ConcatDataset:
    """Several datasets with the same classes read as one (e.g. VOC 07+12)."""

    def __init__(self, parts: Sequence[DetectionDataset]) -> None:
        if not parts:
            raise DataError("no dataset given")
        classes = parts[0].classes
        for p in parts[1:]:
            if tuple(p.classes) != tuple(classes):
                raise DataError(
                    f"cannot join datasets with different classes: {classes} vs {p.classes}"
                )
        self.parts = list(parts)
        self.classes = tuple(classes)
        self._offsets = np.cumsum([0] + [len(p) for p in parts])

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def _locate(self, index: int) -> tuple[DetectionDataset, int]:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        part = int(np.searchsorted(self._offsets, index, side="right") - 1)
        return self.parts[part], index - int(self._offsets[part])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict]:
        ds, i = self._locate(index)
        image, target = ds[i]
        target = dict(target)
        target["image_id"] = index
        return image, target

    def annotation(self, index: int) -> Annotation:
        ds, i = self._locate(index)
        return ds.annotation(i).copy(image_id=index)


def _as_is(item: Any) -> Any:
    return item


class InMemoryDataset:
    """Decodes (or renders) every image once and keeps them in memory: for small datasets that
    are read for many epochs, such as the built-in shapes data of the demo."""

    def __init__(self, base: DetectionDataset, workers: int = 0) -> None:
        """``workers`` > 0 decodes in that many processes (in order; ``base`` must pickle)."""
        self.classes = tuple(base.classes)
        if workers > 0 and len(base) > 1:
            from torch.utils.data import DataLoader

            # chunks of 16 images: one hand-over between processes each (10.5 s against 13.9 s
            # one by one for the 800 training images of the demo; 19.1 s in this process)
            loader = DataLoader(base, batch_size=16, shuffle=False, num_workers=workers,  # type: ignore[arg-type]
                                collate_fn=_as_is)
            self._items = [item for chunk in loader for item in chunk]
        else:
            self._items = [base[i] for i in range(len(base))]
        self._annotations = [base.annotation(i) for i in range(len(base))]

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict]:
        image, target = self._items[index]
        return image, {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in target.items()}

    def annotation(self, index: int) -> Annotation:
        return self._annotations[index].copy()
