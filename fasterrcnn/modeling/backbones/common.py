"""What every backbone provides, and loading ImageNet weights from a local file.

Shapes: N images; a backbone maps [N, 3, H, W] to an ordered mapping of named levels, each
[N, C, H/s, W/s]. Level ``p{k}`` has stride s = 2**k: the paper's stride-16 map is ``p4``, an FPN
gives ``p2`` .. ``p6``. Levels come in increasing stride.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import Tensor, nn


class BackboneWeightsError(ValueError):
    """A backbone weights file is missing, unreadable or does not fit the architecture."""


def level_name(stride: int) -> str:
    """``p{k}`` for stride 2**k (``p4`` for 16)."""
    k = int(round(math.log2(stride)))
    if 2**k != stride:
        raise ValueError(f"a feature level's stride must be a power of 2, got {stride}")
    return f"p{k}"


class Backbone(nn.Module):
    """Conv layers whose feature levels have ``out_channels`` channels at ``strides``.

    A single-map backbone (the paper's) sets ``out_channels`` and ``stride`` and implements
    :meth:`map`; its one level is named after its stride. A multi-level backbone overrides
    ``strides`` and ``forward``.

    ``box_head_state`` optionally carries pretrained fc6/fc7 weights (VGG's classifier) for the
    Fast R-CNN head; keys ``fc6.weight``, ``fc6.bias``, ``fc7.weight``, ``fc7.bias``.
    """

    out_channels: int
    stride: int

    def __init__(self) -> None:
        super().__init__()
        self.box_head_state: dict[str, Tensor] | None = None

    @property
    def strides(self) -> dict[str, int]:
        """{level name: stride}, in increasing stride."""
        return {level_name(self.stride): self.stride}

    @property
    def roi_levels(self) -> tuple[str, ...]:
        """The levels RoIs are pooled from: all of them (an FPN leaves out its extra level)."""
        return tuple(self.strides)

    def map(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return {level_name(self.stride): self.map(x)}


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """A state dict from a local file (safe loading); unwraps {"state_dict": ...}/{"model": ...}
    and strips a DataParallel ``module.`` prefix."""
    path = Path(path)
    if not path.is_file():
        raise BackboneWeightsError(f"{path}: backbone weights file not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt file, pickle with code, ...
        raise BackboneWeightsError(f"{path}: cannot read weights ({exc})") from None
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise BackboneWeightsError(f"{path}: not a state dict of tensors")
    return {k[7:] if k.startswith("module.") else k: v for k, v in obj.items()}


def load_matching(module: nn.Module, state: dict[str, Tensor], source: str) -> None:
    """Load ``state`` into ``module`` requiring every parameter/buffer to be present with its shape."""
    own = module.state_dict()
    # BatchNorm2d's step counter (trainable BN over ImageNet statistics) is not in FrozenBN files
    state = {**{k: v for k, v in own.items() if k.endswith("num_batches_tracked")}, **state}
    missing = [k for k in own if k not in state]
    wrong = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in own.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or wrong:
        detail = []
        if missing:
            detail.append(f"missing {len(missing)} tensor(s), e.g. {', '.join(missing[:4])}")
        if wrong:
            detail.append("shape mismatch: " + "; ".join(wrong[:4]))
        raise BackboneWeightsError(f"{source}: weights do not fit the backbone ({' / '.join(detail)})")
    module.load_state_dict({k: state[k] for k in own}, strict=True)


def freeze(modules: list[nn.Module]) -> None:
    for m in modules:
        for p in m.parameters():
            p.requires_grad_(False)
