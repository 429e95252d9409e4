"""The ``fasterrcnn`` command: demo, train, eval, detect, check-data, presets.

Every command turns bad input (missing or corrupt files, malformed annotations, a checkpoint of
another model, a diverging run) into one clear ``error: ...`` line and a non-zero exit code.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from .config import Config, ConfigError, PRESETS, from_dict, override, parse_overrides, preset, to_dict

log = logging.getLogger("fasterrcnn")

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
DEMO_OUT = "runs/demo"


# --------------------------------------------------------------------------- helpers


def _known_errors() -> tuple[type[BaseException], ...]:
    from .data.dataset import DataError
    from .engine.checkpoint import CheckpointError
    from .engine.trainer import TrainingDiverged
    from .modeling.backbones import BackboneWeightsError

    return (DataError, ConfigError, CheckpointError, BackboneWeightsError, TrainingDiverged, FileNotFoundError)


def _set_threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


def _build_config(args: argparse.Namespace, num_classes: int | None = None) -> Config:
    """Preset, then ``--config`` file, then the dedicated flags, then ``--set`` overrides."""
    import json

    cfg = preset(args.preset)
    if getattr(args, "config", None):
        path = Path(args.config)
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read config JSON ({exc})") from None
        merged = to_dict(cfg)
        _deep_update(merged, data, str(path))
        cfg = from_dict(Config, merged)
    flags: dict[str, Any] = {}
    for flag, key in (
        ("iters", "train.max_iter"),
        ("lr", "train.lr"),
        ("batch_size", "train.images_per_batch"),
        ("backbone_weights", "model.backbone.weights"),
        ("schedule", "train.schedule"),
        ("amp", "train.amp"),
        ("eval_period", "train.eval_period"),
        ("workers", "train.num_workers"),
        ("seed", "train.seed"),
    ):
        value = getattr(args, flag, None)
        if value is not None:
            flags[key] = value
    if getattr(args, "include_difficult", False):
        flags["train.include_difficult"] = True
    if num_classes is not None:
        flags["model.num_classes"] = num_classes
    cfg = override(cfg, flags)
    return override(cfg, parse_overrides(getattr(args, "set", None)))


def _deep_update(base: dict, new: Any, where: str, path: str = "") -> None:
    if not isinstance(new, dict):
        raise ConfigError(f"{where}: expected a JSON object at {path or 'top level'}")
    for key, value in new.items():
        dotted = f"{path}.{key}" if path else key
        if key not in base:
            raise ConfigError(f"{where}: unknown config key {dotted!r}")
        if isinstance(base[key], dict):
            _deep_update(base[key], value, where, dotted)
        else:
            base[key] = value


def _classes_arg(text: str | None) -> tuple[str, ...] | None:
    if not text:
        return None
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if len(set(names)) != len(names):
        raise ConfigError(f"--classes has duplicate names: {text}")
    return names


def _sliced_predictor(model: Any, args: argparse.Namespace) -> Callable | None:
    """``--tile`` turns on sliced inference for images larger than a tile."""
    if not getattr(args, "tile", None):
        return None
    from .engine.sliced import predict_sliced

    # eval/detect: --batch-size is the inference batch; train: it is the training batch
    tiles_per_batch = 4 if args.command == "train" else args.batch_size

    def predict(images: list) -> list:
        return [
            predict_sliced(
                model,
                image,
                tile=args.tile,
                overlap=args.tile_overlap,
                batch_size=tiles_per_batch,
                max_detections=args.max_detections or 1000,
            )
            for image in images
        ]

    return predict


def _load_for_inference(args: argparse.Namespace) -> tuple[Any, Config, tuple[str, ...]]:
    from .engine.checkpoint import load_model

    model, cfg, classes = load_model(args.checkpoint, device=args.device)
    if getattr(args, "score_thresh", None) is not None:
        model.roi_heads.score_thresh = float(args.score_thresh)
    if getattr(args, "max_detections", None):
        model.roi_heads.detections_per_img = int(args.max_detections)
    return model, cfg, tuple(classes)


def _print_metrics(result: dict[str, Any]) -> None:
    metric = result.get("metric")
    if metric == "coco":
        keys = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100")
        print("  ".join(f"{k} {result[k]:.4f}" if result.get(k) is not None else f"{k} n/a" for k in keys))
        return
    for name, ap in result.get("AP", {}).items():
        print(f"  {name:>16s}  AP {ap:.4f}" if ap is not None else f"  {name:>16s}  AP n/a (no ground truth)")
    m = result.get("mAP")
    print(f"{metric} mAP@0.5 = {m:.4f}" if m is not None else f"{metric} mAP: n/a")


def _draw_examples(model: Any, dataset: Any, indices: Sequence[int], path: Path, thresh: float) -> Path:
    from .visualize import draw_detections, grid

    pictures = []
    for i in indices:
        image, _ = dataset[i]
        det = model.predict([image.float() / 255.0])[0]
        keep = det["scores"] >= thresh
        pictures.append(
            draw_detections(image, det["boxes"][keep], det["labels"][keep], det["scores"][keep], dataset.classes)
        )
    grid(pictures, columns=3).save(path, quality=90)
    return path


# --------------------------------------------------------------------------- commands


def cmd_demo(args: argparse.Namespace) -> int:
    """Train the CPU preset on the built-in shapes data, evaluate, save a picture."""
    from .data.dataset import InMemoryDataset
    from .data.shapes import ShapesDataset
    from .engine.checkpoint import load_model
    from .engine.inference import evaluate_model, write_json
    from .engine.trainer import train

    _set_threads(args.threads)
    start = time.time()
    out = Path(args.out)
    cfg = preset("tiny-shapes")
    if args.iters is not None:
        cfg = override(cfg, {"train.max_iter": args.iters})
    print(f"fasterrcnn demo: preset tiny-shapes, {cfg.train.max_iter} iterations of "
          f"{cfg.train.images_per_batch} images, output in {out}/")
    train_set = InMemoryDataset(ShapesDataset("train", args.train_images, seed=0))
    test_set = ShapesDataset("test", args.test_images, seed=0)
    print(f"built-in data: {len(train_set)} training and {len(test_set)} test images "
          f"({len(test_set.classes)} classes: {', '.join(test_set.classes)})")
    summary = train(cfg, train_set, out_dir=out, classes=train_set.classes, device=args.device,
                    progress=not args.quiet, resume="auto" if args.resume else None)
    train_time = time.time() - start
    model, _, classes = load_model(out / "model_final.pt", device=args.device)
    result = evaluate_model(model, test_set, "voc07", out_dir=out, device=args.device)
    picture = _draw_examples(model, test_set, range(min(6, len(test_set))), out / "detections.jpg", 0.5)
    total = time.time() - start
    metrics = {k: v for k, v in result.items() if k != "pr"}
    metrics.update({"data": f"shapes:test:{len(test_set)}", "iterations": summary["iteration"],
                    "train_time_s": round(train_time, 1), "total_time_s": round(total, 1)})
    write_json(out / "metrics.json", metrics)
    _print_metrics(result)
    print(f"done in {total / 60:.1f} min (training {train_time / 60:.1f} min)")
    print(f"  checkpoint  {out / 'model_final.pt'}\n  metrics     {out / 'metrics.json'}\n  picture     {picture}")
    print(f"next: fasterrcnn detect --checkpoint {out / 'model_final.pt'} IMAGE_OR_FOLDER --out detections/")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .data.check import prepare_dataset
    from .data.spec import parse_data_spec
    from .engine.inference import evaluate_model

    _set_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    classes = _classes_arg(args.classes)
    base_cfg = _build_config(args)
    train_set, report = prepare_dataset(
        args.data,
        on_bad_data=args.on_bad_data,
        classes=classes,
        decode_images=not args.no_check_images,
        anchors=base_cfg.model.anchors,
        input_cfg=base_cfg.model.input,
        log=log,
    )
    classes = tuple(train_set.classes)
    cfg = _build_config(args, num_classes=len(classes))
    if args.crop:
        from .data.tiling import RandomCropDataset

        per_image = args.crops_per_image or max(
            1, cfg.train.max_iter * cfg.train.images_per_batch // max(1, len(train_set))
        )
        train_set = RandomCropDataset(train_set, args.crop, per_image, seed=cfg.train.seed,
                                      dihedral=args.dihedral)
        print(f"training on random {args.crop}x{args.crop} crops: {per_image} per image")
    print(f"training data {args.data}: {len(train_set)} images, {report.num_objects} objects, "
          f"classes: {', '.join(classes)}")
    out = Path(args.out)
    val_fn = None
    if args.val_data:
        val_set = parse_data_spec(args.val_data, classes=classes)
        predictor_for = lambda m: _sliced_predictor(m, args)  # noqa: E731

        def val_fn(model: Any) -> dict[str, Any]:
            return evaluate_model(model, val_set, args.metric, out_dir=out, device=args.device,
                                  predictor=predictor_for(model))

    common = dict(out_dir=out, classes=classes, val_fn=val_fn, resume=args.resume,
                  deterministic=args.deterministic, device=args.device, progress=not args.no_progress)
    if cfg.train.schedule == "alternating":
        from .engine.alternating import train_alternating

        summary = train_alternating(cfg, train_set, **common)
    elif cfg.train.schedule == "joint":
        from .engine.trainer import train

        summary = train(cfg, train_set, allow_config_changes=tuple(args.allow_config_change or ()), **common)
    else:
        raise ConfigError(f"unknown schedule {cfg.train.schedule!r}: use 'joint' or 'alternating'")
    print(f"finished at iteration {summary.get('iteration')}; weights: {out / 'model_final.pt'}")
    if summary.get("metrics"):
        _print_metrics(summary["metrics"])
        print(f"metrics: {out / 'metrics.json'}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .data.spec import parse_data_spec
    from .engine.inference import evaluate_model, write_json

    _set_threads(args.threads)
    model, _, classes = _load_for_inference(args)
    dataset = parse_data_spec(args.data, classes=classes)
    out = Path(args.out)
    if args.proposals:
        return _eval_proposals(model, dataset, args, out)
    result = evaluate_model(model, dataset, args.metric, out_dir=out, batch_size=args.batch_size,
                            device=args.device, progress=not args.no_progress,
                            predictor=_sliced_predictor(model, args))
    write_json(out / "metrics.json", {**{k: v for k, v in result.items() if k != "pr"}, "data": args.data,
                                      "checkpoint": str(args.checkpoint)})
    _print_metrics(result)
    print(f"wrote {out / 'metrics.json'}, {out / 'detections.json'}"
          + (f", PR curves in {out / 'pr'}/" if args.metric != "coco" else ""))
    return 0


def _eval_proposals(model: Any, dataset: Any, args: argparse.Namespace, out: Path) -> int:
    """RPN recall against IoU for several proposal counts (the paper's Figure 4)."""
    import dataclasses

    import torch
    from tqdm import tqdm

    from .engine.inference import write_json
    from .evaluation import plot_recall_iou, proposal_recall

    try:
        counts = sorted({int(n) for n in args.proposals.split(",") if n.strip()})
    except ValueError:
        raise ConfigError(f"--proposals expects numbers like 300,1000,2000, got {args.proposals!r}") from None
    if not counts or counts[0] <= 0:
        raise ConfigError("--proposals needs positive counts")
    s = model.rpn.test_settings
    model.rpn.test_settings = dataclasses.replace(
        s, post_nms_top_n=counts[-1], pre_nms_top_n=max(s.pre_nms_top_n, counts[-1])
    )
    gt_boxes, proposals = [], []
    for i in tqdm(range(len(dataset)), desc="proposals", disable=args.no_progress):
        image, _ = dataset[i]
        ann = dataset.annotation(i)
        keep = ~(ann.difficult | ann.iscrowd)
        gt_boxes.append(torch.from_numpy(ann.boxes[keep]))
        proposals.append(model.propose([image.to(args.device).float() / 255.0])[0]["boxes"].cpu())
    result = proposal_recall(gt_boxes, proposals, counts=counts)
    write_json(out / "recall.json", {**result, "data": args.data, "checkpoint": str(args.checkpoint)})
    plot_recall_iou(result, out / "recall_iou.png")
    for n in counts:
        ar = result["average_recall"][n]
        print(f"{n:>6d} proposals: recall@0.5 {result['recall'][n][0]:.4f}  average recall {ar:.4f}"
              if ar is not None else f"{n:>6d} proposals: no ground truth")
    print(f"wrote {out / 'recall.json'} and {out / 'recall_iou.png'}")
    return 0


def _collect_images(paths: Sequence[str]) -> list[Path]:
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"{p}: no such image or folder")
    if not files:
        raise FileNotFoundError(f"no images found in {', '.join(paths)}")
    return files


