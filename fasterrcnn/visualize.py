"""Drawing detections on images (Pillow): boxes, class names and scores."""

from __future__ import annotations

import colorsys
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont


def class_color(label: int) -> tuple[int, int, int]:
    """A distinct, bright colour per class label (golden-ratio hue steps)."""
    r, g, b = colorsys.hsv_to_rgb((label * 0.618034) % 1.0, 0.85, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


def to_pil(image: torch.Tensor | np.ndarray | Image.Image) -> Image.Image:
    """uint8 [3, H, W] / float 0..1 [3, H, W] tensor, HWC array or PIL image -> RGB PIL image."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, torch.Tensor):
        t = image.detach().cpu()
        if t.is_floating_point():
            t = (t.clamp(0, 1) * 255).round().to(torch.uint8)
        image = t.permute(1, 2, 0).numpy()
    return Image.fromarray(np.ascontiguousarray(image)).convert("RGB")


def draw_detections(
    image: torch.Tensor | np.ndarray | Image.Image,
    boxes: torch.Tensor | np.ndarray,
    labels: torch.Tensor | np.ndarray,
    scores: torch.Tensor | np.ndarray | None,
    classes: Sequence[str],
    *,
    line_width: int | None = None,
) -> Image.Image:
    """A copy of ``image`` with each box drawn in its class colour and captioned ``class score``."""
    pil = to_pil(image).copy()
    draw = ImageDraw.Draw(pil)
    font = ImageFont.load_default()
    width = line_width or max(1, round(min(pil.size) / 250))
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    labels = np.asarray(labels).reshape(-1)
    scores = None if scores is None else np.asarray(scores).reshape(-1)
    for i in range(len(boxes)):
        x1, y1, x2, y2 = boxes[i].tolist()
        label = int(labels[i])
        color = class_color(label)
        draw.rectangle([x1, y1, x2, y2], outline=color, width=width)
        name = classes[label - 1] if 1 <= label <= len(classes) else str(label)
        caption = name if scores is None else f"{name} {float(scores[i]):.2f}"
        tx, ty = x1, max(0.0, y1 - 11)
        left, top, right, bottom = draw.textbbox((tx, ty), caption, font=font)
        draw.rectangle([left - 1, top - 1, right + 1, bottom + 1], fill=color)
        draw.text((tx, ty), caption, fill=(0, 0, 0), font=font)
    return pil


def grid(images: Sequence[Image.Image], columns: int = 3, pad: int = 4) -> Image.Image:
    """Tile images into one picture (rows of ``columns``), each cell as large as the largest image."""
    if not images:
        raise ValueError("no images to put in a grid")
    cw = max(i.width for i in images)
    ch = max(i.height for i in images)
    rows = (len(images) + columns - 1) // columns
    out = Image.new("RGB", (columns * (cw + pad) + pad, rows * (ch + pad) + pad), (255, 255, 255))
    for k, im in enumerate(images):
        r, c = divmod(k, columns)
        out.paste(im, (pad + c * (cw + pad), pad + r * (ch + pad)))
    return out
