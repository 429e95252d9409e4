"""Backbones: the shared conv layers (the config-to-module choice is in ``modeling.builder``)."""

from __future__ import annotations

from .common import Backbone, BackboneWeightsError, level_name, read_state_dict
from .mobilenet import MobileNetV2
from .tiny import STRIDES as TINY_STRIDES, Tiny
from .vgg import VGG16
from .zf import ZF

__all__ = ["Backbone", "BackboneWeightsError", "MobileNetV2", "TINY_STRIDES", "Tiny", "VGG16", "ZF",
           "level_name", "read_state_dict"]
