"""Detection in two lines, for code that does not train:

    detector = Detector.from_checkpoint("model_final.pt")
    found = detector("photo.jpg", score_thresh=0.5)   # -> Detections

An image is a file path (read by :class:`~fasterrcnn.data.images.ImageReader`: EXIF orientation,
16-bit and float files, the pixel ceiling, as ``fasterrcnn detect`` reads them), a PIL image, a
numpy array H x W x 3 (or H x W gray) of uint8 0..255 or float 0..1, or a tensor [3, H, W] of
uint8 or float 0..1; a list of these gives a list of results. A fourth channel is taken as alpha
and dropped, as the image reader does with RGBA files. Each image runs on its own (no padding to
a shared size), so the same picture gives the same detections whichever form it comes in.

A checkpoint converted from torchvision by ``fasterrcnn import`` is a fasterrcnn checkpoint too.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from .data.images import ImageReader


@dataclass(frozen=True)
class Detections:
    """The detections of one image, best first: ``boxes`` [D, 4] float32 xyxy in the image's
    pixels, ``scores`` [D] float32, ``labels`` [D] int64 (1..K), ``class_names`` (D names)."""

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.scores)

    def to_dict(self) -> dict[str, list]:
        """Plain lists (JSON-ready): ``boxes``, ``scores``, ``labels``, ``class_names``."""
        return {"boxes": self.boxes.tolist(), "scores": self.scores.tolist(),
                "labels": self.labels.tolist(), "class_names": list(self.class_names)}


class Detector:
    """A loaded detector: call it on one image or a list (see the module docstring).

    ``score_thresh`` per call replaces the model's own final threshold (as ``detect
    --score-thresh`` does); None keeps the model's (e.g. 0.05).
    """

    def __init__(self, model: Any, cfg: Any, classes: Sequence[str], *, device: str | torch.device = "cpu",
                 tta: bool = True, reader: ImageReader | None = None) -> None:
        self.model = model
        self.cfg = cfg
        self.classes = tuple(classes)
        self.device = torch.device(device)
        self.tta = tta
        self.reader = reader or ImageReader()
        self._predictors: dict[float | None, Any] = {}

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device = "cpu", tta: bool = True,
                        reader: ImageReader | None = None) -> "Detector":
        """Load a fasterrcnn checkpoint (``model_final.pt``, ``last.pt``, an imported model), its
        BatchNorm layers folded into the convolutions for inference.
        ``tta``: run the test-time views the checkpoint's config names (False: one plain pass)."""
        from .engine.checkpoint import load_model
        from .modeling.fold import fold_batchnorm

        model, cfg, classes = load_model(path, device=device)
        return cls(fold_batchnorm(model), cfg, classes, device=device, tta=tta, reader=reader)

    def __call__(self, images: Any, score_thresh: float | None = None) -> Detections | list[Detections]:
        """One :class:`Detections` for one image, a list for a list (or tuple) of images."""
        if isinstance(images, (list, tuple)):
            return self.detect(images, score_thresh=score_thresh)
        return self.detect([images], score_thresh=score_thresh)[0]

    def detect(self, images: Sequence[Any], score_thresh: float | None = None) -> list[Detections]:
        """A list of :class:`Detections`, one per image, in order."""
        if not isinstance(images, (list, tuple)):
            images = [images]
        predictor = self._predictor(score_thresh)
        out = []
        for i, image in enumerate(images):
            x = to_image_tensor(image, reader=self.reader, where=f"image {i}").to(self.device)
            with torch.no_grad():
                det = predictor([x])[0]
            labels = det["labels"].cpu().numpy().astype(np.int64)
            out.append(Detections(
                det["boxes"].detach().cpu().numpy().astype(np.float32),
                det["scores"].detach().cpu().numpy().astype(np.float32),
                labels,
                tuple(self.classes[int(k) - 1] if 1 <= k <= len(self.classes) else str(int(k)) for k in labels),
            ))
        return out

    def _predictor(self, score_thresh: float | None) -> Any:
        if score_thresh is not None and not (isinstance(score_thresh, (int, float)) and 0.0 <= score_thresh <= 1.0):
            raise ValueError(f"score_thresh must be a number in 0..1, got {score_thresh!r}")
        key = None if score_thresh is None else float(score_thresh)
        if key not in self._predictors:
            from .config import TestAugConfig
            from .modeling.builder import build_predictor

            selector = self.model.roi_heads.selector
            if key is not None:
                selector = dataclasses.replace(selector, score_thresh=key)
            self._predictors[key] = build_predictor(
                self.model, self.cfg.model, test_aug=None if self.tta else TestAugConfig(), selector=selector)
        return self._predictors[key]


