"""Model input: rescale, normalise and pad a list of images into one batch tensor.

Shapes: N images, each [3, H, W] float in 0..1; the batch is [N, 3, Hp, Wp] with Hp, Wp the
largest rescaled size rounded up to a multiple of ``size_divisible``.

Rescaling (the paper's single scale): the shorter side becomes ``min_size`` unless the longer side
would exceed ``max_size``, in which case the longer side becomes ``max_size``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def resize_scale(height: int, width: int, min_size: int, max_size: int) -> float:
    """Scale factor that brings (height, width) to the paper's shorter/longer side limits."""
    short, long = min(height, width), max(height, width)
    scale = min_size / short
    if long * scale > max_size:
        scale = max_size / long
    return scale


def resized_size(height: int, width: int, scale: float, rounding: str = "round") -> tuple[int, int]:
    """(H, W) rescaled by ``scale``, rounded ("round") or truncated ("floor", torchvision's)."""
    if rounding == "floor":
        return max(1, math.floor(height * scale)), max(1, math.floor(width * scale))
    return max(1, int(round(height * scale))), max(1, int(round(width * scale)))


def scale_boxes(boxes: Tensor, from_size: tuple[int, int], to_size: tuple[int, int]) -> Tensor:
    """Map xyxy boxes between two sizes (H, W) of the same image."""
    sy = to_size[0] / from_size[0]
    sx = to_size[1] / from_size[1]
    return boxes * boxes.new_tensor([sx, sy, sx, sy])


def hflip_boxes(boxes: Tensor, width: int) -> Tensor:
    """Boxes [..., 4] xyxy mirrored about the vertical axis of an image ``width`` pixels wide:
    ``x1' = W - x2``, ``x2' = W - x1``."""
    return torch.stack((width - boxes[..., 2], boxes[..., 1], width - boxes[..., 0], boxes[..., 3]), dim=-1)


def vflip_boxes(boxes: Tensor, height: int) -> Tensor:
    """Boxes [..., 4] xyxy mirrored about the horizontal axis of an image ``height`` pixels high:
    ``y1' = H - y2``, ``y2' = H - y1``."""
    return torch.stack((boxes[..., 0], height - boxes[..., 3], boxes[..., 2], height - boxes[..., 1]), dim=-1)


def transpose_boxes(boxes: Tensor) -> Tensor:
    """Boxes [..., 4] xyxy of the transposed image (x and y swapped)."""
    return boxes[..., [1, 0, 3, 2]]


@dataclass(frozen=True)
class Orientation:
    """One of the eight flips and quarter turns of an image: first ``transpose`` (swap x and y),
    then ``hflip`` (mirror left-right), then ``vflip`` (mirror top-bottom).

    ``size`` arguments are always the (H, W) of the image *before* the orientation is applied.
    """

    transpose: bool = False
    hflip: bool = False
    vflip: bool = False

    @property
    def identity(self) -> bool:
        return not (self.transpose or self.hflip or self.vflip)

    def size(self, size: tuple[int, int]) -> tuple[int, int]:
        """(H, W) of the oriented image."""
        return (size[1], size[0]) if self.transpose else (size[0], size[1])

    def image(self, image: Tensor) -> Tensor:
        """The oriented image [..., H', W'] of ``image`` [..., H, W]."""
        if self.transpose:
            image = image.transpose(-1, -2)
        if self.hflip:
            image = image.flip(-1)
        if self.vflip:
            image = image.flip(-2)
        return image

    def boxes(self, boxes: Tensor, size: tuple[int, int]) -> Tensor:
        """Boxes [..., 4] of the image of ``size`` (H, W) in the oriented image's pixels."""
        h, w = self.size(size)
        if self.transpose:
            boxes = transpose_boxes(boxes)
        if self.hflip:
            boxes = hflip_boxes(boxes, w)
        if self.vflip:
            boxes = vflip_boxes(boxes, h)
        return boxes

    def inverse_boxes(self, boxes: Tensor, size: tuple[int, int]) -> Tensor:
        """Boxes [..., 4] of the oriented image back in the pixels of the image of ``size``."""
        h, w = self.size(size)
        if self.vflip:
            boxes = vflip_boxes(boxes, h)
        if self.hflip:
            boxes = hflip_boxes(boxes, w)
        if self.transpose:
            boxes = transpose_boxes(boxes)
        return boxes


