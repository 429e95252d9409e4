"""MobileNet + FPN backbones: MobileNetV3-Large FPN (torchvision's ``fasterrcnn_mobilenet_v3_large_fpn``
and ``..._320_fpn`` backbone) and MobileNetV2 FPN (strides 8-64, for small objects).

Shapes: N images; each level [N, 256, ceil(H/s), ceil(W/s)].
  * :class:`MobileNetV3LargeFPN` (default ``taps=(13, 16)``, torchvision's layout):
    {"p5": s 32, "p5b": s 32, "p6": s 64}. With ``taps=(12, 16)``: {"p4": 16, "p5": 32, "p6": 64}.
  * :class:`MobileNetV2FPN`: {"p3": 8, "p4": 16, "p5": 32, "p6": 64}.

The body is torchvision's ``mobilenet_v3_large().features`` / ``mobilenet_v2().features`` (an
``nn.Sequential`` of blocks: stem conv, inverted residuals, last 1x1 conv) with FrozenBatchNorm2d.
The FPN (fpn.py) reads the outputs of the blocks listed in ``taps``, plus a subsampled extra level.

torchvision's layout has two stride-32 levels: its ``_mobilenet_extractor`` taps the last two
"stages", i.e. block 13 (the first stride-32 block, 160 ch) and block 16 (the 960-ch last conv),
not stride 16 and 32 (pytorch/vision#5838; the released COCO weights were trained that way).
We keep that layout by default, so its checkpoints load and give identical features, and name
the levels ``p5`` and ``p5b``. torchvision's RoI pooler maps every box to its first level (both
have scale 1/32), i.e. ``p5``. ``taps=(12, 16)`` (block 12 = last stride-16 block, 112 ch) gives a
true stride-16 level instead, at the cost of checkpoint compatibility (lateral 112 vs 160 ch).

MobileNetV2 FPN taps blocks 6 (32 ch, /8), 13 (96 ch, /16) and 17 (320 ch, /32), the last
linear bottleneck of each resolution (the 1280-ch expansion conv, block 18, is dropped as in
mobilenet.py); ImageNet weights come through mobilenet.py's ``load_mobilenet_v2_state`` (both
layouts it reads). The stride-8 level gives anchors every 8 px for small objects.

``trainable_layers`` as torchvision's ``mobilenet_backbone``: the body's stages start at block 0,
at every strided block (``_is_cn``) and at its last block (V3: 0, 2, 4, 7, 13, 16; V2 here:
0, 2, 4, 7, 14, 17); ``k`` trains the blocks from the k-th stage start counted from the end,
0 freezes the whole body. Range 0..6; default 3 (torchvision's detection default).

Normalisation: FrozenBatchNorm2d with eps 1e-5 (``body_norm=nn.BatchNorm2d`` for training from
scratch, as torchvision builds these detectors without weights). torchvision's detection
builders pass their norm layer explicitly (FrozenBatchNorm2d with backbone weights, else BatchNorm2d), so their
MobileNetV3 has eps 1e-5 too, not the 1e-3 of the classification model.
V3's squeeze-excitation averages over the whole map, batch padding included, so the class says
``maskable = False`` (read by modeling/padding.py's check).

Weights: ``weights`` is a local ImageNet classification state dict (torchvision layout,
``features.*``; ``classifier.*`` ignored), checked tensor by tensor. Detection checkpoints:
``net.load_state_dict(from_torchvision_state(tv_backbone_state))`` (names are torchvision's:
``body.{block}.*``, ``fpn.inner_blocks.*``, ``fpn.layer_blocks.*``).
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Sequence

import torchvision
from torch import Tensor, nn
from torchvision.ops.misc import FrozenBatchNorm2d

from .common import load_matching
from .fpn import (
    FeaturePyramid, MultiLevelBackbone, NormLayer, check_classifier_state, from_torchvision_state,
    level_names, read_with_hint,
)
from .mobilenet import load_mobilenet_v2_state

V3_TAPS = (13, 16)  # torchvision's fasterrcnn_mobilenet_v3_large_fpn
V2_TAPS = (6, 13, 17)
V3_HINT = (
    "pass a local torchvision ImageNet MobileNetV3-Large state dict, e.g. mobilenet_v3_large-8738ca79.pth "
    "(MobileNet_V3_Large_Weights.IMAGENET1K_V1) from download.pytorch.org/models"
)


def block_strides(blocks: nn.Sequential) -> list[int]:
    """Output stride of each block: the stem halves, every block with ``_is_cn`` halves (pure)."""
    out, s = [], 1
    for i, b in enumerate(blocks):
        s *= 2 if i == 0 or getattr(b, "_is_cn", False) else 1
        out.append(s)
    return out


def stage_starts(blocks: nn.Sequential) -> list[int]:
    """torchvision's stage indices: 0, every strided block, the last block."""
    return [0] + [i for i, b in enumerate(blocks) if getattr(b, "_is_cn", False)] + [len(blocks) - 1]


