"""``fasterrcnn detect``: run a checkpoint on images or folders, draw and write the detections."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from .common import load_for_inference, log, set_threads, sliced_predictor

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


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
    from ..data.dataset import DataError, load_image
    from ..engine.inference import detections_json, write_json
    from ..visualize import draw_detections

    set_threads(args.threads)
    model, _, classes = load_for_inference(args)
    predictor = sliced_predictor(model, args) or model.predict
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
