"""ONNX export: one graph from an image's pixels to its detections, and running it.

Shapes: one image [3, H, W] (H and W dynamic); L feature levels, A anchors per position,
P proposals, K object classes, D detections.

:class:`ExportableDetector` is :meth:`FasterRCNN.predict <fasterrcnn.modeling.faster_rcnn.FasterRCNN.predict>`
for one image, written in ops the TorchScript-based exporter traces with dynamic sizes: the
rescale (shorter side, longer-side cap, rounded as the model rounds), normalisation and padding;
anchors from the feature maps' own sizes; the RPN's proposal selection (top-N per level, NMS,
post-NMS top-N); RoI pooling (one level, or each RoI from its FPN level); the box head; and the
final per-class selection (score threshold, NMS, cap, optional box voting). Python branches on
data (``len(...)``, ``.item()``, loops over images) are replaced by masks and dynamic ``topk``.
The parts that are already plain tensor functions (box decoding, FPN level assignment, context
boxes) are the model's own. Test-time augmentation is not part of the graph: it is the
single pass the paper describes.

Graph: input ``image`` uint8 [3, H, W] (0..255) or float32 [3, H, W] (0..1), chosen at export;
outputs ``boxes`` float32 [D, 4] (xyxy, the input image's pixels), ``labels`` int64 [D] (1..K),
``scores`` float32 [D], best first. The class names travel in the file's metadata
(``classes``, a JSON list). :class:`OnnxDetector` runs such a file with onnxruntime.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import box_iou, nms, roi_align, roi_pool

from ..modeling.pooler import assign_levels, scale_boxes_about_centre
from ..modeling.postprocess import DetectionSelector

INPUT_DTYPES = {"uint8": torch.uint8, "float32": torch.float32}
OPSET = 17  # RoIAlign's half-pixel ("aligned") mode needs 16
OUTPUT_NAMES = ("boxes", "labels", "scores")


class ExportError(ValueError):
    """The model holds a part this exporter cannot express (named in the message)."""


def _shape(x: Tensor) -> Tensor:
    """The shape as an int64 tensor: traced as a graph value, not frozen into a constant."""
    return torch._shape_as_tensor(x)


def _clip(boxes: Tensor, size: Tensor) -> Tensor:
    """xyxy boxes [..., 4] clamped to an image of ``size`` [2] (H, W), like ``clip_boxes_to_image``."""
    h, w = size[0].to(boxes.dtype), size[1].to(boxes.dtype)
    return torch.minimum(boxes.clamp(min=0), torch.stack((w, h, w, h)))


def _not_small(boxes: Tensor, min_size: float) -> Tensor:
    """[N] bool: both sides at least ``min_size`` (``remove_small_boxes`` as a mask)."""
    return ((boxes[:, 2] - boxes[:, 0]) >= min_size) & ((boxes[:, 3] - boxes[:, 1]) >= min_size)


def _batched_nms(boxes: Tensor, scores: Tensor, groups: Tensor, iou: float) -> Tensor:
    """torchvision's ``batched_nms`` (offset trick) without its empty-input branch: the boxes
    are clipped (>= 0), so a 0 added to the max changes nothing and keeps an empty input valid."""
    top = torch.cat((boxes.reshape(-1), boxes.new_zeros(1))).max()
    return nms(boxes + (groups.to(boxes.dtype) * (top + 1))[:, None], scores, iou)


class ExportableDetector(nn.Module):
    """``model.predict`` for one image [3, H, W] in traceable ops: ``forward(image)`` ->
    (boxes [D, 4], labels [D], scores [D]). ``selector`` replaces the model's final selection
    (threshold, NMS, cap, box voting)."""

    def __init__(self, model: nn.Module, *, input_dtype: str = "uint8",
                 selector: DetectionSelector | None = None) -> None:
        super().__init__()
        if input_dtype not in INPUT_DTYPES:
            raise ExportError(f"input dtype must be one of {tuple(INPUT_DTYPES)}, got {input_dtype!r}")
        if hasattr(model.roi_heads, "stages"):
            raise ExportError("cascade RoI heads (roi_head.cascade_ious) cannot be exported yet")
        self.model = model
        self.input_dtype = input_dtype
        self.selector = selector if selector is not None else model.roi_heads.selector

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        original = _shape(image)[1:]
        batch, size = self.preprocess(image)
        features = self.model.features(batch)
        proposals = self.proposals(features, size, _shape(batch)[2:])
        scores, boxes = self.class_boxes(features, proposals, size)
        factor = original.to(torch.float64) / size.to(torch.float64)  # (sy, sx) as scale_boxes
        return self.select(scores, boxes * factor.flip(0).repeat(2).to(boxes.dtype))

    # ------------------------------------------------------------------ input
    def preprocess(self, image: Tensor) -> tuple[Tensor, Tensor]:
        """(normalised, zero-padded batch [1, 3, Hp, Wp], rescaled size [2] (H, W) int64): the
        model's InputTransform at the test scale, with its arithmetic in float64 as Python's."""
        t = self.model.transform
        x = image.float() / 255.0 if self.input_dtype == "uint8" else image.float()
        hw = _shape(image)[1:].to(torch.float64)
        # float64 as Python's arithmetic, in 1-element tensors: the exporter casts 0-d values and
        # Python numbers to float32, which turns e.g. 257 * (160 / 257) into 159.99998 (floor: 159)
        short, long = hw.amin(dim=0, keepdim=True), hw.amax(dim=0, keepdim=True)
        lo, hi = (torch.full((1,), float(v), dtype=torch.float64) for v in (t.min_size_test, t.max_size_test))
        scale = lo / short
        scale = torch.where(long * scale > hi, hi / long, scale)
        scaled = hw * scale
        rounded = torch.floor(scaled) if getattr(t, "size_rounding", "round") == "floor" else torch.round(scaled)
        size = rounded.clamp(min=1).to(torch.int64)
        x = F.interpolate(x[None], size=[size[0], size[1]], mode="bilinear", align_corners=False)[0]
        x = (x - t.mean) / t.std
        d = max(1, t.size_divisible)
        pad = (size + d - 1) // d * d - size
        return F.pad(x, [0, pad[1], 0, pad[0]])[None], size

    # ------------------------------------------------------------------ RPN
    def anchors(self, level: str, feature: Tensor, padded: Tensor) -> Tensor:
        """[Hl * Wl * A, 4] anchors of one level (``grid_anchors`` on the map's traced size)."""
        gen = self.model.rpn.anchor_generator
        hw = _shape(feature)[2:]
        if getattr(gen, "style", "paper") == "torchvision":
            stride = (padded // hw).to(torch.float32)  # (y, x): padded size // map size
        else:
            stride = torch.full((2,), float(gen.strides[level]))
        ys = (torch.arange(hw[0], dtype=torch.float32) + gen.offset) * stride[0]
        xs = (torch.arange(hw[1], dtype=torch.float32) + gen.offset) * stride[1]
        cy, cx = torch.meshgrid(ys, xs, indexing="ij")
        shifts = torch.stack((cx, cy, cx, cy), dim=-1).reshape(-1, 1, 4)
        base = getattr(gen, f"base_{level}")
        return (shifts + base.reshape(1, -1, 4)).reshape(-1, 4)

    def level_proposals(self, anchors: Tensor, scores: Tensor, deltas: Tensor, size: Tensor) -> tuple[Tensor, Tensor]:
        """One level's pre-NMS boxes and scores, best first (proposals.py's two rules)."""
        rpn, s = self.model.rpn, self.model.rpn.test_settings
        k = torch.clamp(_shape(scores)[0], max=s.pre_nms_top_n)
        if getattr(s, "top_n_first", False):  # the best anchors first, then drop the invalid
            top_scores, top = scores.topk(k)
            boxes = _clip(rpn.coder.decode(deltas[top], anchors[top]), size)
            valid = torch.isfinite(top_scores) & torch.isfinite(boxes).all(dim=1) & _not_small(boxes, s.min_size)
            return boxes[valid], top_scores[valid]
        boxes = _clip(rpn.coder.decode(deltas, anchors), size)  # the best valid boxes
        valid = torch.isfinite(scores) & torch.isfinite(boxes).all(dim=1) & _not_small(boxes, s.min_size)
        ranked = torch.where(valid, scores, torch.full_like(scores, -math.inf))
        top_scores, top = ranked.topk(k)
        keep = torch.isfinite(top_scores)
        return boxes[top][keep], top_scores[keep]

    def proposals(self, features: dict[str, Tensor], size: Tensor, padded: Tensor) -> Tensor:
        """[P, 4] proposals (rescaled-image pixels), best first: ``RegionProposalNetwork.propose``."""
        rpn, s = self.model.rpn, self.model.rpn.test_settings
        top_n_first = getattr(s, "top_n_first", False)
        thresh = getattr(s, "score_thresh", 0.0)
        kept_boxes, kept_ranks = [], []
        for level in rpn.anchor_generator.levels:
            logits, deltas = rpn.head(features[level])
            logits = logits[0].float()
            boxes, scores = self.level_proposals(self.anchors(level, features[level], padded),
                                                 logits[:, 1] - logits[:, 0], deltas[0].float(), size)
            rank = scores.sigmoid() if top_n_first else scores  # torchvision ranks probabilities
            if thresh > 0:
                above = scores.sigmoid() >= thresh
                boxes, rank = boxes[above], rank[above]
            keep = nms(boxes, rank, s.nms_thresh)  # within the level, as batched_nms does
            kept_boxes.append(boxes[keep])
            kept_ranks.append(rank[keep])
        if len(kept_boxes) == 1:
            return kept_boxes[0][: s.post_nms_top_n]
        order = torch.cat(kept_ranks).argsort(descending=True)[: s.post_nms_top_n]
        return torch.cat(kept_boxes)[order]

    # ------------------------------------------------------------------ Fast R-CNN head
    def pool(self, features: dict[str, Tensor], boxes: Tensor) -> Tensor:
        """[P, C x regions, S, S]: ``RoIPooler.forward`` for one image."""
        pooler = self.model.roi_heads.pooler
        parts = [self._pool_levels(features, boxes)]
        parts += [self._pool_levels(features, scale_boxes_about_centre(boxes, f)) for f in pooler.context_scales]
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    def _pool_levels(self, features: dict[str, Tensor], boxes: Tensor) -> Tensor:
        strides = self.model.roi_heads.pooler.strides
        levels = list(strides)
        if len(levels) == 1:
            return self._pool_op(features[levels[0]], boxes, strides[levels[0]])
        which = assign_levels(boxes, [strides[k] for k in levels])
        pieces, order = [], []
        for j, k in enumerate(levels):
            idx = (which == j).nonzero()[:, 0]
            pieces.append(self._pool_op(features[k], boxes[idx], strides[k]))
            order.append(idx)
        return torch.cat(pieces)[torch.cat(order).argsort()]

    def _pool_op(self, feature: Tensor, boxes: Tensor, stride: int) -> Tensor:
        pooler = self.model.roi_heads.pooler
        feature = feature.float()
        rois = torch.cat((torch.zeros_like(boxes[:, :1]), boxes), dim=1).to(feature.dtype)
        if pooler.kind == "roi_pool":
            return roi_pool(feature, rois, pooler.output_size, 1.0 / stride)
        return roi_align(feature, rois, pooler.output_size, 1.0 / stride, pooler.sampling_ratio,
                         aligned=pooler.aligned)

    def class_boxes(self, features: dict[str, Tensor], proposals: Tensor, size: Tensor) -> tuple[Tensor, Tensor]:
        """scores [P, K] and clipped per-class boxes [P, K, 4] (rescaled-image pixels)."""
        heads = self.model.roi_heads
        logits, deltas = heads.predictor(heads.box_head(self.pool(features, proposals)))
        classes = heads.predictor.num_classes + 1
        probs = torch.softmax(logits.float(), dim=-1)
        boxes = _clip(heads.coder.decode(deltas.float(), proposals.float()).reshape(-1, classes, 4), size)
        return probs[:, 1:], boxes[:, 1:]

    def select(self, scores: Tensor, boxes: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``select_detections`` with masks: threshold, non-empty, per-class NMS, cap, voting."""
        sel = self.selector
        labels = (torch.arange(scores.shape[1]) + 1)[None, :].expand_as(scores).reshape(-1)
        scores, boxes = scores.reshape(-1), boxes.reshape(-1, 4)
        keep = (scores > sel.score_thresh) & torch.isfinite(scores) & torch.isfinite(boxes).all(dim=1)
        keep = keep & _not_small(boxes, 1e-2)
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        keep = _batched_nms(boxes, scores, labels, sel.nms_thresh)[: sel.detections_per_img]
        kept = boxes[keep]
        if sel.vote_iou > 0:
            weights = (box_iou(kept, boxes) >= sel.vote_iou) & (labels[keep][:, None] == labels[None, :])
            weights = weights.to(scores.dtype) * scores[None, :]
            kept = (weights @ boxes) / weights.sum(dim=1, keepdim=True).clamp_min(torch.finfo(scores.dtype).tiny)
        return kept.reshape(-1, 4), labels[keep], scores[keep]  # reshape: a static 4 in the graph


def export_onnx(
    model: nn.Module,
    path: str | Path,
    *,
    classes: Sequence[str] = (),
    input_dtype: str = "uint8",
    selector: DetectionSelector | None = None,
    opset: int = OPSET,
) -> Path:
    """Write ``model`` (a :class:`~fasterrcnn.modeling.faster_rcnn.FasterRCNN`) as an ONNX file
    taking one image [3, H, W] of any size (see the module docstring); returns the path.

    The TorchScript-based exporter traces the graph on one sample image at the model's test
    scale; sizes flow through the graph as values, so other sizes run the same ops.
    """
    path = Path(path)
    wrapper = ExportableDetector(model, input_dtype=input_dtype, selector=selector).eval()
    t = model.transform
    h, w = t.min_size_test, min(t.max_size_test, round(t.min_size_test * 4 / 3))
    sample = torch.rand(3, h, w, generator=torch.Generator().manual_seed(0))
    sample = (sample * 255).round().to(torch.uint8) if input_dtype == "uint8" else sample
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the legacy exporter's deprecation and tracer notes
            torch.onnx.export(
                wrapper, (sample,), str(path), dynamo=False, opset_version=opset,
                input_names=["image"], output_names=list(OUTPUT_NAMES),
                dynamic_axes={"image": {1: "height", 2: "width"}, "boxes": {0: "detections"},
                              "labels": {0: "detections"}, "scores": {0: "detections"}},
            )
    finally:
        model.train(was_training)
    import onnx

    graph = onnx.load(str(path))
    for value in graph.graph.output:  # the tracer leaves the 4 of boxes [D, 4] symbolic
        if value.name == "boxes":
            value.type.tensor_type.shape.dim[1].dim_value = 4
    for key, value in (("classes", json.dumps(list(classes))), ("input", input_dtype),
                       ("producer", "fasterrcnn export")):
        entry = graph.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(graph, str(path))
    return path


class OnnxDetector:
    """An exported file run by onnxruntime, called like ``model.predict``: a list of images
    [3, H, W] (float 0..1 or uint8) -> one dict per image (``boxes``, ``labels``, ``scores``
    tensors). ``classes`` are the names stored at export."""

    def __init__(self, path: str | Path, *, threads: int | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
            options.inter_op_num_threads = 1
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no such ONNX file")
        self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        meta = self.session.get_modelmeta().custom_metadata_map
        self.classes: tuple[str, ...] = tuple(json.loads(meta.get("classes", "[]")))
        graph_input = self.session.get_inputs()[0]
        self.input_name = graph_input.name
        self.input_dtype = "uint8" if graph_input.type == "tensor(uint8)" else "float32"

    def __call__(self, images: Sequence[Tensor]) -> list[dict[str, Tensor]]:
        return self.predict(images)

    def predict(self, images: Sequence[Tensor]) -> list[dict[str, Tensor]]:
        return [self._one(image) for image in images]

    def _one(self, image: Tensor) -> dict[str, Tensor]:
        x = image.detach().cpu()
        if x.dim() != 3 or x.shape[0] != 3:
            raise ValueError(f"expected an image tensor [3, H, W], got shape {tuple(x.shape)}")
        if self.input_dtype == "uint8" and x.is_floating_point():
            x = (x * 255.0).round().clamp(0, 255).to(torch.uint8)  # k / 255 comes back as k
        elif self.input_dtype == "float32":
            x = x.float() / 255.0 if not x.is_floating_point() else x.float()
        out = self.session.run(list(OUTPUT_NAMES), {self.input_name: x.contiguous().numpy()})
        return {name: torch.from_numpy(value) for name, value in zip(OUTPUT_NAMES, out)}


def describe(path: str | Path) -> dict[str, Any]:
    """Inputs, outputs and metadata of an exported file (for messages and tests)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False)

    def dims(value: Any) -> list[Any]:
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    return {
        "inputs": {v.name: dims(v) for v in graph.graph.input},
        "outputs": {v.name: dims(v) for v in graph.graph.output},
        "opset": max(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")),
        "metadata": {p.key: p.value for p in graph.metadata_props},
    }
