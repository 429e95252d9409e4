"""The ``fasterrcnn`` argument parser: every command's flags and help texts."""

from __future__ import annotations

import argparse

from ..config import SCORE_FUSIONS
from ..presets import PRESETS
from .bench import add_bench_parser
from .check_data import cmd_check_data
from .demo import DEMO_OUT, cmd_demo
from .detect import cmd_detect
from .evaluate import cmd_eval
from .export import add_export_parser
from .import_model import add_import_parser
from .presets import cmd_presets
from .train import cmd_train


def _add_runtime(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")


def _add_image_reading(p: argparse.ArgumentParser, unannotated: bool = True) -> None:
    """How image files are read (see fasterrcnn/data/images.py and docs/bad-data.md)."""
    p.add_argument("--exif", choices=("apply", "ignore"), default="apply",
                   help="EXIF orientation: turn photos as viewers show them (apply, default; as "
                        "detectron2 and mmcv do) or use the raw pixel grid (ignore)")
    p.add_argument("--high-bit-depth", choices=("auto", "minmax", "bitdepth"), default="auto",
                   help="16-bit / float images to 0..255: by the values they hold (auto, default: "
                        "values within 0..255 kept, else 0..max scaled), per-image stretch "
                        "(minmax), or by the container's bit depth (bitdepth)")
    p.add_argument("--max-image-pixels", type=int, default=250_000_000, metavar="N",
                   help="refuse images with more than N pixels (default 250000000; 0 = no "
                        "ceiling); replaces Pillow's decompression-bomb limit")
    if unannotated:
        p.add_argument("--unannotated-images", choices=("skip", "negative", "error"),
                       default="skip",
                       help="flat voc:DIR folders, an image without an XML beside it: leave it "
                            "out as not annotated yet (skip, default), use it as an image with "
                            "no objects (negative), or refuse (error)")


def _add_inference(p: argparse.ArgumentParser, checkpoint_required: bool = True) -> None:
    p.add_argument("--checkpoint", required=checkpoint_required,
                   help="model_final.pt or last.pt written by train/demo")
    p.add_argument("--batch-size", type=int, default=4, help="images (or tiles) per forward pass")
    p.add_argument("--max-detections", type=int, default=None, help="detections kept per image")
    p.add_argument("--tile", type=int, default=None,
                   help="sliced inference: run overlapping TILE x TILE windows over large images")
    p.add_argument("--tile-overlap", type=int, default=64, help="overlap of neighbouring tiles (pixels)")
    p.add_argument("--tta-sizes", default=None, metavar="N1,N2,...",
                   help="test-time augmentation: run each image at these shorter sides (longer side "
                        "capped in proportion) and pool the candidates before NMS. With --tta-flip, "
                        "--tta-vflip and --tta-transpose these flags replace the checkpoint's "
                        "model.test_aug views")
    p.add_argument("--tta-flip", action="store_true",
                   help="test-time augmentation: also run every scale (default: the test scale) on "
                        "the mirrored image")
    p.add_argument("--tta-vflip", action="store_true",
                   help="test-time augmentation: also run the views upside down (for data with no "
                        "'up': aerial, microscopy, the built-in shapes)")
    p.add_argument("--tta-transpose", action="store_true",
                   help="test-time augmentation: also run the views transposed (x and y swapped; "
                        "with --tta-flip and --tta-vflip: all eight flips and quarter turns)")
    p.add_argument("--tta-zoom", default=None, metavar="N1,N2,...|none",
                   help="zoomed views for small objects: also run each image, plain, at these "
                        "larger shorter sides, keeping their candidates only for boxes smaller than "
                        "--tta-zoom-max-box ('none': no zoomed views). Default: the checkpoint's "
                        "model.test_aug.zoom_sizes")
    p.add_argument("--tta-zoom-max-box", type=float, default=None, metavar="PX",
                   help="the zoomed views count only for boxes smaller than PX (sqrt of the box "
                        "area, original-image pixels). Default: model.test_aug.zoom_max_box")
    p.add_argument("--tta-fusion", choices=SCORE_FUSIONS, default=None,
                   help="how the views' scores combine: 'max' keeps the score of the box that wins "
                        "NMS; 'agreement' takes the geometric mean of that and the box's mean best "
                        "score over the views (default: the checkpoint's model.test_aug.score_fusion)")
    p.add_argument("--no-tta", action="store_true",
                   help="no test-time views: one plain pass at the test scale, whatever the "
                        "checkpoint's model.test_aug says (box voting is --box-vote's business)")
    p.add_argument("--box-vote", type=float, default=None, metavar="IOU",
                   help="box voting: each detection's box becomes the score-weighted mean of the "
                        "same-class candidates overlapping it at IoU >= IOU (0 = off)")
    _add_runtime(p)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fasterrcnn",
        description="Faster R-CNN (Ren et al.): train, evaluate and run two-stage object detectors.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo", help="train the CPU preset on the built-in data, evaluate, draw detections",
                       description="Train preset tiny-shapes on the built-in synthetic data (no download), "
                       "evaluate VOC07 mAP on its test split, and write model_final.pt, metrics.json and "
                       "detections.jpg to --out.")
    p.add_argument("--out", default=DEMO_OUT, help=f"output folder (default: {DEMO_OUT})")
    p.add_argument("--iters", type=int, default=None, help="training iterations (default: the preset's)")
    p.add_argument("--train-images", type=int, default=800, help="built-in training images (default: 800)")
    p.add_argument("--test-images", type=int, default=200, help="built-in test images (default: 200)")
    p.add_argument("--resume", action="store_true", help="continue from --out/last.pt if it exists")
    p.add_argument("--no-progress", "--quiet", dest="quiet", action="store_true",
                   help="no progress bar (--quiet is the same)")
    _add_runtime(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("train", help="train a detector on your data (or the built-in data)",
                       description="Train a preset on --data; evaluate on --val-data at the end (and every "
                       "--eval-period iterations). Writes DIR/last.pt (periodically, atomically), "
                       "DIR/model_final.pt, DIR/log.jsonl, DIR/train.log, DIR/tb/ (TensorBoard) and, "
                       "with --val-data, DIR/metrics.json.")
    p.add_argument("--data", required=True, help="voc:ROOT[:SPLIT] | coco:ANN.json:IMAGES | folder:DIR | "
                   "shapes[:SPLIT[:N]]; join several with +")
    p.add_argument("--val-data", default=None, help="data spec to evaluate on")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--preset", default=None, choices=list(PRESETS),
                   help="model/training preset (default: tiny-shapes)")
    p.add_argument("--init", default=None, metavar="CKPT",
                   help="fine-tune a trained detector (e.g. one written by `fasterrcnn import`): its "
                   "model and training settings, all its weights but the class-specific predictor "
                   "when the classes differ")
    p.add_argument("--config", default=None, help="JSON file of config overrides (nested like the preset)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config field, e.g. "
                   "--set train.lr=0.01 --set model.anchors.sizes=[32,64,128] (repeatable)")
    p.add_argument("--iters", type=int, default=None, help="train.max_iter")
    p.add_argument("--lr", type=float, default=None, help="train.lr (base learning rate)")
    p.add_argument("--batch-size", type=int, default=None, help="train.images_per_batch (per process)")
    p.add_argument("--backbone-weights", default=None, help="local ImageNet state dict for the backbone "
                   "(torchvision layout accepted)")
    p.add_argument("--schedule", choices=("joint", "alternating", "exact-joint"), default=None,
                   help="approximate joint training (default), the paper's 4-step alternating training, "
                   "or non-approximate joint training (RoIAlign presets)")
    p.add_argument("--amp", choices=("none", "bf16", "fp16"), default=None, help="mixed precision (GPU)")
    p.add_argument("--eval-period", type=int, default=None, help="evaluate every N iterations (0 = at the end)")
    p.add_argument("--metric", choices=("voc07", "voc", "coco"), default="voc07", help="validation metric")
    p.add_argument("--classes", default=None, help="comma-separated class names (default: from the data)")
    p.add_argument("--include-difficult", action="store_true", help="train on VOC 'difficult' objects too")
    p.add_argument("--on-bad-data", choices=("error", "skip"), default="error",
                   help="bad images/boxes: refuse with a report (error) or drop each with a warning (skip)")
    p.add_argument("--no-check-images", action="store_true", help="check image headers only, do not decode")
    p.add_argument("--resume", default=None, help="PATH to last.pt, or 'auto' (DIR/last.pt if present)")
    p.add_argument("--allow-config-change", action="append", metavar="KEY",
                   help="with --resume: accept a changed config key (e.g. train.lr)")
    p.add_argument("--deterministic", action="store_true", help="deterministic algorithms, fixed seeds")
    p.add_argument("--seed", type=int, default=None, help="train.seed")
    p.add_argument("--workers", type=int, default=None, help="data loader worker processes")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--crop", type=int, default=None, metavar="SIZE",
                   help="train on random SIZE x SIZE crops of each image (large photos); boxes are clipped "
                   "and kept when at least half visible")
    p.add_argument("--crops-per-image", type=int, default=None,
                   help="crops drawn per image with --crop (default: enough for every iteration)")
    p.add_argument("--dihedral", action="store_true",
                   help="with --crop: random transposes and vertical flips too (overhead imagery)")
    p.add_argument("--tile", type=int, default=None, help="sliced inference for validation images")
    p.add_argument("--tile-overlap", type=int, default=64, help="tile overlap for --tile")
    p.add_argument("--max-detections", type=int, default=None, help=argparse.SUPPRESS)
    _add_image_reading(p)
    _add_runtime(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate a checkpoint (VOC07, VOC, COCO metrics; proposal recall)",
                       description="Detect on --data and score: voc07 (11-point AP@0.5), voc (area AP@0.5, "
                       "VOC2010+), coco (pycocotools AP, AP50, AP75, APs/m/l, AR1/10/100). Writes "
                       "DIR/metrics.json, DIR/detections.json and PR plots. With --proposals, reports RPN "
                       "recall against IoU instead (DIR/recall.json, DIR/recall_iou.png).")
    p.add_argument("--data", required=True, help="data spec (see train --help)")
    p.add_argument("--metric", choices=("voc07", "voc", "coco"), default="voc07")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--proposals", default=None, metavar="N1,N2,...",
                   help="proposal recall for these proposal counts, e.g. 300,1000,2000")
    p.add_argument("--score-thresh", type=float, default=None, help="detection score threshold "
                   "(default: the model's, 0.05, as evaluation expects)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_image_reading(p)
    _add_inference(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("detect", help="detect objects in images; draw them and write detections.json",
                       description="Run a trained detector on images or folders of images. Writes one "
                       "picture per image with boxes, class names and scores, and DIR/detections.json "
                       "(COCO results format: image_id, file_name, category_id, category, "
                       "bbox [x, y, w, h] in 0-based pixels, score).")
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_FOLDER")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--score-thresh", type=float, default=0.5, help="keep detections scoring at least this")
    p.add_argument("--recursive", action="store_true",
                   help="also search the subfolders of a folder given (default: its files only)")
    p.add_argument("--onnx", default=None, metavar="MODEL",
                   help="run an exported ONNX file (fasterrcnn export) with onnxruntime instead of "
                        "--checkpoint: one plain pass, no test-time views or --tile")
    _add_image_reading(p, unannotated=False)
    _add_inference(p, checkpoint_required=False)
    p.set_defaults(func=cmd_detect)

    p = sub.add_parser("check-data", help="validate a dataset and report box and anchor statistics",
                       description="List every problem (missing/corrupt images, boxes outside the image or "
                       "degenerate, unknown classes, empty annotation files, recorded sizes that disagree "
                       "with the files), box size/aspect statistics, how many boxes the preset's anchors "
                       "can match, and suggested anchors. Exit code 1 when problems were found.")
    p.add_argument("data", help="data spec (see train --help)")
    p.add_argument("--classes", default=None, help="comma-separated class names to allow")
    p.add_argument("--preset", default="tiny-shapes", choices=list(PRESETS),
                   help="whose anchors and input size to check coverage against")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="config override, e.g. "
                   "--set model.anchors.sizes=[16,32,64]")
    p.add_argument("--no-check-images", action="store_true", help="check image headers only, do not decode")
    p.add_argument("--crop", type=int, default=None, metavar="SIZE",
                   help="measure anchor fit at the scale the network sees SIZE-px crops or tiles of large "
                   "images (train --crop, detect --tile) instead of whole rescaled images")
    p.add_argument("--max-problems", type=int, default=None, help="list at most N problems")
    _add_image_reading(p)
    p.set_defaults(func=cmd_check_data)

    add_import_parser(sub)

    add_export_parser(sub)

    add_bench_parser(sub, _add_runtime)

    p = sub.add_parser("presets", help="list the named presets")
    p.set_defaults(func=cmd_presets)
    return parser