def to_image_tensor(image: Any, *, reader: ImageReader | None = None, where: str = "image") -> Tensor:
    """A float tensor [3, H, W] in 0..1 from any accepted form (see the module docstring);
    TypeError for an unknown kind, ValueError for a known kind with wrong shape or values."""
    if isinstance(image, (str, Path)):
        return (reader or ImageReader()).load(image).float() / 255.0
    if _is_pil(image):
        return _from_pil(image, reader or ImageReader())
    if isinstance(image, np.ndarray):
        if image.ndim == 3 and image.shape[2] in (1, 3, 4):
            return _from_chw(torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1), where, "H x W x C array")
        if image.ndim == 2:
            return _from_chw(torch.from_numpy(np.ascontiguousarray(image))[None], where, "H x W array")
        raise ValueError(f"{where}: a numpy image must be H x W x 3 (RGB), H x W x 4 (RGBA) or H x W (gray), "
                         f"got shape {image.shape}")
    if isinstance(image, Tensor):
        if image.dim() == 3 and image.shape[0] not in (1, 3, 4) and image.shape[2] in (3, 4):
            raise ValueError(f"{where}: a tensor image is [3, H, W]; shape {tuple(image.shape)} looks like "
                             "H x W x C (use image.permute(2, 0, 1))")
        if image.dim() == 2:
            image = image[None]
        if image.dim() != 3:
            raise ValueError(f"{where}: a tensor image is [3, H, W], got shape {tuple(image.shape)}")
        return _from_chw(image.detach().cpu(), where, "tensor")
    raise TypeError(f"{where}: cannot detect on a {type(image).__name__}; give a file path, a PIL image, "
                    "a numpy array H x W x 3 or a tensor [3, H, W]")


def _from_chw(x: Tensor, where: str, kind: str) -> Tensor:
    channels = x.shape[0]
    if channels not in (1, 3, 4):
        raise ValueError(f"{where}: {channels} channels; expected 3 (RGB), 4 (RGBA: alpha is dropped) or 1 (gray)")
    if x.shape[1] == 0 or x.shape[2] == 0:
        raise ValueError(f"{where}: empty image of size {x.shape[1]}x{x.shape[2]}")
    x = x[:3] if channels == 4 else x.expand(3, -1, -1) if channels == 1 else x
    if x.dtype == torch.uint8:
        return x.float() / 255.0
    if not x.is_floating_point():
        raise TypeError(f"{where}: a {kind} of {x.dtype} is not an 8-bit image; give uint8 0..255 or float "
                        "0..1 (a 16-bit file read by path is mapped by the image reader's rules)")
    x = x.float()
    if not torch.isfinite(x).all():
        raise ValueError(f"{where}: the float image holds NaN or inf")
    lo, hi = float(x.min()), float(x.max())
    if lo < 0.0 or hi > 1.0:
        raise ValueError(f"{where}: float images must be in 0..1, got values {lo:g}..{hi:g} "
                         + ("(divide 0..255 values by 255, or give uint8)" if hi <= 255.0 else ""))
    return x.contiguous()


def _is_pil(image: Any) -> bool:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow is a dependency
        return False
    return isinstance(image, Image.Image)


def _from_pil(image: Any, reader: ImageReader) -> Tensor:
    """RGB as the image reader makes it: EXIF orientation (per ``reader.exif``), high-bit-depth
    modes mapped by its rule, palette/RGBA/gray/CMYK to RGB with alpha dropped."""
    from PIL import ImageOps

    if reader.exif == "apply":
        image = ImageOps.exif_transpose(image)
    arr, _ = reader._to_rgb(image)  # the reader's own conversion, so a PIL image reads as its file does
    return torch.from_numpy(np.array(arr, np.uint8)).permute(2, 0, 1).float() / 255.0
