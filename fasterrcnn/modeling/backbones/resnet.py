"""ResNet-50/101 (He et al.) for detection: the paper's C4 model and the FPN model.

Shapes: N images, R RoIs; k-th level at stride 2**k has ceil(H / 2**k) x ceil(W / 2**k) cells.
  * :class:`ResNetC4`: [N, 3, H, W] -> {"p4": [N, 1024, H/16, W/16]} (res4 = ``layer3``).
  * :class:`ResNetC5Head`: pooled RoIs [R, 1024, 14, 14] -> res5 (``layer4``, first block
    stride 2) [R, 2048, 7, 7] -> global average pool -> [R, 2048].
  * :class:`ResNetFPN`: [N, 3, H, W] -> {"p2", "p3", "p4", "p5", "p6"}, each [N, 256, H/s, W/s],
    s = 4, 8, 16, 32, 64 (FPN over ``layer1..layer4``; p6 subsamples p5).

C4 (the ResNet paper's Faster R-CNN, detectron2's "C4" recipe): conv1..res4 are the shared conv
layers; the RPN and RoI pooling read res4 at stride 16. RoIs are pooled to 14x14 (RoIAlign at
scale 1/16) and res5 is the per-RoI box head: its first block's stride 2 brings them to 7x7, and
a global average pool gives the 2048-d vector that the class/box predictors read. The head holds
``layer4``'s ImageNet weights, so nothing of the classifier's conv stack is left untrained.

Building blocks: torchvision's ``resnet50``/``resnet101`` modules with ``FrozenBatchNorm2d``
(ImageNet statistics and affine fixed). Parameter names are torchvision's: ``body.conv1``,
``body.layer1.0.conv1``, ...; ``fpn.inner_blocks.*`` / ``fpn.layer_blocks.*`` (see fpn.py), so a
``fasterrcnn_resnet50_fpn`` / ``fasterrcnn_resnet50_fpn_v2`` backbone state dict loads after
:func:`from_torchvision_state` (drops BN counters), e.g. from a COCO checkpoint file::

    net = resnet50_fpn_v2()
    coco = read_state_dict("fasterrcnn_resnet50_fpn_v2_coco-dd69338a.pth")  # the whole detector
    net.load_state_dict(from_torchvision_state(coco))

``trainable_layers`` (0-5) as torchvision's: the last k of (layer4, layer3, layer2, layer1,
conv1) train, the rest is frozen (default 3: conv1 and layer1 frozen). In the C4 split layer4 is
the head's, so ``ResNetC4(trainable_layers=k)`` trains the last k-1 of (layer3, layer2, layer1,
conv1) and ``ResNetC5Head(trainable_layers=k)`` trains layer4 when k >= 1.

Weights: ``weights`` is a local file with a torchvision ImageNet classification state dict
(``conv1.weight``, ``layer1.0.conv1.weight``, ..., ``fc.*`` ignored), checked key by key and shape
by shape; anything else raises :class:`BackboneWeightsError` naming the file and which file to
pass. The FPN convs start from random init (kaiming uniform), as in torchvision.
"""

from __future__ import annotations

from collections import OrderedDict
from functools import lru_cache
from pathlib import Path
from typing import Callable

import torchvision
from torch import Tensor, nn
from torchvision.ops.misc import FrozenBatchNorm2d

from .common import BackboneWeightsError, load_matching
from .fpn import (
    FeaturePyramid, MultiLevelBackbone, NormLayer, check_classifier_state, from_torchvision_state,
    read_with_hint,
)

_BUILDERS: dict[int, Callable[..., torchvision.models.ResNet]] = {
    50: torchvision.models.resnet50,
    101: torchvision.models.resnet101,
}
IMAGENET_FILES = {
    50: "resnet50-0676ba61.pth (ResNet50_Weights.IMAGENET1K_V1) or resnet50-11ad3fa6.pth (IMAGENET1K_V2)",
    101: "resnet101-63fe2227.pth (ResNet101_Weights.IMAGENET1K_V1) or resnet101-cd907fc2.pth (IMAGENET1K_V2)",
}
TRAINABLE_ORDER = ("layer4", "layer3", "layer2", "layer1", "conv1")
LAYER_CHANNELS = (256, 512, 1024, 2048)  # layer1..layer4 outputs (bottleneck blocks)


def _hint(depth: int) -> str:
    return (
        f"pass a local torchvision ImageNet ResNet-{depth} state dict, e.g. {IMAGENET_FILES[depth]} "
        f"from download.pytorch.org/models, or torch.save(resnet{depth}(weights=...).state_dict(), path)"
    )


def build_resnet(depth: int, norm: NormLayer = FrozenBatchNorm2d) -> torchvision.models.ResNet:
    """torchvision's ResNet-``depth`` (50 or 101) with ``norm`` layers (FrozenBatchNorm2d, or
    nn.BatchNorm2d for training from scratch), random init."""
    if depth not in _BUILDERS:
        raise ValueError(f"ResNet depth must be one of {sorted(_BUILDERS)}, got {depth}")
    return _BUILDERS[depth](weights=None, norm_layer=norm)


@lru_cache(maxsize=None)
def _reference_shapes(depth: int) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in build_resnet(depth).state_dict().items() if not k.startswith("fc.")}


def load_resnet_state(path: str | Path, depth: int) -> dict[str, Tensor]:
    """The ImageNet ResNet-``depth`` state dict in ``path`` without ``fc.*`` and BN counters;
    BackboneWeightsError (naming the file) unless every conv/BN tensor is there with its shape."""
    state = read_with_hint(path, _hint(depth))
    source = f"{path} (ResNet-{depth})"
    return check_classifier_state(state, _reference_shapes(depth), source, _hint(depth), ("fc.",))