@dataclass
class ImageBatch:
    tensor: Tensor  # [N, 3, Hp, Wp], normalised, zero-padded
    image_sizes: list[tuple[int, int]]  # rescaled (H, W) of each image inside the padding
    original_sizes: list[tuple[int, int]]

    @property
    def padded_size(self) -> tuple[int, int]:
        """(Hp, Wp) of the padded batch."""
        return int(self.tensor.shape[-2]), int(self.tensor.shape[-1])


class InputTransform(nn.Module):
    def __init__(
        self,
        *,
        min_size_train: Sequence[int],
        max_size_train: int,
        min_size_test: int,
        max_size_test: int,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        size_divisible: int = 16,
        size_rounding: str = "round",
    ) -> None:
        super().__init__()
        if size_rounding not in ("round", "floor"):
            raise ValueError(f"size_rounding must be 'round' or 'floor', got {size_rounding!r}")
        self.size_rounding = size_rounding
        self.min_size_train = tuple(int(s) for s in min_size_train)
        self.max_size_train = int(max_size_train)
        self.min_size_test = int(min_size_test)
        self.max_size_test = int(max_size_test)
        self.size_divisible = int(size_divisible)
        self.register_buffer("mean", torch.tensor(pixel_mean).view(3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(pixel_std).view(3, 1, 1), persistent=False)

    def __call__(
        self, images: Sequence[Tensor], *, training: bool, size: tuple[int, int] | None = None
    ) -> ImageBatch:
        return super().__call__(images, training=training, size=size)

    def forward(
        self, images: Sequence[Tensor], *, training: bool, size: tuple[int, int] | None = None
    ) -> ImageBatch:
        """``size`` (shorter side, longer-side cap) replaces the configured scale (test-time
        augmentation runs several)."""
        if len(images) == 0:
            raise ValueError("no images given")
        if size is not None:
            min_size, max_size = int(size[0]), int(size[1])
        elif training:
            pick = int(torch.randint(len(self.min_size_train), (1,)).item())
            min_size, max_size = self.min_size_train[pick], self.max_size_train
        else:
            min_size, max_size = self.min_size_test, self.max_size_test
        resized, sizes, originals = [], [], []
        for img in images:
            if img.dim() != 3 or img.shape[0] != 3:
                raise ValueError(f"expected an image tensor [3, H, W], got shape {tuple(img.shape)}")
            if not img.is_floating_point():
                raise ValueError("images must be float tensors in 0..1 (got an integer tensor)")
            h, w = int(img.shape[1]), int(img.shape[2])
            if h == 0 or w == 0:
                raise ValueError(f"empty image of size {h}x{w}")
            out_h, out_w = resized_size(h, w, resize_scale(h, w, min_size, max_size), self.size_rounding)
            x = img.to(self.mean.device)
            if (out_h, out_w) != (h, w):
                x = F.interpolate(x[None], size=(out_h, out_w), mode="bilinear", align_corners=False)[0]
            resized.append((x - self.mean) / self.std)
            sizes.append((out_h, out_w))
            originals.append((h, w))
        return ImageBatch(pad_batch(resized, self.size_divisible), sizes, originals)


def pad_batch(images: Sequence[Tensor], size_divisible: int) -> Tensor:
    """Zero-pad [3, H, W] images at the bottom/right into one [N, 3, Hp, Wp] tensor."""
    hp = max(int(i.shape[1]) for i in images)
    wp = max(int(i.shape[2]) for i in images)
    d = max(1, size_divisible)
    hp, wp = int(math.ceil(hp / d) * d), int(math.ceil(wp / d) * d)
    batch = images[0].new_zeros((len(images), images[0].shape[0], hp, wp))
    for b, img in zip(batch, images):
        b[:, : img.shape[1], : img.shape[2]].copy_(img)
    return batch