def cmd_detect(args: argparse.Namespace) -> int:
    from .data.dataset import DataError, load_image
    from .engine.inference import detections_json, write_json
    from .visualize import draw_detections

    _set_threads(args.threads)
    model, _, classes = _load_for_inference(args)
    predictor = _sliced_predictor(model, args) or model.predict
    files = _collect_images(args.inputs)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dets, names, skipped = [], [], 0
    for path in files:
        try:
            image = load_image(path)
        except DataError as exc:
            log.warning("skipped %s", exc)
            skipped += 1
            continue
        det = predictor([image.to(args.device).float() / 255.0])[0]
        det = {k: v.detach().cpu() for k, v in det.items()}
        dets.append({k: v.numpy() for k, v in det.items()})
        names.append(str(path))
        drawn = draw_detections(image, det["boxes"], det["labels"], det["scores"], classes)
        target = out / f"{path.stem}.jpg"
        if target.exists() and str(target) in getattr(cmd_detect, "_written", set()):
            target = out / f"{path.stem}_{len(names)}.jpg"
        drawn.save(target, quality=92)
        print(f"{path}: {len(det['boxes'])} detections -> {target}")
    results = detections_json(dets, image_ids=list(range(len(names))), file_names=names, classes=classes)
    write_json(out / "detections.json", results)
    print(f"wrote {out / 'detections.json'} ({len(results)} detections in {len(names)} images"
          + (f"; {skipped} unreadable file(s) skipped" if skipped else "") + ")")
    return 1 if skipped and not names else 0