def freeze_resnet(module: nn.Module, trainable_layers: int) -> None:
    """Stop gradients to every parameter of ``module`` (named as in torchvision's ResNet) that is
    not in the last ``trainable_layers`` of (layer4, layer3, layer2, layer1, conv1)."""
    if not 0 <= trainable_layers <= len(TRAINABLE_ORDER):
        raise ValueError(f"trainable_layers must be in 0..5, got {trainable_layers}")
    train = TRAINABLE_ORDER[:trainable_layers] + (("bn1",) if trainable_layers == 5 else ())
    for name, p in module.named_parameters():
        if not name.startswith(train):
            p.requires_grad_(False)


class ResNetBody(nn.Module):
    """conv1 .. layer{num_layers} of a torchvision ResNet; forward returns each layer's output."""

    def __init__(self, net: torchvision.models.ResNet, num_layers: int) -> None:
        super().__init__()
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.num_layers = num_layers
        for i in range(1, num_layers + 1):
            setattr(self, f"layer{i}", getattr(net, f"layer{i}"))

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        outs = []
        for i in range(1, self.num_layers + 1):
            x = getattr(self, f"layer{i}")(x)
            outs.append(x)
        return outs


def _load_body(body: nn.Module, weights: str | Path | None, depth: int) -> None:
    if weights is None:
        return
    state = load_resnet_state(weights, depth)
    load_matching(body, state, str(weights))


class ResNetC4(MultiLevelBackbone):
    """conv1 .. res4 (``layer3``): {"p4": [N, 1024, H/16, W/16]}; pair with :class:`ResNetC5Head`."""

    out_channels = LAYER_CHANNELS[2]
    stride = 16

    def __init__(self, depth: int = 50, weights: str | Path | None = None, trainable_layers: int = 3,
                 *, body_norm: NormLayer = FrozenBatchNorm2d) -> None:
        super().__init__()
        self.depth = depth
        self._strides = {"p4": 16}
        self.body = ResNetBody(build_resnet(depth, body_norm), num_layers=3)
        _load_body(self.body, weights, depth)
        freeze_resnet(self.body, trainable_layers)  # layer4 is not here: k trains k-1 of these

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:  # type: ignore[override]
        return OrderedDict(p4=self.body(x)[-1])


class ResNetC5Head(nn.Module):
    """res5 as the RoI box head: [R, 1024, 14, 14] -> [R, 2048] (``out_channels``).

    Keys ``layer4.*`` as in the ImageNet classifier. The 14x14 pool size is the C4 recipe's
    (detectron2 ``POOLER_RESOLUTION: 14`` for C4, res5's stride 2 -> 7x7); any even size works.
    """

    out_channels = LAYER_CHANNELS[3]

    def __init__(self, depth: int = 50, weights: str | Path | None = None, trainable_layers: int = 3,
                 *, body_norm: NormLayer = FrozenBatchNorm2d) -> None:
        super().__init__()
        self.layer4 = build_resnet(depth, body_norm).layer4
        if weights is not None:
            state = load_resnet_state(weights, depth)
            load_matching(self, {k: v for k, v in state.items() if k.startswith("layer4.")}, str(weights))
        freeze_resnet(self, trainable_layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.layer4(x).mean(dim=(2, 3))


class ResNetFPN(MultiLevelBackbone):
    """ResNet + FPN: {"p2": /4, "p3": /8, "p4": /16, "p5": /32, "p6": /64}, ``out_channels`` each.

    ``norm_layer`` goes into the FPN's lateral/output blocks (None: plain convs with bias, as
    ``fasterrcnn_resnet50_fpn``; ``nn.BatchNorm2d`` as ``fasterrcnn_resnet50_fpn_v2``);
    ``body_norm`` into the ResNet (FrozenBatchNorm2d, or nn.BatchNorm2d from scratch).
    """

    def __init__(
        self,
        depth: int = 50,
        weights: str | Path | None = None,
        trainable_layers: int = 3,
        *,
        out_channels: int = 256,
        norm_layer: NormLayer | None = None,
        body_norm: NormLayer = FrozenBatchNorm2d,
    ) -> None:
        super().__init__()
        self.depth = depth
        self.out_channels = out_channels
        self._strides = {f"p{k}": 2**k for k in range(2, 7)}
        self.body = ResNetBody(build_resnet(depth, body_norm), num_layers=4)
        _load_body(self.body, weights, depth)
        freeze_resnet(self.body, trainable_layers)
        self.fpn = FeaturePyramid(LAYER_CHANNELS, out_channels, norm_layer=norm_layer, extra_pool=True)

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:  # type: ignore[override]
        return OrderedDict(zip(self.strides, self.fpn(self.body(x))))


def resnet50_fpn(weights: str | Path | None = None, trainable_layers: int = 3) -> ResNetFPN:
    """The backbone of torchvision's ``fasterrcnn_resnet50_fpn`` (FPN without norm layers)."""
    return ResNetFPN(50, weights, trainable_layers)


def resnet50_fpn_v2(weights: str | Path | None = None, trainable_layers: int = 3) -> ResNetFPN:
    """The backbone of torchvision's ``fasterrcnn_resnet50_fpn_v2`` (Li et al., "Benchmarking
    Detection Transfer Learning with Vision Transformers"): FPN blocks with BatchNorm2d. The body
    has frozen BN here (torchvision's v2 trains the body's BatchNorm2d); equal in eval mode."""
    return ResNetFPN(50, weights, trainable_layers, norm_layer=nn.BatchNorm2d)


__all__ = [
    "BackboneWeightsError", "ResNetBody", "ResNetC4", "ResNetC5Head", "ResNetFPN",
    "build_resnet", "freeze_resnet", "from_torchvision_state", "load_resnet_state",
    "resnet50_fpn", "resnet50_fpn_v2",
]
