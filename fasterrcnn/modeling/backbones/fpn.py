"""Feature pyramid (Lin et al., "Feature Pyramid Networks for Object Detection") and the
multi-level backbone interface.

Shapes: N images, L input levels. Inputs C_1..C_L [N, c_l, H_l, W_l] in increasing stride
(H_{l+1} ~ H_l / 2) -> outputs P_1..P_L [N, D, H_l, W_l], plus, with ``extra_pool``, one more
level [N, D, ceil(H_L / 2), ceil(W_L / 2)] (the paper's P6 for the RPN).

Level names: ``p{k}`` is a map at stride 2**k (``p4`` = the Faster R-CNN paper's stride-16 map).
A multi-level backbone returns ``OrderedDict(p2=..., ..., p6=...)`` in increasing stride and says
each level's stride in ``strides``; read strides from there, not from the names.

Computation (top-down, coarsest first): ``inner = lateral_L(C_L)``; for l = L-1..1,
``inner = lateral_l(C_l) + nearest_upsample(inner, size of lateral_l(C_l))``; each P_l is a 3x3
conv of its ``inner``. Upsampling to the lateral's size (not by a factor 2) handles odd sizes.
The extra level subsamples P_L with a 1x1 max-pool of stride 2 (torchvision's
``LastLevelMaxPool``), which has no parameters.

Parameter names follow torchvision's ``FeaturePyramidNetwork`` so that detection checkpoints
load 1:1: ``inner_blocks.{l}.0`` (1x1 lateral conv) and ``layer_blocks.{l}.0`` (3x3 output
conv), with ``.1`` the norm layer when ``norm_layer`` is given (then the convs have no bias;
torchvision's ``fasterrcnn_resnet50_fpn_v2`` uses ``nn.BatchNorm2d`` there).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from .common import Backbone, BackboneWeightsError, read_state_dict

NormLayer = Callable[[int], nn.Module]


class MultiLevelBackbone(Backbone):
    """A backbone whose forward returns named levels ``{name: [N, out_channels, H/s, W/s]}``,
    an OrderedDict in increasing stride; ``strides`` maps each level name to its stride s.

    Subclasses set ``self._strides`` in their constructor. ``stride`` (the single-map attribute
    of :class:`Backbone`) is set only by one-level backbones.
    """

    def __init__(self) -> None:
        super().__init__()
        self._strides: dict[str, int] = {}

    @property
    def strides(self) -> dict[str, int]:  # type: ignore[override]
        return dict(self._strides)

    @property
    def roi_levels(self) -> tuple[str, ...]:
        """Every level but the pyramid's extra max-pooled one, which serves the RPN only (as in
        the FPN paper, torchvision and detectron2)."""
        levels = tuple(self._strides)
        fpn = getattr(self, "fpn", None)
        return levels[:-1] if fpn is not None and fpn.extra is not None else levels

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:  # type: ignore[override]  # pragma: no cover
        raise NotImplementedError


def level_names(strides: Sequence[int]) -> list[str]:
    """``p{log2 s}`` for each stride s (a power of two); a stride that occurs again gets a
    letter suffix (``p5``, ``p5b``), so that names stay unique (pure)."""
    names: list[str] = []
    for i, s in enumerate(strides):
        k = int(round(math.log2(s)))
        if 2**k != s:
            raise ValueError(f"stride {s} is not a power of two")
        seen = list(strides[:i]).count(s)
        names.append(f"p{k}" if seen == 0 else f"p{k}{'bcdefgh'[seen - 1]}")
    return names


def _conv_block(cin: int, cout: int, kernel: int, norm_layer: NormLayer | None) -> nn.Sequential:
    conv = nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=norm_layer is None)
    nn.init.kaiming_uniform_(conv.weight, a=1)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    return nn.Sequential(conv) if norm_layer is None else nn.Sequential(conv, norm_layer(cout))


class FeaturePyramid(nn.Module):
    """FPN over ``len(in_channels)`` levels, ``out_channels`` (D) channels at every level."""

    def __init__(
        self,
        in_channels: Sequence[int],
        out_channels: int = 256,
        *,
        norm_layer: NormLayer | None = None,
        extra_pool: bool = True,
    ) -> None:
        super().__init__()
        if not in_channels or min(in_channels) <= 0:
            raise ValueError(f"in_channels must be positive channel counts, got {list(in_channels)}")
        self.out_channels = out_channels
        self.inner_blocks = nn.ModuleList(_conv_block(c, out_channels, 1, norm_layer) for c in in_channels)
        self.layer_blocks = nn.ModuleList(
            _conv_block(out_channels, out_channels, 3, norm_layer) for _ in in_channels
        )
        # a module (not F.max_pool2d) so that modeling/padding.py sees the subsampling
        self.extra = nn.MaxPool2d(kernel_size=1, stride=2) if extra_pool else None

    @property
    def num_outputs(self) -> int:
        return len(self.inner_blocks) + (self.extra is not None)

    def forward(self, feats: Sequence[Tensor]) -> list[Tensor]:
        """C_1..C_L (increasing stride) -> P_1..P_L (+ the extra level)."""
        if len(feats) != len(self.inner_blocks):
            raise ValueError(f"FPN built for {len(self.inner_blocks)} levels, got {len(feats)}")
        inner = self.inner_blocks[-1](feats[-1])
        outs = [self.layer_blocks[-1](inner)]
        for lateral, smooth, c in zip(
            reversed(self.inner_blocks[:-1]), reversed(self.layer_blocks[:-1]), reversed(feats[:-1])
        ):
            lat = lateral(c)
            inner = lat + F.interpolate(inner, size=lat.shape[-2:], mode="nearest")
            outs.insert(0, smooth(inner))
        if self.extra is not None:
            outs.append(self.extra(outs[-1]))
        return outs


def from_torchvision_state(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A torchvision detection backbone's state dict in our modules' layout (pure).

    Accepts ``model.backbone.state_dict()`` (keys ``body.*``, ``fpn.*``) or a whole detector's
    state dict / checkpoint file content (keys ``backbone.body.*``: only ``backbone.*`` is kept,
    prefix stripped). Our modules mirror torchvision's names, so the only change is dropping
    ``body.*.num_batches_tracked``: our bodies use FrozenBatchNorm2d, which has no such counter
    (torchvision builds ``nn.BatchNorm2d`` bodies when no weights are requested). FPN norm layers
    keep theirs.
    """
    if any(k.startswith("backbone.") for k in state):
        state = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    return {
        k: v for k, v in state.items()
        if not (k.startswith("body.") and k.endswith(".num_batches_tracked"))
    }