def cmd_check_data(args: argparse.Namespace) -> int:
    from .data.check import check_dataset

    cfg = preset(args.preset)
    if args.set:
        cfg = override(cfg, parse_overrides(args.set))
    report = check_dataset(
        args.data,
        classes=_classes_arg(args.classes),
        decode_images=not args.no_check_images,
        anchors=cfg.model.anchors,
        input_cfg=cfg.model.input,
        crop=args.crop,
    )
    print(report.format(max_problems=args.max_problems))
    return 0 if report.ok else 1


def cmd_presets(args: argparse.Namespace) -> int:
    for name in PRESETS:
        m = preset(name).model
        print(f"{name:20s} backbone {m.backbone.name} (stride {m.backbone.stride}), {m.num_classes} classes, "
              f"anchors {list(m.anchors.sizes)} x {list(m.anchors.aspect_ratios)}, "
              f"input {m.input.min_size_train}/{m.input.max_size_train}")
    return 0


# --------------------------------------------------------------------------- parser


def _add_runtime(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")


def _add_inference(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="model_final.pt or last.pt written by train/demo")
    p.add_argument("--batch-size", type=int, default=4, help="images (or tiles) per forward pass")
    p.add_argument("--max-detections", type=int, default=None, help="detections kept per image")
    p.add_argument("--tile", type=int, default=None,
                   help="sliced inference: run overlapping TILE x TILE windows over large images")
    p.add_argument("--tile-overlap", type=int, default=64, help="overlap of neighbouring tiles (pixels)")
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
    p.add_argument("--quiet", action="store_true", help="no progress bar")
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
    p.add_argument("--preset", default="tiny-shapes", choices=list(PRESETS), help="model/training preset")
    p.add_argument("--config", default=None, help="JSON file of config overrides (nested like the preset)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config field, e.g. "
                   "--set train.lr=0.01 --set model.anchors.sizes=[32,64,128] (repeatable)")
    p.add_argument("--iters", type=int, default=None, help="train.max_iter")
    p.add_argument("--lr", type=float, default=None, help="train.lr (base learning rate)")
    p.add_argument("--batch-size", type=int, default=None, help="train.images_per_batch (per process)")
    p.add_argument("--backbone-weights", default=None, help="local ImageNet state dict for the backbone "
                   "(torchvision layout accepted)")
    p.add_argument("--schedule", choices=("joint", "alternating"), default=None,
                   help="approximate joint training (default) or the paper's 4-step alternating training")
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
    _add_inference(p)
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
    p.set_defaults(func=cmd_check_data)

    p = sub.add_parser("presets", help="list the named presets")
    p.set_defaults(func=cmd_presets)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except _known_errors() as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
