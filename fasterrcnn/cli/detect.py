"""``fasterrcnn detect``: run a checkpoint on images or folders, draw and write the detections."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Callable, Sequence

from ..config import ConfigError
from .common import load_for_inference, log, set_threads, sliced_predictor

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def _collect_images(paths: Sequence[str], recursive: bool = False) -> list[Path]:
    """The image files named or in the folders named (their subfolders too with ``recursive``;
    without it, a note says how many subfolders were not searched)."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = p.rglob("*") if recursive else p.iterdir()
            files += sorted((f for f in found if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file()),
                            key=lambda f: f.relative_to(p).as_posix())
            subfolders = [d for d in p.iterdir() if d.is_dir()] if not recursive else []
            if subfolders:
                log.warning("note: %s has %d subfolder(s) that were not searched (pass --recursive "
                            "to search them)", p, len(subfolders))
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"{p}: no such image or folder")
    if not files:
        raise FileNotFoundError(f"no images found in {', '.join(paths)}"
                                + ("" if recursive else " (subfolders are searched with --recursive)"))
    return files


def output_name(path: Path, used: dict[str, str]) -> str:
    """A picture name for ``path`` that no earlier image took: ``x.jpg``; when taken, by an
    image of another type ``x_png.jpg`` (``x.png`` beside ``x.jpg``), by one of the same type
    ``PARENT_x.jpg`` (``d1/x.jpg`` and ``d2/x.jpg``); then ``x_2.jpg``, ``x_3.jpg``, ...
    ``used`` maps each name taken (lower case: case-insensitive file systems) to the suffix of
    its image; the name chosen is added."""
    ext = path.suffix.lower()
    first = f"{path.stem}.jpg"
    by_type, by_parent = f"{path.stem}_{ext.lstrip('.')}.jpg", f"{path.parent.name}_{path.stem}.jpg"
    same_type = used.get(first.lower()) == ext
    candidates = [first] + ([by_parent, by_type] if same_type else [by_type, by_parent])
    candidates += [f"{path.stem}_{n}.jpg" for n in range(2, len(used) + 3)]
    name = next(c for c in candidates if c.lower() not in used)
    used[name.lower()] = ext
    return name


def onnx_predictor(args: argparse.Namespace) -> tuple[Callable, tuple[str, ...]]:
    """(predict, class names) of ``--onnx``: the exported graph run by onnxruntime (one plain
    pass), its detections cut to ``--score-thresh`` and ``--max-detections`` afterwards."""
    if args.checkpoint:
        raise ConfigError("give --checkpoint or --onnx, not both")
    unused = [flag for flag, on in (("--tile", args.tile), ("--tta-sizes", args.tta_sizes is not None),
                                    ("--tta-flip/-vflip/-transpose", args.tta_flip or args.tta_vflip or args.tta_transpose),
                                    ("--tta-zoom", args.tta_zoom is not None), ("--box-vote", args.box_vote is not None))
              if on]
    if unused:
        raise ConfigError(f"--onnx runs the exported single pass; {', '.join(unused)} need --checkpoint")
    if args.device != "cpu":
        log.warning("note: --onnx runs on the CPU (onnxruntime's CPU provider)")
        args.device = "cpu"
    try:
        from ..export.onnx import OnnxDetector
        runner = OnnxDetector(args.onnx, threads=args.threads, batch_size=max(1, args.batch_size))
    except ImportError:
        raise ConfigError("--onnx needs onnxruntime (pip install onnxruntime)") from None
    except Exception as exc:  # onnxruntime's own errors: not an ONNX file, unsupported ops
        if isinstance(exc, FileNotFoundError):
            raise
        raise ConfigError(f"{args.onnx}: onnxruntime cannot load it ({exc})") from None
    cap = args.max_detections

    def predict(images: list) -> list:
        out = []
        for det in runner(images):
            keep = (det["scores"] > args.score_thresh).nonzero(as_tuple=True)[0][:cap]
            out.append({k: v[keep] for k, v in det.items()})
        return out

    return predict, runner.classes


def cmd_detect(args: argparse.Namespace) -> int:
    from ..data.dataset import DataError
    from ..data.images import ImageReader
    from ..engine.inference import detections_json, write_json
    from ..visualize import draw_detections

    set_threads(args.threads)
    if getattr(args, "onnx", None):
        predictor, classes = onnx_predictor(args)
    else:
        if not args.checkpoint:
            raise ConfigError("detect needs --checkpoint CKPT (or --onnx MODEL, an exported file)")
        model, _, classes = load_for_inference(args)
        predictor = sliced_predictor(model, args) or model.predict
    files = _collect_images(args.inputs, getattr(args, "recursive", False))
    reader = ImageReader.from_args(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # Images of the same size run together, up to --batch-size per pass: the same detections as
    # one at a time (a batch of mixed sizes would pad the smaller images, and the padding changes
    # the features near their right and bottom edges, so an image's detections would depend on
    # its neighbours). Pictures are written as each pass ends; detections.json keeps file order.
    batch = max(1, args.batch_size)
    found: dict[int, tuple[Path, dict]] = {}
    pending: dict[tuple[int, ...], list[tuple[int, Path, Any]]] = {}
    skipped, used = 0, {}

    def run(group: list[tuple[int, Path, Any]]) -> None:
        outputs = predictor([image.to(args.device).float() / 255.0 for _, _, image in group])
        for (i, path, image), det in zip(group, outputs):
            det = {k: v.detach().cpu() for k, v in det.items()}
            found[i] = (path, {k: v.numpy() for k, v in det.items()})
            drawn = draw_detections(image, det["boxes"], det["labels"], det["scores"], classes)
            target = out / output_name(path, used)
            drawn.save(target, quality=92)
            print(f"{path}: {len(det['boxes'])} detections -> {target}")
        group.clear()

    for i, path in enumerate(files):
        try:  # detected and drawn on the same pixels (EXIF orientation applied per --exif)
            image = reader.load(path)
        except DataError as exc:
            log.warning("skipped %s", exc)
            skipped += 1
            continue
        group = pending.setdefault(tuple(image.shape), [])
        group.append((i, path, image))
        if len(group) == batch:
            run(group)
    for group in pending.values():
        if group:
            run(group)
    names = [str(found[i][0]) for i in sorted(found)]
    dets = [found[i][1] for i in sorted(found)]
    results = detections_json(dets, image_ids=list(range(len(names))), file_names=names, classes=classes)
    write_json(out / "detections.json", results)
    print(f"wrote {out / 'detections.json'} ({len(results)} detections in {len(names)} images"
          + (f"; {skipped} unreadable file(s) skipped" if skipped else "") + ")")
    return 1 if skipped and not names else 0
