"""Small helpers shared by several test modules (import as ``from helpers import ...``)."""

from __future__ import annotations

import torch

from fasterrcnn.data.dataset import Annotation


class MemoryDataset:
    """A tiny in-memory dataset not read from files (like the synthetic data): random images
    with the given annotations. ``wrong_size``: the index of an image that comes out 5 px
    taller than its annotation says."""

    def __init__(
        self,
        annotations: list[Annotation],
        classes: tuple[str, ...] = ("a", "b"),
        wrong_size: int | None = None,
    ) -> None:
        self.anns = annotations
        self.classes = classes
        self.wrong_size = wrong_size

    def __len__(self) -> int:
        return len(self.anns)

    def annotation(self, index: int) -> Annotation:
        return self.anns[index]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict]:
        a = self.anns[index]
        h = a.height + (5 if index == self.wrong_size else 0)
        g = torch.Generator().manual_seed(index)
        image = torch.randint(0, 256, (3, h, a.width), dtype=torch.uint8, generator=g)
        return image, a.as_target()


def favour_class(model: torch.nn.Module, label: int = 1, logit: float = 6.0) -> None:
    """Make a randomly initialised detector confident: its box classifier's bias gives class
    ``label`` a logit of ``logit`` over the rest, so every RoI scores that class near 1 (the
    random weights keep the scores slightly different) and ``predict`` returns detections.
    Tests that check what comes out of a random model use it so their list cannot be empty."""
    cls_score = model.roi_heads.predictor.cls_score
    with torch.no_grad():
        cls_score.bias.zero_()
        cls_score.bias[label] = logit
