"""VGG-16 (Simonyan & Zisserman): 13 conv layers, conv5_3 is the shared 512-d map at stride 16.

Layer indices follow torchvision's ``vgg16().features`` so that its ImageNet state dict loads
directly; the fifth max-pool is dropped (stride 16, as in the paper). fc6/fc7 of the ImageNet
classifier (``classifier.0`` and ``classifier.3``) initialise the Fast R-CNN head.
conv1 and conv2 (``frozen_stages=2``) stay frozen, as in the paper.
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor, nn

from .common import Backbone, BackboneWeightsError, freeze, load_matching, read_state_dict

# (channels per conv) for each of the 5 blocks
_BLOCKS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))


class VGG16(Backbone):
    out_channels = 512
    stride = 16

    def __init__(self, weights: str | Path | None = None, frozen_stages: int = 2) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        block_ends: list[int] = []
        cin = 3
        for b, block in enumerate(_BLOCKS):
            for cout in block:
                layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(inplace=True)]
                cin = cout
            if b < len(_BLOCKS) - 1:
                layers.append(nn.MaxPool2d(2, 2))
            block_ends.append(len(layers))
        self.features = nn.Sequential(*layers)
        if weights is not None:
            state = read_state_dict(weights)
            feats = {k: v for k, v in state.items() if k.startswith("features.")}
            load_matching(self, feats, str(weights))
            head = {}
            for src, dst in (("classifier.0", "fc6"), ("classifier.3", "fc7")):
                for p in ("weight", "bias"):
                    if f"{src}.{p}" in state:
                        head[f"{dst}.{p}"] = state[f"{src}.{p}"]
            if head and len(head) != 4:
                raise BackboneWeightsError(f"{weights}: incomplete classifier (fc6/fc7) weights")
            self.box_head_state = head or None
        if not 0 <= frozen_stages <= len(_BLOCKS):
            raise ValueError(f"frozen_stages must be in 0..5, got {frozen_stages}")
        if frozen_stages:
            freeze([self.features[: block_ends[frozen_stages - 1]]])

    def map(self, x: Tensor) -> Tensor:
        return self.features(x)
