"""Reading image files the same way everywhere: training, checking and ``detect``.

:class:`ImageReader` holds the three reading rules, each a command-line flag:

* ``exif`` (``--exif``): ``"apply"`` (default) turns the pixels as the file's EXIF orientation
  tag says, as photo viewers, detectron2 and mmcv do, so annotations made in a viewer fit;
  ``"ignore"`` uses the raw pixel grid. Sizes read from the header follow the same rule.
* ``high_bit`` (``--high-bit-depth``): how 16-bit, 32-bit integer and 32-bit float images
  (Pillow modes ``I;16*``, ``I``, ``F``) become the model's 0..255 input:

  - ``"auto"`` (default): by the values the image holds. Values already within 0..255 are used
    as they are (floats within 0..1 are scaled by 255); otherwise ``min(0, lo)..hi`` maps
    linearly to 0..255, so a 0..50000 gradient keeps its tones and zero stays black;
  - ``"minmax"``: ``lo..hi`` of each image maps to 0..255 (a contrast stretch);
  - ``"bitdepth"``: by the container: 16-bit values / 257 (65535 -> 255), floats x 255,
    clipped to 0..255 (what an 8-bit conversion of a 16-bit master would give).

  ``check-data`` lists every image it mapped and how (:meth:`ImageReader.inspect`).
* ``max_pixels`` (``--max-image-pixels``): the ceiling on width x height, default
  :data:`DEFAULT_MAX_PIXELS` (250 megapixels, e.g. 15800 x 15800; about 750 MB as 8-bit RGB).
  Larger images are refused with a message naming the file; ``0`` / ``None`` lifts the ceiling.
  Pillow's own decompression-bomb limit (89 MP warning, 179 MP error) is replaced by this one
  while our reader opens a file.

Grayscale, palette (with transparency), CMYK and RGBA images become RGB; an alpha channel is
dropped (the colour values are kept as they are, not composited on a background).
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from fasterrcnn.data.dataset import Annotation, DataError
from fasterrcnn.data.problems import (
    CORRUPT_IMAGE, MISSING_IMAGE, SIZE_MISMATCH, TOO_LARGE_IMAGE, problem_error,
)

EXIF_MODES = ("apply", "ignore")
HIGH_BIT_RULES = ("auto", "minmax", "bitdepth")
DEFAULT_MAX_PIXELS = 250_000_000
HIGH_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")

_ORIENTATION_TAG = 0x0112
_ORIENTATION_TEXT = {
    2: "mirrored", 3: "rotated 180°", 4: "flipped upside down", 5: "transposed",
    6: "rotated 90° clockwise", 7: "transversed", 8: "rotated 90° counter-clockwise",
}


@dataclass(frozen=True)
class ImageInfo:
    """What reading one file found: raw and loaded size, EXIF orientation, mode, value mapping."""

    path: str
    raw_height: int
    raw_width: int
    height: int  # as loaded (EXIF orientation applied or not, per the reader)
    width: int
    orientation: int = 1  # EXIF orientation tag, 1 = none
    mode: str = "RGB"
    mapping: str | None = None  # how high-bit-depth values were mapped (None: 8-bit image)

    @property
    def swaps_axes(self) -> bool:
        return self.orientation in (5, 6, 7, 8)


def map_high_bit(arr: np.ndarray, rule: str, is_float: bool, bits: int) -> tuple[np.ndarray, str]:
    """``(uint8 array, how)`` for a single-channel high-bit-depth array (see the module doc)."""
    values = np.asarray(arr, np.float64)
    finite = np.isfinite(values)
    values = np.where(finite, values, 0.0)
    lo, hi = (float(values[finite].min()), float(values[finite].max())) if finite.any() else (0.0, 0.0)
    span = f"values {lo:g}..{hi:g}"
    if rule == "bitdepth":
        if is_float:
            out, how = values * 255.0, f"{span} scaled x255 as 0..1 floats (--high-bit-depth bitdepth)"
        else:
            top = float(2 ** bits - 1)
            out, how = values * (255.0 / top), (f"{span} scaled from the {bits}-bit range "
                                                f"0..{top:g} (--high-bit-depth bitdepth)")
        clipped = bool((out < 0).any() or (out > 255).any())
        how += "; clipped to 0..255" if clipped else ""
    elif rule == "minmax":
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        out, how = (values - lo) * scale, f"{span} stretched to 0..255 (--high-bit-depth minmax)"
    else:
        if is_float and lo >= 0.0 and hi <= 1.0:
            out, how = values * 255.0, f"{span}: floats within 0..1, scaled x255 (--high-bit-depth auto)"
        elif lo >= 0.0 and hi <= 255.0:
            out, how = values, f"{span}: already within 0..255, used as they are (--high-bit-depth auto)"
        else:
            base = min(lo, 0.0)
            out = (values - base) * (255.0 / (hi - base))
            how = f"{span} mapped linearly {base:g}..{hi:g} -> 0..255 (--high-bit-depth auto)"
    return np.clip(np.rint(out), 0, 255).astype(np.uint8), how


@contextmanager
def _pillow_limit_off() -> Iterator[None]:
    """Pillow's decompression-bomb check off: :class:`ImageReader` applies its own ceiling."""
    from PIL import Image

    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            yield
    finally:
        Image.MAX_IMAGE_PIXELS = saved


