"""``fasterrcnn export``: write a checkpoint as an ONNX graph from image pixels to detections."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from ..config import ConfigError
from .common import set_threads

FORMATS = ("onnx",)


def cmd_export(args: argparse.Namespace) -> int:
    from ..engine.checkpoint import load_model
    from ..export.graph import ExportError
    from ..export.onnx import describe, export_onnx

    set_threads(args.threads)
    if args.format not in FORMATS:
        raise ConfigError(f"--format must be one of {FORMATS}, got {args.format!r}")
    model, _, classes = load_model(args.checkpoint, device="cpu")
    select = {}
    if args.score_thresh is not None:
        select["score_thresh"] = float(args.score_thresh)
    if args.max_detections:
        select["detections_per_img"] = int(args.max_detections)
    selector = dataclasses.replace(model.roi_heads.selector, **select)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        export_onnx(model, out, classes=classes, input_dtype=args.input_dtype, selector=selector,
                    opset=args.opset)
    except ExportError as exc:
        raise ConfigError(f"{args.checkpoint}: {exc}") from None
    info = describe(out)
    images = info["inputs"]["images"]
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB, opset {info['opset']}): input images "
          f"{args.input_dtype} {images} (one size per batch); outputs boxes [D, 4] xyxy pixels, labels [D] "
          f"(1..{len(classes)}), scores [D], image_index [D]; {len(classes)} classes in the metadata; "
          f"score threshold {selector.score_thresh:g}, at most {selector.detections_per_img} detections "
          f"per image; no test-time augmentation")
    return 0


def add_export_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``export`` (called from :func:`~.parser.build_parser`)."""
    p = sub.add_parser(
        "export", help="export a checkpoint to ONNX (pre- and post-processing inside the graph)",
        description="Write the detector as one ONNX graph: input 'images' [N, 3, H, W], a batch "
        "of any size of images of any one size (uint8 0..255 by default, or float32 0..1), outputs "
        "'boxes' [D, 4] (xyxy, the images' pixels), 'labels' [D] (1..K), 'scores' [D] and "
        "'image_index' [D] (which image), grouped by image and best first within each. Resizing, "
        "normalisation, anchors, proposals, RoI pooling and per-class NMS run inside; the class "
        "names are stored in the file's metadata. Test-time augmentation is not exported. Run it "
        "with onnxruntime, or with 'fasterrcnn detect --onnx FILE'.")
    p.add_argument("--checkpoint", required=True, help="model_final.pt or last.pt written by train/demo/import")
    p.add_argument("--format", default="onnx", choices=FORMATS, help="export format (default: onnx)")
    p.add_argument("--out", required=True, help="file to write, e.g. model.onnx")
    p.add_argument("--input-dtype", choices=("uint8", "float32"), default="uint8",
                   help="the graph's image type: uint8 0..255 (default) or float32 0..1")
    p.add_argument("--score-thresh", type=float, default=None,
                   help="detections below this score are dropped inside the graph (default: the "
                   "model's, 0.05; a caller can filter higher afterwards)")
    p.add_argument("--max-detections", type=int, default=None, help="detections kept per image")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17; 16 or more for RoIAlign)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.set_defaults(func=cmd_export)