def freeze_stages(blocks: nn.Sequential, trainable_layers: int) -> None:
    """Freeze all blocks before the ``trainable_layers``-th stage start counted from the end."""
    starts = stage_starts(blocks)
    if not 0 <= trainable_layers <= len(starts):
        raise ValueError(f"trainable_layers must be in 0..{len(starts)}, got {trainable_layers}")
    first = len(blocks) if trainable_layers == 0 else starts[len(starts) - trainable_layers]
    for b in blocks[:first]:
        for p in b.parameters():
            p.requires_grad_(False)


class MobileNetFPN(MultiLevelBackbone):
    """FPN over the outputs of ``taps`` (block indices, increasing) of ``blocks`` (a MobileNet
    ``features`` with loaded weights); the body keeps blocks 0..max(taps)."""

    def __init__(
        self,
        blocks: nn.Sequential,
        taps: Sequence[int],
        trainable_layers: int = 3,
        *,
        out_channels: int = 256,
        norm_layer: NormLayer | None = None,
    ) -> None:
        super().__init__()
        taps = tuple(int(t) for t in taps)
        if not taps or list(taps) != sorted(set(taps)) or taps[0] < 0 or taps[-1] >= len(blocks):
            raise ValueError(f"taps must be increasing block indices in 0..{len(blocks) - 1}, got {taps}")
        self.taps = taps
        self.body = nn.Sequential(*list(blocks)[: taps[-1] + 1])
        freeze_stages(self.body, trainable_layers)
        strides = [block_strides(self.body)[t] for t in taps]
        strides.append(2 * strides[-1])
        self._strides = dict(zip(level_names(strides), strides))
        self.out_channels = out_channels
        in_channels = [self.body[t].out_channels for t in taps]
        self.fpn = FeaturePyramid(in_channels, out_channels, norm_layer=norm_layer, extra_pool=True)

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:  # type: ignore[override]
        feats = []
        for i, block in enumerate(self.body):
            x = block(x)
            if i in self.taps:
                feats.append(x)
        return OrderedDict(zip(self.strides, self.fpn(feats)))


def _features_state(state: dict[str, Tensor], num_blocks: int) -> dict[str, Tensor]:
    """``features.{i}.*`` (i < num_blocks) -> ``{i}.*``, the keys of an ``nn.Sequential`` body."""
    out = {}
    for k, v in state.items():
        block, rest = k[len("features."):].split(".", 1)
        if int(block) < num_blocks:
            out[f"{block}.{rest}"] = v
    return out


def load_mobilenet_v3_state(path: str | Path) -> dict[str, Tensor]:
    """The ``features.*`` of an ImageNet MobileNetV3-Large file (torchvision layout), checked."""
    ref = {
        k: tuple(v.shape)
        for k, v in torchvision.models.mobilenet_v3_large(norm_layer=FrozenBatchNorm2d).state_dict().items()
        if k.startswith("features.")
    }
    state = read_with_hint(path, V3_HINT)
    return check_classifier_state(state, ref, f"{path} (MobileNetV3-Large)", V3_HINT, ("classifier.",))


class MobileNetV3LargeFPN(MobileNetFPN):
    """MobileNetV3-Large + FPN; defaults reproduce torchvision's detection backbone."""

    maskable = False  # squeeze-excitation pools the whole map, padding included

    def __init__(
        self,
        weights: str | Path | None = None,
        trainable_layers: int = 3,
        *,
        taps: Sequence[int] = V3_TAPS,
        out_channels: int = 256,
        norm_layer: NormLayer | None = None,
        body_norm: NormLayer = FrozenBatchNorm2d,
    ) -> None:
        blocks = torchvision.models.mobilenet_v3_large(weights=None, norm_layer=body_norm).features
        if weights is not None:
            state = _features_state(load_mobilenet_v3_state(weights), len(blocks))
            load_matching(blocks, state, str(weights))
        super().__init__(blocks, taps, trainable_layers, out_channels=out_channels, norm_layer=norm_layer)


class MobileNetV2FPN(MobileNetFPN):
    """ImageNet MobileNetV2 + FPN at strides 8, 16, 32 (+ 64)."""

    def __init__(
        self,
        weights: str | Path | None = None,
        trainable_layers: int = 3,
        *,
        out_channels: int = 256,
        norm_layer: NormLayer | None = None,
        body_norm: NormLayer = FrozenBatchNorm2d,
    ) -> None:
        full = torchvision.models.mobilenet_v2(weights=None, norm_layer=body_norm).features
        blocks = nn.Sequential(*list(full)[: V2_TAPS[-1] + 1])
        if weights is not None:
            state = _features_state(load_mobilenet_v2_state(weights), len(blocks))
            load_matching(blocks, state, str(weights))
        super().__init__(blocks, V2_TAPS, trainable_layers, out_channels=out_channels, norm_layer=norm_layer)


__all__ = [
    "MobileNetFPN", "MobileNetV2FPN", "MobileNetV3LargeFPN", "block_strides", "freeze_stages",
    "from_torchvision_state", "load_mobilenet_v3_state", "stage_starts",
]
