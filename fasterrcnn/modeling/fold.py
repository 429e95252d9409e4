"""Folding BatchNorm into the convolution before it, for inference.

In eval mode a BatchNorm (``nn.BatchNorm2d`` with running statistics, or torchvision's
``FrozenBatchNorm2d``) is one affine map per channel, ``y = (x - mean) * g / sqrt(var + eps) + b``.
Applied to a convolution's output it can be folded into that convolution: weights scaled by
``s = g / sqrt(var + eps)`` per output channel, bias ``(bias - mean) * s + b``. The network then
computes the same function up to float rounding with one pass over each activation fewer (the
norm layer's read and write of the whole map): the BatchNorm-heavy backbones (MobileNet, ResNet,
the tiny demo net) run faster on a CPU, where those passes are memory-bound. The FPN's own
BatchNorm (``backbone.fpn_norm="bn"``) and the box head's conv layers fold the same way.

:func:`fold_batchnorm` returns a folded copy for inference; the model given is left as it is
(training and checkpoints keep the norm layers). Pairs are found where the convolution's output
goes only to the norm layer: adjacent children of an ``nn.Sequential`` (torchvision's
``Conv2dNormActivation``, MobileNet blocks, ResNet downsample branches, this package's
backbones), and ``conv{k}``/``bn{k}`` of torchvision's ResNet blocks and stem.

Shapes: C_out output channels of a convolution.
"""

from __future__ import annotations

import copy

import torch
import torchvision
from torch import Tensor, nn
from torchvision.ops.misc import FrozenBatchNorm2d

from .backbones.resnet import ResNetBody

NORMS = (nn.BatchNorm2d, FrozenBatchNorm2d)
# modules whose forward applies norm_k to conv_k's output alone (torchvision's ResNet blocks, the
# stem of this package's ResNet bodies)
NAMED_PAIRS = {
    torchvision.models.resnet.Bottleneck: (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3")),
    torchvision.models.resnet.BasicBlock: (("conv1", "bn1"), ("conv2", "bn2")),
    ResNetBody: (("conv1", "bn1"),),
}


def affine_of(norm: nn.Module) -> tuple[Tensor, Tensor]:
    """(scale [C], shift [C]) of an eval-mode norm layer: ``norm(x) = x * scale + shift``."""
    if isinstance(norm, nn.BatchNorm2d):
        if norm.running_mean is None or norm.running_var is None:
            raise ValueError("a BatchNorm2d without running statistics cannot be folded")
        weight = norm.weight if norm.affine else torch.ones_like(norm.running_var)
        bias = norm.bias if norm.affine else torch.zeros_like(norm.running_mean)
    elif isinstance(norm, FrozenBatchNorm2d):
        weight, bias = norm.weight, norm.bias
    else:
        raise TypeError(f"not a BatchNorm layer: {type(norm).__name__}")
    scale = weight * (norm.running_var + norm.eps).rsqrt()
    return scale, bias - norm.running_mean * scale


def fold_pair(conv: nn.Conv2d, norm: nn.Module) -> nn.Conv2d:
    """A convolution computing ``norm(conv(x))`` (``norm`` in eval mode)."""
    scale, shift = affine_of(norm)
    fused = copy.deepcopy(conv)
    with torch.no_grad():
        fused.weight.copy_(conv.weight * scale.reshape(-1, *([1] * (conv.weight.dim() - 1))))
        bias = shift if conv.bias is None else conv.bias * scale + shift
        fused.bias = nn.Parameter(bias.detach().clone(), requires_grad=conv.weight.requires_grad)
    return fused


def _fold_in_place(module: nn.Module) -> int:
    count = 0
    for pair in NAMED_PAIRS.get(type(module), ()):
        conv, norm = getattr(module, pair[0]), getattr(module, pair[1])
        if isinstance(conv, nn.Conv2d) and isinstance(norm, NORMS):
            setattr(module, pair[0], fold_pair(conv, norm))
            setattr(module, pair[1], nn.Identity())
            count += 1
    if isinstance(module, nn.Sequential):
        names = list(module._modules)
        for a, b in zip(names, names[1:]):
            conv, norm = module._modules[a], module._modules[b]
            if isinstance(conv, nn.Conv2d) and isinstance(norm, NORMS):
                module._modules[a] = fold_pair(conv, norm)
                module._modules[b] = nn.Identity()
                count += 1
    for child in module.children():
        count += _fold_in_place(child)
    return count


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` with every foldable (conv, BatchNorm) pair folded into
    one convolution (see the module's text); ``model`` itself is not changed. The copy records
    how many pairs it folded in ``folded_batchnorms``."""
    folded = copy.deepcopy(model).eval()
    folded.folded_batchnorms = _fold_in_place(folded)
    return folded


__all__ = ["affine_of", "fold_batchnorm", "fold_pair"]
