"""torchvision's ``FasterRCNN`` built with the identical architecture of one of our models, for
timing the two side by side (``fasterrcnn bench --compare torchvision``).

Shapes: N images; L feature levels; A anchors per position; K object classes.

What the twin takes from our model (:func:`build_twin`):
  * backbone: a copy of the same module with the same weights (frozen layers stay frozen), in
    torchvision's default contiguous memory (ours may run channels-last: that is our choice of
    layout, not part of the architecture), returning our ordered dict of named levels;
  * anchors: torchvision's ``AnchorGenerator`` with the sizes and aspect ratios of each level
    (read back from our base anchors), so the same A per position;
  * RPN head: torchvision's layout (one sigmoid logit per anchor) at our head's width (3x3 conv
    C -> our ``conv_channels``, then our further 3x3 convs, if any); weights copied (objectness =
    our object - background logit);
  * proposal counts, NMS thresholds, minimum proposal size, RPN and RoI sampling sizes, IoU
    thresholds, box-coder weights, score threshold, NMS and detections per image: ours;
  * Fast R-CNN head: torchvision's ``TwoMLPHead`` (fc6/fc7 of our sizes, our weights; no dropout,
    which torchvision does not have) or, for another kind of box head, a copy of ours; a
    ``FastRCNNPredictor`` with our weights;
  * input: our test min/max size (train too: the bench sets them equal), mean/std, padding multiple;
  * RoI pooling: torchvision type-checks ``box_roi_pool``, so the twin is built with its default
    and then given :class:`SamePooler`, which calls our model's pooler (RoI pooling 7x7 at 1/16
    for the paper's presets, RoIAlign for the others; the same levels and context boxes).

Only timing parity is the aim: anchors sit at ``i * stride`` with rounded sizes (torchvision's
convention), torchvision normalises before resizing, and it always interpolates, so the detections
are close to ours but not identical.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection import FasterRCNN as TorchvisionFasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator as TorchvisionAnchors
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead

from ..modeling.faster_rcnn import FasterRCNN, inference_mode
from ..modeling.roi_heads import BoxHead
from ..modeling.rpn import RPNHead


class _LevelsBackbone(nn.Module):
    """Our backbone behind torchvision's interface: ``out_channels`` set, an OrderedDict out."""

    def __init__(self, body: nn.Module, out_channels: int) -> None:
        super().__init__()
        self.body = body
        self.out_channels = out_channels

    def forward(self, x: Tensor) -> "OrderedDict[str, Tensor]":
        return OrderedDict(self.body(x))


