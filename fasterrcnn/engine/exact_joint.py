"""Non-approximate joint training (the paper's §3.2, ``train.schedule = "exact-joint"``): the
checks a config must pass and the loss the joint loop optimises.

The proposals' coordinates stay attached to the RPN's box deltas and the RoIs are pooled with a
warp that is differentiable in the box coordinates (:mod:`fasterrcnn.modeling.roi_warp`), so the
Fast R-CNN losses also train the RPN's regression; see ``FasterRCNN.loss(..., exact=True)`` for
what the gradient includes.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import Config, ConfigError


def validate_exact_joint(cfg: Config) -> None:
    """ConfigError unless the model can be trained with non-approximate joint training: the box
    gradient needs RoIAlign-style pooling (a fixed or adaptive sampling ratio) and the plain RoI head."""
    h = cfg.model.roi_head
    if h.pooler != "roi_align":
        raise ConfigError(
            f"train.schedule='exact-joint' needs model.roi_head.pooler='roi_align', got {h.pooler!r}: "
            "RoI max pooling has no useful gradient w.r.t. the box coordinates"
        )
    if h.cascade_ious:
        raise ConfigError("train.schedule='exact-joint' does not support cascade heads (model.roi_head.cascade_ious)")


class ExactJointLoss(nn.Module):
    """``loss(images, targets)`` = ``detector.loss(images, targets, exact=True)``; the detector is
    its only child (same modules for DDP and SyncBatchNorm, same checkpoint as the detector)."""

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.detector = detector

    def loss(self, images: list[torch.Tensor], targets: list[dict]) -> dict[str, torch.Tensor]:
        return self.detector.loss(images, targets, exact=True)
