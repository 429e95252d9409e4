"""Faster R-CNN: backbone -> RPN -> Fast R-CNN head, one network with shared convs (Figure 2).

Shapes: N images; per image G ground-truth boxes, P proposals, K object classes, D detections.
Features are an ordered mapping of named levels (``{"p4": [N, C, H/16, W/16]}`` for the paper's
nets, ``p2`` .. ``p6`` for an FPN; see :mod:`.backbones.common`).

Entry points (no hidden train/eval switch):
  * ``model.loss(images, targets)`` -> dict of losses (``rpn_cls``, ``rpn_reg``, ``roi_cls``,
    ``roi_reg``): approximate joint training, proposals treated as constants; with
    ``exact=True`` non-approximate joint training (proposal coordinates carry gradient);
  * ``model.predict(images)`` -> one dict per image: ``boxes`` [D, 4] xyxy in the image's own
    pixels, ``labels`` [D] (1..K), ``scores`` [D]; the paper's single pass, in inference mode
    (BN/dropout in eval). Test-time augmentation wraps the model: :class:`~.tta.TTAPredictor`;
  * ``model.propose(images)`` -> RPN proposals per image (``boxes``, ``scores``).
``images`` are float tensors [3, H, W] in 0..1 of any sizes; targets are dicts with ``boxes``
[G, 4] and ``labels`` [G]. The network is built from a config by :func:`.builder.build_model`.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
from torch import Tensor, nn

from .backbones import Backbone
from .roi_heads import RoIHeads
from .rpn import RegionProposalNetwork
from .transform import ImageBatch, InputTransform, scale_boxes

STAGES = ("rpn", "roi")


@contextmanager
def inference_mode(module: nn.Module) -> Iterator[None]:
    """Eval mode and no autograd for the duration; the previous mode is restored afterwards."""
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        module.train(was_training)


class FasterRCNN(nn.Module):
    """``transform`` (resize, normalise, pad) -> ``backbone`` -> ``rpn`` -> ``roi_heads``.

    ``channels_last``: where the backbone and RPN convolutions run in NHWC memory (the same
    numbers up to float rounding; faster with oneDNN on CPUs and with mixed precision on GPUs):
    ``"never"``, ``"inference"`` (the input in eval mode only; the weights stay NCHW, so training
    is untouched) or ``"always"`` (weights and input, training included).
    """

    def __init__(
        self,
        backbone: Backbone,
        rpn: RegionProposalNetwork,
        roi_heads: RoIHeads,
        transform: InputTransform,
        *,
        num_classes: int,
        channels_last: str = "never",
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.rpn = rpn
        self.roi_heads = roi_heads
        self.transform = transform
        self.num_classes = num_classes
        if channels_last not in ("never", "inference", "always"):
            raise ValueError(f"channels_last must be 'never', 'inference' or 'always', got {channels_last!r}")
        self.channels_last = channels_last
        if channels_last == "always":
            backbone.to(memory_format=torch.channels_last)
            rpn.to(memory_format=torch.channels_last)

    # ------------------------------------------------------------------ training
    def loss(
        self,
        images: Sequence[Tensor],
        targets: Sequence[dict],
        *,
        proposals: Sequence[Tensor] | None = None,
        stages: Sequence[str] = STAGES,
        exact: bool = False,
    ) -> dict[str, Tensor]:
        """Training losses. ``proposals`` (original-image coordinates) replace the RPN's own for
        the RoI head; ``stages`` selects which losses to compute (both by default).

        ``exact``: non-approximate joint training (paper §3.2). The RPN's proposals stay attached
        to its regression output, so the RoI losses also train the RPN's box deltas (and, through
        them, the shared convs) via RoIAlign's derivative w.r.t. the box coordinates
        (:func:`~.roi_warp.roi_warp`). Included: d(roi losses)/d(proposal coordinates) through the
        pooled features, for the sampled RoIs that came from the RPN, on top of everything the
        approximate scheme has. Not included: the discrete choices (anchor top-N, size filter,
        NMS, RoI labelling and sampling, level assignment), the objectness scores (they only
        rank), the gt boxes appended as proposals, the head's regression targets (encoded from
        the detached RoIs), coordinates clipped to the image border, and sample points outside
        the feature map. The loss values are those of the approximate scheme (the same
        proposals and RoIs, RoIAlign's numbers); only the gradient differs. It is an argument of
        the loss rather than a property of the model because it changes how the model is
        trained, not what it is: the weights, ``predict`` and checkpoints are the same.
        """
        unknown = set(stages) - set(STAGES)
        if unknown or not stages:
            raise ValueError(f"stages must be a non-empty subset of {STAGES}, got {tuple(stages)}")
        if exact and proposals is not None:
            raise ValueError("exact joint training trains the RPN through its own proposals: "
                             "given proposals have no RPN graph")
        if exact and type(self.roi_heads).loss is not RoIHeads.loss:
            raise ValueError(f"exact joint training needs the plain RoI head; "
                             f"{type(self.roi_heads).__name__} has its own loss")
        if len(images) != len(targets):
            raise ValueError(f"{len(images)} images but {len(targets)} targets")
        batch = self.transform(images, training=True)
        gt_boxes, gt_labels = self._scaled_targets(targets, batch)
        features = self.features(batch.tensor)
        losses: dict[str, Tensor] = {}
        out = self.rpn(features, batch.padded_size) if ("rpn" in stages or proposals is None) else None
        if "rpn" in stages:
            losses.update(self.rpn.loss(out, batch.image_sizes, gt_boxes))
        if "roi" in stages:
            if proposals is None:
                props, _ = self.rpn.propose(out, batch.image_sizes, training=True, differentiable=exact)
            else:
                props = self._scaled_proposals(proposals, batch)
            exact_kw = {"box_gradient": True} if exact else {}  # plain calls stay plain (cascade heads)
            losses.update(self.roi_heads.loss(features, props, gt_boxes, gt_labels, batch.image_sizes, **exact_kw))
        return losses

    def forward(self, images: Sequence[Tensor], targets: Sequence[dict] | None = None):
        """``loss`` when targets are given (this is what DDP wraps), else ``predict``."""
        if targets is not None:
            return self.loss(images, targets)
        return self.predict(images)

    # ------------------------------------------------------------------ inference
    def predict(self, images: Sequence[Tensor]) -> list[dict[str, Tensor]]:
        """Detections per image in original-image coordinates (the paper's single pass)."""
        select = self.roi_heads.selector
        return [select(s, b) for s, b in self.candidates(images)]

    def candidates(
        self, images: Sequence[Tensor], *, size: tuple[int, int] | None = None
    ) -> list[tuple[Tensor, Tensor]]:
        """Per image, before the final selection: scores [P, K] and per-class boxes [P, K, 4] in
        original-image pixels. ``size`` (shorter side, longer-side cap) replaces the test scale."""
        with inference_mode(self):
            batch = self.transform(images, training=False, size=size)
            features = self.features(batch.tensor)
            props, _ = self.rpn.propose(self.rpn(features, batch.padded_size), batch.image_sizes, training=False)
            out = self.roi_heads.class_boxes(features, props, batch.image_sizes)
        return [
            (s, scale_boxes(b.reshape(-1, 4), size_in, orig).view(b.shape))
            for (s, b), size_in, orig in zip(out, batch.image_sizes, batch.original_sizes)
        ]

    def propose(self, images: Sequence[Tensor], *, training_settings: bool = False) -> list[dict[str, Tensor]]:
        """RPN proposals per image (original-image coordinates), best first.

        ``training_settings`` uses the training top-N (e.g. 2000) instead of the test one (300),
        both on the test-scale input.
        """
        with inference_mode(self):
            batch = self.transform(images, training=False)
            out = self.rpn(self.features(batch.tensor), batch.padded_size)
            boxes, scores = self.rpn.propose(out, batch.image_sizes, training=training_settings)
        return [
            {"boxes": scale_boxes(b, size, orig), "scores": s}
            for b, s, size, orig in zip(boxes, scores, batch.image_sizes, batch.original_sizes)
        ]

    # ------------------------------------------------------------------ helpers
    def features(self, images: Tensor) -> dict[str, Tensor]:
        """The backbone's levels of a padded, normalised batch [N, 3, H, W], in channels-last
        memory when ``channels_last`` asks for it (the values are the same either way)."""
        if self.channels_last == "always" or (self.channels_last == "inference" and not self.training):
            images = images.contiguous(memory_format=torch.channels_last)
        return self.backbone(images)

    def _scaled_targets(self, targets: Sequence[dict], batch: ImageBatch) -> tuple[list[Tensor], list[Tensor]]:
        device = batch.tensor.device
        boxes_out, labels_out = [], []
        for i, (t, size, orig) in enumerate(zip(targets, batch.image_sizes, batch.original_sizes)):
            boxes = torch.as_tensor(t["boxes"], dtype=torch.float32, device=device).reshape(-1, 4)
            labels = torch.as_tensor(t["labels"], dtype=torch.int64, device=device).reshape(-1)
            where = f"target {i}" + (f" ({t['file_name']})" if "file_name" in t else "")
            if len(boxes) != len(labels):
                raise ValueError(f"{where}: {len(boxes)} boxes but {len(labels)} labels")
            if not torch.isfinite(boxes).all():
                raise ValueError(f"{where}: boxes contain NaN or inf")
            if len(boxes) and ((boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])).any():
                raise ValueError(f"{where}: degenerate box (x2 <= x1 or y2 <= y1)")
            if len(labels) and (labels.min() < 1 or labels.max() > self.num_classes):
                raise ValueError(
                    f"{where}: labels must be in 1..{self.num_classes} (0 is background), "
                    f"got {labels.tolist()}"
                )
            boxes_out.append(scale_boxes(boxes, orig, size))
            labels_out.append(labels)
        return boxes_out, labels_out

    @staticmethod
    def _scaled_proposals(proposals: Sequence[Tensor], batch: ImageBatch) -> list[Tensor]:
        device = batch.tensor.device
        return [
            scale_boxes(torch.as_tensor(p, dtype=torch.float32, device=device).reshape(-1, 4), orig, size)
            for p, size, orig in zip(proposals, batch.image_sizes, batch.original_sizes)
        ]
