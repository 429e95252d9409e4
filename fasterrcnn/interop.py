"""torchvision's trained Faster R-CNN detectors as fasterrcnn checkpoints.

:func:`import_torchvision` writes a checkpoint for one of :data:`TORCHVISION_DETECTORS` from a
local state-dict file (offline) or, when none is given, from torchvision's weights API (which
downloads on first use). The preset of the same settings is used, so that ``predict`` gives
torchvision's detections: the same resize, anchors, proposals, pooling and post-processing.

Label ``i`` is COCO category id ``i`` (1..90, torchvision's 91-index map with background 0);
ids COCO left unused are named ``N/A``, as in torchvision.

What changes in the weights: the RPN's one objectness logit per anchor becomes our two-class
pair (background logit 0, object logit torchvision's; softmax gives torchvision's sigmoid), the
RPN conv and box predictor keys are renamed, and the backbone's frozen BatchNorm drops its
``num_batches_tracked`` counters. For ``fasterrcnn_resnet50_fpn_v2`` also: the RPN's second conv
(``rpn.head.conv.1.0``) becomes ``rpn.head.extra_convs.0`` and the layers of torchvision's
``FastRCNNConvFCHead`` (an ``nn.Sequential``: conv blocks, flatten, Linear/ReLU pairs) become our
:class:`~.modeling.roi_heads.ConvFCBoxHead`'s ``convs.{i}`` and ``fcs.{j}``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Mapping

import torch
from torch import Tensor

from .config import Config, ConfigError
from .engine.checkpoint import CheckpointError, export_weights, load_state_strict
from .modeling.backbones.common import read_state_dict
from .modeling.backbones.fpn import from_torchvision_state
from .modeling.builder import build_model
from .presets import preset

# torchvision builder name -> (our preset, torchvision weights enum)
TORCHVISION_DETECTORS: dict[str, tuple[str, str]] = {
    "fasterrcnn_resnet50_fpn": ("resnet50-fpn", "FasterRCNN_ResNet50_FPN_Weights"),
    "fasterrcnn_resnet50_fpn_v2": ("resnet50-fpn-v2", "FasterRCNN_ResNet50_FPN_V2_Weights"),
    "fasterrcnn_mobilenet_v3_large_fpn": ("mobilenetv3-fpn", "FasterRCNN_MobileNet_V3_Large_FPN_Weights"),
    "fasterrcnn_mobilenet_v3_large_320_fpn": ("mobilenetv3-320-fpn",
                                              "FasterRCNN_MobileNet_V3_Large_320_FPN_Weights"),
}


class TorchvisionImportError(ConfigError):
    """A torchvision model name or state dict that cannot be imported."""


def coco_classes() -> tuple[str, ...]:
    """The names of labels 1..90 (COCO category ids; unused ids are ``N/A``)."""
    from torchvision.models._meta import _COCO_CATEGORIES

    return tuple(_COCO_CATEGORIES[1:])


_RPN_CONV = re.compile(r"rpn\.head\.conv\.(\d+)\.0\.")  # RPNHead: conv.{i} = Conv2dNormActivation(conv, ReLU)
_BOX_HEAD_LAYER = re.compile(r"roi_heads\.box_head\.(\d+)\.")  # FastRCNNConvFCHead's layer index
_BOX_HEAD_CONV = re.compile(r"roi_heads\.box_head\.(\d+)\.0\.weight")  # its conv blocks' convs


def convert_state(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A torchvision ``FasterRCNN`` state dict in our module names (see the module docstring)."""
    out = {f"backbone.{k}": v for k, v in from_torchvision_state(dict(state)).items()}
    num_box_convs = sum(1 for key in state if _BOX_HEAD_CONV.fullmatch(key))
    for key, value in state.items():
        if key.startswith("backbone."):
            continue
        if key.startswith("rpn.head.cls_logits."):  # one logit per anchor -> (background 0, object)
            value = torch.cat((torch.zeros_like(value), value), dim=0)
        out[_our_name(key, num_box_convs)] = value
    return out


def _our_name(key: str, num_box_convs: int) -> str:
    """Our name of a torchvision detector's RPN or RoI-head tensor ``key`` (pure)."""
    rpn_conv = _RPN_CONV.match(key)
    if rpn_conv:
        i = int(rpn_conv.group(1))
        return ("rpn.head.conv." if i == 0 else f"rpn.head.extra_convs.{i - 1}.") + key[rpn_conv.end():]
    layer = _BOX_HEAD_LAYER.match(key)
    if layer:  # conv blocks 0..n-1, Flatten at n, then Linear at n + 1, n + 3, ... (ReLUs between)
        j = int(layer.group(1))
        ours = f"convs.{j}" if j < num_box_convs else f"fcs.{(j - num_box_convs - 1) // 2}"
        return f"roi_heads.box_head.{ours}." + key[layer.end():]
    return key.replace("roi_heads.box_predictor.", "roi_heads.predictor.")


def torchvision_config(name: str, num_classes: int = 90) -> Config:
    """The preset that reproduces torchvision's ``name`` (KeyError-free: raises TorchvisionImportError)."""
    if name not in TORCHVISION_DETECTORS:
        raise TorchvisionImportError(f"unknown torchvision detector {name!r}; choose one of: "
                           f"{', '.join(TORCHVISION_DETECTORS)}")
    cfg = preset(TORCHVISION_DETECTORS[name][0])
    return cfg if num_classes == cfg.model.num_classes else _with_classes(cfg, num_classes)


def _with_classes(cfg: Config, num_classes: int) -> Config:
    import dataclasses

    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, num_classes=num_classes))


def torchvision_state(name: str, state_dict: str | os.PathLike | None) -> dict[str, Tensor]:
    """The detector's weights: a local file, or torchvision's weights API (online)."""
    if state_dict is not None:
        return read_state_dict(state_dict)
    import torchvision.models.detection as detection

    weights = getattr(detection, TORCHVISION_DETECTORS[name][1]).DEFAULT
    try:
        return weights.get_state_dict(progress=True)
    except Exception as exc:  # offline: say which file to pass instead
        raise TorchvisionImportError(
            f"cannot get {name}'s COCO weights through torchvision ({exc.__class__.__name__}: {exc}); "
            f"download {weights.url} elsewhere and pass it with --from-state-dict FILE"
        ) from None


def import_torchvision(name: str, out: str | os.PathLike, state_dict: str | os.PathLike | None = None) -> Path:
    """Write ``out``: a fasterrcnn checkpoint of torchvision's ``name`` with its COCO weights."""
    cfg = torchvision_config(name)
    state = torchvision_state(name, state_dict)
    classes_out = state.get("roi_heads.box_predictor.cls_score.weight")
    if classes_out is None:
        raise TorchvisionImportError(f"{state_dict or name}: not a torchvision Faster R-CNN state dict "
                           "(no roi_heads.box_predictor.cls_score.weight)")
    num_classes = int(classes_out.shape[0]) - 1
    cfg = _with_classes(cfg, num_classes) if num_classes != cfg.model.num_classes else cfg
    classes = coco_classes() if num_classes == 90 else tuple(f"class{i}" for i in range(1, num_classes + 1))
    model = build_model(cfg.model, load_backbone_weights=False)
    try:
        load_state_strict(model, convert_state(state), str(state_dict or name))
    except CheckpointError as exc:
        raise TorchvisionImportError(f"{state_dict or name}: not the weights of torchvision's {name} "
                                     f"({str(exc).split(': ', 1)[-1]})") from None
    export_weights(Path(out), model=model.state_dict(), cfg=cfg, classes=classes)
    return Path(out)