def read_with_hint(path: str | Path, hint: str) -> dict[str, Tensor]:
    """:func:`read_state_dict`, with ``hint`` (which file to pass) added to its error."""
    try:
        return read_state_dict(path)
    except BackboneWeightsError as exc:
        raise BackboneWeightsError(f"{exc}; {hint}") from None


def check_classifier_state(
    state: dict[str, Tensor],
    reference: dict[str, tuple[int, ...]],
    source: str,
    hint: str,
    head_prefixes: tuple[str, ...],
) -> dict[str, Tensor]:
    """``state`` without its classifier (``head_prefixes``) and BN counters, after checking that
    it holds exactly the ``reference`` keys with their shapes (else BackboneWeightsError naming
    ``source`` and ``hint``)."""
    state = {
        k: v for k, v in state.items()
        if not k.startswith(head_prefixes) and not k.endswith(".num_batches_tracked")
    }
    missing = [k for k in reference if k not in state]
    unexpected = [k for k in state if k not in reference]
    wrong = [
        f"{k}: file {tuple(state[k].shape)} vs model {shape}"
        for k, shape in reference.items() if k in state and tuple(state[k].shape) != shape
    ]
    if missing or unexpected or wrong:
        detail = []
        if missing:
            detail.append(
                f"missing {len(missing)} of {len(reference)} tensors, e.g. {', '.join(missing[:3])}"
            )
        if unexpected:
            detail.append(f"{len(unexpected)} unexpected, e.g. {', '.join(unexpected[:3])}")
        if wrong:
            detail.append("shape mismatch: " + "; ".join(wrong[:3]))
        raise BackboneWeightsError(f"{source}: weights do not fit ({' / '.join(detail)}); {hint}")
    return state