@dataclass(frozen=True)
class ImageReader:
    """The reading rules (see the module docstring); every method raises a DataError that
    names the file (a :class:`~fasterrcnn.data.problems.ProblemError` with its kind)."""

    exif: str = "apply"
    high_bit: str = "auto"
    max_pixels: int | None = DEFAULT_MAX_PIXELS

    def __post_init__(self) -> None:
        if self.exif not in EXIF_MODES:
            raise DataError(f"exif must be one of {EXIF_MODES}, got {self.exif!r}")
        if self.high_bit not in HIGH_BIT_RULES:
            raise DataError(f"high_bit must be one of {HIGH_BIT_RULES}, got {self.high_bit!r}")
        if self.max_pixels is not None and self.max_pixels < 0:
            raise DataError(f"max_pixels must be >= 0 (0: no ceiling), got {self.max_pixels}")

    @classmethod
    def from_args(cls, args: Any) -> "ImageReader":
        """From the command-line flags ``--exif``, ``--high-bit-depth``, ``--max-image-pixels``
        (defaults where a command lacks one)."""
        return cls(
            exif=getattr(args, "exif", None) or "apply",
            high_bit=getattr(args, "high_bit_depth", None) or "auto",
            max_pixels=getattr(args, "max_image_pixels", DEFAULT_MAX_PIXELS),
        )

    # ------------------------------------------------------------------ opening

    @contextmanager
    def _open(self, path: Path) -> Iterator[tuple[Any, ImageInfo]]:
        from PIL import Image, UnidentifiedImageError

        if not path.is_file():
            raise problem_error(path, "image file not found", MISSING_IMAGE)
        with _pillow_limit_off():
            try:
                im = Image.open(path)
            except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
                raise problem_error(path, f"cannot read image ({exc})", CORRUPT_IMAGE) from None
            with im:
                w, h = im.size
                if w < 1 or h < 1:
                    raise problem_error(path, "empty image (0 pixels)", CORRUPT_IMAGE)
                ceiling = self.max_pixels or 0
                if ceiling and w * h > ceiling:
                    raise problem_error(
                        path, f"image is {w}x{h} (WxH) = {w * h / 1e6:.0f} megapixels, over the "
                        f"ceiling of {ceiling / 1e6:g} megapixels; raise it with "
                        "--max-image-pixels N (0: no ceiling) if the machine has the memory, or "
                        "cut the image into tiles", TOO_LARGE_IMAGE)
                orientation = 1
                try:
                    orientation = int(im.getexif().get(_ORIENTATION_TAG, 1) or 1)
                except Exception:  # a broken EXIF block: the pixels may still be fine
                    orientation = 1
                if orientation not in range(1, 9):
                    orientation = 1
                swap = self.exif == "apply" and orientation in (5, 6, 7, 8)
                info = ImageInfo(str(path), h, w, w if swap else h, h if swap else w,
                                 orientation, im.mode)
                try:
                    yield im, info
                except (OSError, SyntaxError, ValueError, EOFError) as exc:
                    raise problem_error(path, f"cannot read image ({exc})", CORRUPT_IMAGE) from None

    def size(self, path: str | Path) -> tuple[int, int]:
        """``(height, width)`` as :meth:`load` gives it, from the header (no decode)."""
        with self._open(Path(path)) as (_, info):
            return info.height, info.width

    def inspect(self, path: str | Path, decode: bool = True) -> ImageInfo:
        """The file's :class:`ImageInfo`; with ``decode`` the pixels are decoded too (JPEGs at
        1/8 scale, which still reads all of the file) so that truncated files are found, and
        the value mapping of a high-bit-depth image is worked out."""
        path = Path(path)
        with self._open(path) as (im, info):
            if not decode:
                return info
            if im.mode in HIGH_BIT_MODES:
                _, how = self._to_rgb(im)
                return ImageInfo(**{**info.__dict__, "mapping": how})
            if im.format == "JPEG":
                im.draft("RGB", (max(1, info.raw_width // 8), max(1, info.raw_height // 8)))
            im.load()
            return info

    def load(self, path: str | Path) -> torch.Tensor:
        """The image as a uint8 RGB tensor ``[3, H, W]``."""
        return self.load_with_info(path)[0]

    def load_with_info(self, path: str | Path) -> tuple[torch.Tensor, ImageInfo]:
        from PIL import ImageOps

        path = Path(path)
        with self._open(path) as (im, info):
            im.load()
            if self.exif == "apply" and info.orientation != 1:
                im = ImageOps.exif_transpose(im)
            arr, how = self._to_rgb(im)
        if how is not None:
            info = ImageInfo(**{**info.__dict__, "mapping": how})
        if arr.shape[0] != info.height or arr.shape[1] != info.width:  # never expected
            raise problem_error(path, f"decoded to {arr.shape[1]}x{arr.shape[0]} but the header "
                                f"says {info.width}x{info.height}", CORRUPT_IMAGE)
        return torch.from_numpy(np.array(arr, np.uint8)).permute(2, 0, 1).contiguous(), info

    def _to_rgb(self, im: Any) -> tuple[np.ndarray, str | None]:
        if im.mode in HIGH_BIT_MODES:
            arr = np.asarray(im)
            bits = 16 if im.mode.startswith("I;16") else 32
            gray, how = map_high_bit(arr, self.high_bit, im.mode == "F", bits)
            how = f"{'float' if im.mode == 'F' else f'{bits}-bit'} grayscale ({im.mode}), {how}"
            return np.repeat(gray[:, :, None], 3, axis=2), how
        if im.mode == "P" and "transparency" in im.info:
            im = im.convert("RGBA")
        return np.asarray(im.convert("RGB"), dtype=np.uint8), None


DEFAULT_READER = ImageReader()


def orientation_text(orientation: int) -> str:
    return _ORIENTATION_TEXT.get(orientation, "no change")


def mismatch_message(info: ImageInfo, height: int, width: int, reader: ImageReader) -> str:
    """Why the image is not the ``width`` x ``height`` its annotation says, naming EXIF
    orientation when reading it the other way would fit."""
    msg = f"image is {info.width}x{info.height} (WxH) but its annotation says {width}x{height}"
    if info.swaps_axes:
        turn = f"EXIF orientation {info.orientation} ({orientation_text(info.orientation)})"
        if reader.exif == "apply" and (info.raw_height, info.raw_width) == (height, width):
            msg += (f"; the file has {turn}, which is applied (--exif apply), and the annotation "
                    f"fits the raw {info.raw_width}x{info.raw_height} pixel grid instead: it was "
                    "made on the unrotated pixels, so pass --exif ignore")
        elif reader.exif == "ignore" and (info.raw_width, info.raw_height) == (height, width):
            msg += (f"; the file has {turn}, which is ignored (--exif ignore), and the annotation "
                    "fits the image as viewers show it: pass --exif apply")
        else:
            msg += f" (the file has {turn}; --exif {reader.exif})"
    return msg


def load_sample(
    path: str | Path, ann: Annotation, reader: ImageReader = DEFAULT_READER
) -> tuple[torch.Tensor, dict]:
    """Decode the image of ``ann`` and return ``(image, ann.as_target())``; DataError when the
    image's size is not the annotation's."""
    image, info = reader.load_with_info(path)
    if (info.height, info.width) != (ann.height, ann.width):
        raise problem_error(path, mismatch_message(info, ann.height, ann.width, reader),
                            SIZE_MISMATCH)
    return image, ann.as_target()
