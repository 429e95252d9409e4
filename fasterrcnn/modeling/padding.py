"""Batch padding that does not change what the network computes for each image.

Shapes: N images padded into one batch [N, C, Hp, Wp]; image i fills the top-left (H_i, W_i).
An *extent* is the (h, w) part of a map [N, C', h', w'] that image i's own pixels produce: what
the layer would output if it ran on image i alone.

A batch of images of different sizes is zero-padded at the bottom and right. Each conv then
mixes padding into the cells next to it, and from the second layer on that padding is no longer
zero (it holds the previous layer's bias, BatchNorm shift and ReLU), so an image's features,
proposals and detections depend on which images share its batch. :class:`PaddingMasker` undoes
this: while the backbone runs it sets every spatial layer's input to zero outside each image's
extent (forward pre-hooks), which is exactly what the layer's own zero padding does for an image
alone. Each layer's output extent follows from its kernel, stride, padding and dilation, as
PyTorch computes output sizes. The result is exact for layers that zero-pad (convolutions with
``padding_mode="zeros"``) and for max-pooling of non-negative inputs (after a ReLU, as in VGG and
ZF); the built-in backbones are all of that kind. A layer that cannot be made exact (reflect or
replicate padding, transposed convs, adaptive pooling) raises :class:`ValueError` up front.
Layers that mix space without being one of these modules (e.g. ``F.interpolate`` in a forward)
take the extent of the map they produce from a layer that made a map of that size.

Downstream, the RPN drops anchors whose cell lies outside an image's extent
(:func:`cell_mask`) and RoI pooling reads each image's own extent of the map only.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn

Extent = tuple[int, int]  # (h, w) valid cells of one image in one map

_SPATIAL = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)
_UNSUPPORTED = (
    nn.ConvTranspose2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.LPPool2d, nn.FractionalMaxPool2d,
    nn.Upsample, nn.ReflectionPad2d, nn.ReplicationPad2d, nn.ZeroPad2d, nn.ConstantPad2d,
)


def _pair(v: int | tuple[int, ...]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def output_size(n: int, kernel: int, stride: int, padding: int, dilation: int = 1,
                ceil_mode: bool = False) -> int:
    """Output length of a conv or pool along one axis of length ``n`` (PyTorch's formula)."""
    span = n + 2 * padding - dilation * (kernel - 1) - 1
    if span < 0:
        return 0
    if not ceil_mode:
        return span // stride + 1
    out = math.ceil(span / stride) + 1
    if (out - 1) * stride >= n + padding:  # the last window must start inside the input
        out -= 1
    return out


def layer_extent(layer: nn.Module, extent: Extent) -> Extent:
    """The extent a conv or pool layer produces from an input extent ``extent``."""
    if isinstance(layer, nn.Conv2d):
        k, s, d = _pair(layer.kernel_size), _pair(layer.stride), _pair(layer.dilation)
        if isinstance(layer.padding, str):  # "same" keeps the size (stride 1), "valid" pads 0
            if layer.padding == "same":
                return extent
            p = (0, 0)
        else:
            p = _pair(layer.padding)
        return (output_size(extent[0], k[0], s[0], p[0], d[0]), output_size(extent[1], k[1], s[1], p[1], d[1]))
    if isinstance(layer, (nn.MaxPool2d, nn.AvgPool2d)):
        k, p = _pair(layer.kernel_size), _pair(layer.padding)
        s = _pair(layer.stride if layer.stride is not None else layer.kernel_size)
        d = _pair(layer.dilation) if isinstance(layer, nn.MaxPool2d) else (1, 1)
        return (
            output_size(extent[0], k[0], s[0], p[0], d[0], layer.ceil_mode),
            output_size(extent[1], k[1], s[1], p[1], d[1], layer.ceil_mode),
        )
    raise TypeError(f"not a conv or pool layer: {type(layer).__name__}")


def check_maskable(module: nn.Module) -> None:
    """Raise ValueError when a layer of ``module`` makes exact padding masks impossible (or the
    module says so: ``maskable = False``, e.g. a backbone that folds space into the batch)."""
    if not getattr(module, "maskable", True):
        raise ValueError(
            f"model.mask_padding: {type(module).__name__} (this configuration) cannot be masked "
            "exactly; turn mask_padding off for this backbone"
        )
    for name, m in module.named_modules():
        bad = ""
        if isinstance(m, _UNSUPPORTED):
            bad = type(m).__name__
        elif isinstance(m, nn.Conv2d) and m.padding_mode != "zeros":
            bad = f"Conv2d with padding_mode={m.padding_mode!r}"
        elif isinstance(m, nn.AvgPool2d) and _pair(m.padding) != (0, 0) and not m.count_include_pad:
            bad = "AvgPool2d with padding and count_include_pad=False"
        if bad:
            raise ValueError(
                f"model.mask_padding: layer {name or '<root>'} ({bad}) cannot be masked exactly; "
                "turn mask_padding off for this backbone"
            )


def valid_mask(extents: Sequence[Extent], size: tuple[int, int], device: torch.device) -> Tensor:
    """[N, 1, h, w] bool: True inside each image's extent of an (h, w) map."""
    e = torch.as_tensor(list(extents), dtype=torch.int64, device=device).reshape(-1, 2)
    rows = torch.arange(size[0], device=device)[None, :, None] < e[:, 0, None, None]
    cols = torch.arange(size[1], device=device)[None, None, :] < e[:, 1, None, None]
    return (rows & cols)[:, None]


def zero_padding(x: Tensor, extents: Sequence[Extent], mask: Tensor | None = None) -> Tensor:
    """``x`` [N, C, h, w] with every cell outside each image's extent set to 0 (a new tensor; ``x``
    itself when nothing is outside). ``mask``: :func:`valid_mask` of these extents, if at hand.

    A product with the 0/1 mask (it keeps channels-last memory, unlike ``masked_fill``, and is
    several times faster), so padding cells that hold inf or NaN would stay NaN; finite ones
    become exactly 0.
    """
    h, w = x.shape[-2:]
    if all(e[0] >= h and e[1] >= w for e in extents):
        return x
    if mask is None:
        mask = valid_mask(extents, (h, w), x.device)
    return x * mask.to(x.dtype)


def cell_mask(extents: Sequence[Extent], size: tuple[int, int], num_anchors: int, device: torch.device) -> Tensor:
    """[N, h * w * A] bool in the RPN's anchor order (cell-major, then anchor): True for the
    anchors of cells inside each image's extent."""
    m = valid_mask(extents, size, device)[:, 0]  # [N, h, w]
    return m[..., None].expand(-1, -1, -1, num_anchors).reshape(len(m), -1)


class PaddingMasker:
    """Context manager: while the backbone runs, zero each spatial layer's input outside every
    image's extent, and record the extents of the maps it makes.

    ``image_sizes`` are the (H, W) of each image inside the padded input of spatial size
    ``input_size`` (Hp, Wp). After the forward, :meth:`extents` gives the extents of an output map.
    """

    def __init__(
        self, module: nn.Module, image_sizes: Sequence[tuple[int, int]], input_size: tuple[int, int]
    ) -> None:
        self.module = module
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self._extents: dict[tuple[int, int], list[Extent]] = {
            self.input_size: [(int(h), int(w)) for h, w in image_sizes]
        }
        self._handles: list = []
        self._masks: dict[tuple, Tensor | None] = {}  # per map size and dtype; None: no padding

    def __enter__(self) -> PaddingMasker:
        for m in self.module.modules():
            if isinstance(m, _SPATIAL):
                self._handles.append(m.register_forward_pre_hook(self._mask_input))
                self._handles.append(m.register_forward_hook(self._record_output))
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def extents(self, x: Tensor) -> list[Extent]:
        """The extents of map ``x`` [N, C, h, w]: recorded when a hooked layer made a map of this
        size, else scaled from the input sizes (rounded up)."""
        size = (int(x.shape[-2]), int(x.shape[-1]))
        if size in self._extents:
            return self._extents[size]
        sy, sx = self.input_size[0] / size[0], self.input_size[1] / size[1]
        return [(min(size[0], math.ceil(h / sy)), min(size[1], math.ceil(w / sx)))
                for h, w in self._extents[self.input_size]]

    def _mask_input(self, layer: nn.Module, args: tuple) -> tuple:
        x = args[0]
        size = (int(x.shape[-2]), int(x.shape[-1]))
        key = (size, x.dtype)
        if key not in self._masks:
            extents = self.extents(x)
            inside = all(e[0] >= size[0] and e[1] >= size[1] for e in extents)
            self._masks[key] = None if inside else valid_mask(extents, size, x.device).to(x.dtype)
        mask = self._masks[key]
        return args if mask is None else (x * mask, *args[1:])

    def _record_output(self, layer: nn.Module, args: tuple, out: Tensor) -> None:
        size = (int(out.shape[-2]), int(out.shape[-1]))
        if size not in self._extents:
            self._extents[size] = [layer_extent(layer, e) for e in self.extents(args[0])]
