"""Backbones: the shared conv layers. ``build_backbone(cfg)`` picks one by name."""

from __future__ import annotations

from ...config import BackboneConfig, ConfigError
from .common import Backbone, BackboneWeightsError, read_state_dict
from .mobilenet import MobileNetV2
from .tiny import STRIDES as TINY_STRIDES, Tiny
from .vgg import VGG16
from .zf import ZF

BACKBONES = ("vgg16", "zf", "tiny", "mobilenet_v2")


def build_backbone(cfg: BackboneConfig, *, load_weights: bool = True) -> Backbone:
    """The backbone ``cfg`` names. ``load_weights=False`` builds the same architecture (for a
    pretrained config too) without reading ``cfg.weights``: for loading a checkpoint, which holds
    every weight, on a machine where the ImageNet file is absent."""
    weights = cfg.weights if load_weights else None
    if cfg.name == "vgg16":
        _require_stride(cfg, 16)
        return VGG16(weights, cfg.frozen_stages)
    if cfg.name == "zf":
        _require_stride(cfg, 16)
        return ZF(weights, cfg.frozen_stages)
    if cfg.name == "tiny":
        if cfg.stride not in TINY_STRIDES:
            raise ConfigError(f"backbone tiny has stride 4, 8 or 16, config says {cfg.stride}")
        return Tiny(cfg.width, cfg.stride, weights, extra_convs=cfg.extra_convs,
                    fine_channels=cfg.fine_channels)
    if cfg.name == "mobilenet_v2":
        if cfg.stride not in (8, 16):
            raise ConfigError(f"backbone mobilenet_v2 has stride 8 or 16, config says {cfg.stride}")
        return MobileNetV2(weights, cfg.frozen_stages, cfg.stride, pretrained=cfg.weights is not None)
    raise ConfigError(f"unknown backbone {cfg.name!r}; choose one of: {', '.join(BACKBONES)}")


def _require_stride(cfg: BackboneConfig, stride: int) -> None:
    if cfg.stride != stride:
        raise ConfigError(f"backbone {cfg.name} has stride {stride}, config says {cfg.stride}")


__all__ = ["Backbone", "BackboneWeightsError", "build_backbone", "read_state_dict", "BACKBONES"]