class TwinRPNHead(nn.Module):
    """torchvision's RPN head interface (lists of level maps in; per level objectness [N, A, H, W]
    and deltas [N, 4A, H, W] out) with our head's width and weights."""

    def __init__(self, ours: RPNHead) -> None:
        super().__init__()
        a, conv = ours.num_anchors, ours.conv
        self.conv = nn.Conv2d(conv.in_channels, conv.out_channels, 3, padding=1)
        self.extra_convs = copy.deepcopy(ours.extra_convs)  # rpn.conv_depth > 1
        self.cls_logits = nn.Conv2d(conv.out_channels, a, 1)
        self.bbox_pred = nn.Conv2d(conv.out_channels, 4 * a, 1)
        with torch.no_grad():
            self.conv.load_state_dict(conv.state_dict())
            self.bbox_pred.load_state_dict(ours.bbox_pred.state_dict())
            w, b = ours.cls_logits.weight, ours.cls_logits.bias  # [background x A, object x A]
            self.cls_logits.weight.copy_(w[a:] - w[:a])  # sigmoid(obj - bg) = softmax object prob
            self.cls_logits.bias.copy_(b[a:] - b[:a])

    def forward(self, x: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        logits, deltas = [], []
        for feature in x:
            t = F.relu(self.conv(feature))
            for conv in self.extra_convs:
                t = F.relu(conv(t))
            logits.append(self.cls_logits(t))
            deltas.append(self.bbox_pred(t))
        return logits, deltas


class SamePooler(nn.Module):
    """In place of torchvision's ``MultiScaleRoIAlign``: our model's pooler, called with
    torchvision's arguments (features by level name, proposals per image, image sizes)."""

    def __init__(self, pooler: nn.Module) -> None:
        super().__init__()
        self.pooler = pooler

    def forward(self, features: Mapping[str, Tensor], proposals: list[Tensor], image_shapes: Any) -> Tensor:
        return self.pooler(features, proposals)


def _simple(r: float) -> float:
    """``r`` snapped to the nearest p/q (p, q in 1..4) within 6% (rounded anchors blur ratios)."""
    best = min((p / q for p in range(1, 5) for q in range(1, 5)), key=lambda f: abs(f - r))
    return best if abs(best - r) <= 0.06 * r else round(r, 4)


def anchor_sizes_ratios(generator: nn.Module) -> tuple[tuple[tuple[float, ...], ...], tuple[tuple[float, ...], ...]]:
    """Per level (sizes, aspect ratios) of our anchor generator, read back from its base anchors
    [A, 4] (ratios outer, sizes inner; size = sqrt(area), ratio = h / w). Base anchors rounded to
    whole pixels blur both a little: sizes are read where the anchor is most square, ratios are
    the median over sizes, snapped to simple fractions."""
    sizes, ratios = [], []
    for k in generator.levels:
        base = getattr(generator, f"base_{k}").double()
        w, h = base[:, 2] - base[:, 0], base[:, 3] - base[:, 1]
        area, ratio = (w * h).sqrt(), h / w
        a = len(base)
        n = next(p for p in range(1, a + 1) if a % p == 0
                 and all(abs(area[i] - area[i % p]) <= 0.1 * area[i % p] for i in range(a)))
        groups = ratio.view(a // n, n)
        square = int(groups.log().abs().mean(dim=1).argmin())
        sizes.append(tuple(round(float(v), 2) for v in area.view(a // n, n)[square]))
        ratios.append(tuple(_simple(float(r)) for r in groups.median(dim=1).values))
    return tuple(sizes), tuple(ratios)


def _box_head(ours: nn.Module, in_features: int) -> nn.Module:
    if isinstance(ours, BoxHead):
        head = TwoMLPHead(in_features, ours.out_features)
        head.load_state_dict({k: v for k, v in ours.state_dict().items() if k.split(".")[0] in ("fc6", "fc7")})
        return head
    return copy.deepcopy(ours)  # another kind of head (e.g. a res5 head): the same module


def _predictor(ours: nn.Module, num_classes: int) -> FastRCNNPredictor:
    pred = FastRCNNPredictor(ours.cls_score.in_features, num_classes + 1)
    with torch.no_grad():
        pred.cls_score.load_state_dict(ours.cls_score.state_dict())
        w, b = ours.bbox_pred.weight, ours.bbox_pred.bias
        reps = pred.bbox_pred.out_features // w.shape[0]  # class-agnostic: one box for every class
        pred.bbox_pred.weight.copy_(w.repeat(reps, 1))
        pred.bbox_pred.bias.copy_(b.repeat(reps))
    return pred


def build_twin(model: FasterRCNN) -> TorchvisionFasterRCNN:
    """torchvision's FasterRCNN with the identical architecture (see the module docstring), on
    the device of ``model``, in eval mode."""
    device = next(model.parameters()).device
    backbone = copy.deepcopy(model.backbone).to(memory_format=torch.contiguous_format)
    rpn, heads, t = model.rpn, model.roi_heads, model.transform
    tr, te = rpn.train_settings, rpn.test_settings
    sizes, ratios = anchor_sizes_ratios(rpn.anchor_generator)
    pooler = heads.pooler
    in_features = backbone.out_channels * pooler.num_regions * pooler.output_size[0] * pooler.output_size[1]
    sampling, select = heads.sampling, heads.selector
    twin = TorchvisionFasterRCNN(
        _LevelsBackbone(backbone, backbone.out_channels),
        num_classes=None,
        min_size=t.min_size_test,
        max_size=t.max_size_test,
        image_mean=t.mean.flatten().tolist(),
        image_std=t.std.flatten().tolist(),
        size_divisible=t.size_divisible,
        rpn_anchor_generator=TorchvisionAnchors(sizes, ratios),
        rpn_head=TwinRPNHead(rpn.head),
        rpn_pre_nms_top_n_train=tr.pre_nms_top_n,
        rpn_pre_nms_top_n_test=te.pre_nms_top_n,
        rpn_post_nms_top_n_train=tr.post_nms_top_n,
        rpn_post_nms_top_n_test=te.post_nms_top_n,
        rpn_nms_thresh=te.nms_thresh,
        rpn_fg_iou_thresh=rpn.matcher.fg_thresh,
        rpn_bg_iou_thresh=rpn.matcher.bg_thresh_hi,
        rpn_batch_size_per_image=rpn.sampler.num_samples,
        rpn_positive_fraction=rpn.sampler.positive_fraction,
        rpn_score_thresh=float(getattr(te, "score_thresh", 0.0) or 0.0),
        box_head=_box_head(heads.box_head, in_features),
        box_predictor=_predictor(heads.predictor, model.num_classes),
        box_score_thresh=select.score_thresh,
        box_nms_thresh=select.nms_thresh,
        box_detections_per_img=select.detections_per_img,
        box_fg_iou_thresh=sampling.matcher.fg_thresh,
        box_bg_iou_thresh=sampling.matcher.bg_thresh_hi,
        box_batch_size_per_image=sampling.sampler.num_samples,
        box_positive_fraction=sampling.sampler.positive_fraction,
        bbox_reg_weights=tuple(heads.coder.weights),
    )
    twin.roi_heads.box_roi_pool = SamePooler(pooler)  # after construction: torchvision type-checks it
    twin.rpn.min_size = te.min_size  # torchvision hard-codes 1e-3
    return twin.to(device).eval()


# --------------------------------------------------------------------------- per-stage timing

# (stage name, path of the module or bound method inside the twin); "a.b" stages are inside "a"
TWIN_STAGES = (
    ("transform", "transform"),
    ("backbone", "backbone"),
    ("rpn", "rpn"),
    ("rpn.head", "rpn.head"),
    ("rpn.anchor_labelling", "rpn.assign_targets_to_anchors"),
    ("rpn.proposals", "rpn.filter_proposals"),
    ("roi_heads", "roi_heads"),
    ("roi_heads.sampling", "roi_heads.select_training_samples"),
    ("roi_heads.roi_pool", "roi_heads.box_roi_pool"),
    ("roi_heads.box_head", "roi_heads.box_head"),
    ("roi_heads.postprocess", "roi_heads.postprocess_detections"),
)


def _resolve(root: nn.Module, path: str) -> tuple[Any, str]:
    *parents, last = path.split(".")
    obj: Any = root
    for p in parents:
        obj = getattr(obj, p)
    return obj, last


@contextmanager
def timed_twin(twin: nn.Module, start: Callable[[str], None], stop: Callable[[str], None]) -> Iterator[None]:
    """While inside: every stage of :data:`TWIN_STAGES` calls ``start(name)`` / ``stop(name)``
    around itself (module hooks, or a wrapper set on the instance for a method); removed after."""
    handles, patched = [], []
    for name, path in TWIN_STAGES:
        obj, attr = _resolve(twin, path)
        target = getattr(obj, attr)
        if isinstance(target, nn.Module):
            handles.append(target.register_forward_pre_hook(lambda *_, n=name: start(n)))
            handles.append(target.register_forward_hook(lambda *_, n=name: stop(n)))
        else:
            def wrapper(*args: Any, _f: Callable = target, _n: str = name, **kwargs: Any) -> Any:
                start(_n)
                try:
                    return _f(*args, **kwargs)
                finally:
                    stop(_n)

            setattr(obj, attr, wrapper)
            patched.append((obj, attr))
    try:
        yield
    finally:
        for h in handles:
            h.remove()
        for obj, attr in patched:
            delattr(obj, attr)  # the class's method shows through again


def twin_predict(twin: nn.Module, images: list[Tensor]) -> list[dict[str, Tensor]]:
    """torchvision's detections (eval mode, no autograd), as our ``model.predict`` runs."""
    with inference_mode(twin):
        return twin(images)


def twin_loss(twin: nn.Module, images: list[Tensor], targets: list[dict]) -> dict[str, Tensor]:
    """torchvision's training losses (the caller sets train mode)."""
    return twin(images, targets)


__all__ = ["SamePooler", "TWIN_STAGES", "TwinRPNHead", "anchor_sizes_ratios", "build_twin",
           "timed_twin", "twin_loss", "twin_predict"]
