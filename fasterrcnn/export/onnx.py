"""ONNX export: one graph from a batch of images' pixels to their detections, and running it.

Shapes: N images [N, 3, H, W] of one size (N, H and W dynamic); D detections (all images).

The graph is :class:`~fasterrcnn.export.graph.ExportableDetector`: ``model.predict``'s single pass
(rescale, normalisation, padding, anchors, proposals, pooling, head, per-class selection) in
traceable ops. Test-time augmentation is not part of it: it is the single pass the paper
describes.

Graph: input ``images`` uint8 [N, 3, H, W] (0..255) or float32 [N, 3, H, W] (0..1), chosen at
export; outputs ``boxes`` float32 [D, 4] (xyxy, the input images' pixels), ``labels`` int64 [D]
(1..K), ``scores`` float32 [D] and ``image_index`` int64 [D] (which image of the batch), grouped
by image and best first within each. The class names travel in the file's metadata (``classes``,
a JSON list). :class:`OnnxDetector` runs such a file with onnxruntime (and files of the earlier
single-image form: input ``image`` [3, H, W], no ``image_index``).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from ..modeling.postprocess import DetectionSelector
from .graph import ExportableDetector

OPSET = 17  # RoIAlign's half-pixel ("aligned") mode needs 16
OUTPUT_NAMES = ("boxes", "labels", "scores", "image_index")


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
    taking a batch of images [N, 3, H, W] of any one size (see the module docstring); returns the
    path.

    The TorchScript-based exporter traces the graph on two sample images at the model's test
    scale; the batch size and image size flow through the graph as values, so other batches and
    sizes run the same ops.
    """
    path = Path(path)
    wrapper = ExportableDetector(model, input_dtype=input_dtype, selector=selector).eval()
    t = model.transform
    h, w = t.min_size_test, min(t.max_size_test, round(t.min_size_test * 4 / 3))
    sample = torch.rand(2, 3, h, w, generator=torch.Generator().manual_seed(0))
    sample = (sample * 255).round().to(torch.uint8) if input_dtype == "uint8" else sample
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the legacy exporter's deprecation and tracer notes
            torch.onnx.export(
                wrapper, (sample,), str(path), dynamo=False, opset_version=opset,
                input_names=["images"], output_names=list(OUTPUT_NAMES),
                dynamic_axes={"images": {0: "batch", 2: "height", 3: "width"},
                              **{name: {0: "detections"} for name in OUTPUT_NAMES}},
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
    tensors). Consecutive images of the same size run as one batch, up to ``batch_size``
    (a batch of one size gives each image the detections it gets alone: no padding between
    them). ``classes`` are the names stored at export."""

    def __init__(self, path: str | Path, *, threads: int | None = None, batch_size: int = 8) -> None:
        import onnxruntime as ort

        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
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
        self.batched = len(graph_input.shape) == 4  # [3, H, W]: a file of the single-image form
        self.batch_size = batch_size if self.batched else 1

    def __call__(self, images: Sequence[Tensor]) -> list[dict[str, Tensor]]:
        return self.predict(images)

    def predict(self, images: Sequence[Tensor]) -> list[dict[str, Tensor]]:
        inputs = [self._input(image) for image in images]
        out: list[dict[str, Tensor]] = []
        start = 0
        while start < len(inputs):
            stop = start + 1
            while (stop < len(inputs) and stop - start < self.batch_size
                   and inputs[stop].shape == inputs[start].shape):
                stop += 1
            out += self._run(inputs[start:stop])
            start = stop
        return out

    def _input(self, image: Tensor) -> Tensor:
        x = image.detach().cpu()
        if x.dim() != 3 or x.shape[0] != 3:
            raise ValueError(f"expected an image tensor [3, H, W], got shape {tuple(x.shape)}")
        if self.input_dtype == "uint8" and x.is_floating_point():
            x = (x * 255.0).round().clamp(0, 255).to(torch.uint8)  # k / 255 comes back as k
        elif self.input_dtype == "float32":
            x = x.float() / 255.0 if not x.is_floating_point() else x.float()
        return x.contiguous()

    def _run(self, batch: list[Tensor]) -> list[dict[str, Tensor]]:
        if not self.batched:
            names = list(OUTPUT_NAMES[:3])
            out = self.session.run(names, {self.input_name: batch[0].numpy()})
            return [{name: torch.from_numpy(value) for name, value in zip(names, out)}]
        out = self.session.run(list(OUTPUT_NAMES), {self.input_name: torch.stack(batch).numpy()})
        found = {name: torch.from_numpy(value) for name, value in zip(OUTPUT_NAMES, out)}
        image = found.pop("image_index")
        return [{name: value[image == i] for name, value in found.items()} for i in range(len(batch))]


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
