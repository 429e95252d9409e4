"""Variants of the demo preset (``tiny-shapes``) trained and scored side by side.

Each variant is the preset with some config overrides (and, for the data variants, another
:class:`~fasterrcnn.data.shapes.ShapesSpec` field: ``@spec.FIELD`` for both splits,
``@train_spec.FIELD`` for the training images only; both start from the splits' own settings,
:data:`~fasterrcnn.data.shapes.SPLIT_SPECS`), trained on ``shapes:train`` (800 images) and scored
on ``shapes:test`` (200 images) with VOC07 11-point mAP at IoU 0.5, plus the detector's recall by
object size (score >= 0.3, IoU >= 0.5, right class). With ``--val N`` the first N images of
``shapes:val`` are scored too, as a whole and in blocks of 200 (the size of the test split: how
far one 200-image figure moves for a fixed model); choose settings on val, not on test. A name
``VARIANT.sK`` is the variant trained with ``train.seed = K``. Variants run as separate
processes, several at once (``--parallel``), on the CPU or a GPU: the GPU is for choosing
settings quickly; the demo's own figure is always measured on 2 CPU cores with
``fasterrcnn demo``.

Usage::

    python benchmarks/demo_sweep.py --device cuda --parallel 8 --out /tmp/sweep base base.s1
    python benchmarks/demo_sweep.py --val 600 --out /tmp/sweep base base.s1 cosine cosine.s1
    python benchmarks/demo_sweep.py --list

Results: one ``OUT/NAME.json`` per variant and a table on stdout; each variant's checkpoints and
its detections (``OUT/NAME/detections.npz``, see :func:`load_detections`) in ``OUT/NAME/``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

SIZE_EDGES = (24.0, 48.0, 96.0)
BLOCK = 200  # images per val block: the size of the test split


def _steps(iters: int) -> dict[str, Any]:
    """max_iter with the preset's decay points at the same fractions (1900/2500, 2300/2500)."""
    return {"train.max_iter": iters, "train.lr_steps": [round(iters * 0.76), round(iters * 0.92)]}


def _crowd(fewest: int, most: int, min_visible: float) -> dict[str, Any]:
    """Training scenes with ``fewest``-``most`` objects, each at least ``min_visible`` visible."""
    return {"@train_spec.min_objects": fewest, "@train_spec.max_objects": most,
            "@train_spec.min_visible": min_visible}


# Variants of options since removed from the code (the semantic loss, the IoU branch, the
# focal loss, batch padding masks, the /4 shortcut and the stride-4 backbone) are gone with
# them; their runs stay in benchmarks/RESULTS.md.
VARIANTS: dict[str, dict[str, Any]] = {
    "base": {},
    "rpn-box": {"model.rpn.positive_weighting": "box"},
    "box-both": {"model.rpn.positive_weighting": "box", "model.roi_head.positive_weighting": "box"},
    "box-both-centred": {"model.rpn.positive_weighting": "box",
                         "model.roi_head.positive_weighting": "box",
                         "model.anchors.offset": 0.0, "model.roi_head.aligned": False},
    "centred-train2000": {"model.rpn.positive_weighting": "box",
                          "model.roi_head.positive_weighting": "box", "model.anchors.offset": 0.0,
                          "model.roi_head.aligned": False, "@train_images": 2000},
    "centred-rpn05": {"model.rpn.positive_weighting": "box",
                      "model.roi_head.positive_weighting": "box", "model.anchors.offset": 0.0,
                      "model.roi_head.aligned": False, "model.rpn.fg_iou_thresh": 0.5},
    "ms256-320": {"model.input.min_size_train": [256, 288, 320], "model.input.max_size_train": 544},
    "train2000-now": {"@train_images": 2000},
    "box-both-vis75": {"model.rpn.positive_weighting": "box",
                       "model.roi_head.positive_weighting": "box", "@spec.min_visible": 0.75},
    "box-both-iters3500": {"model.rpn.positive_weighting": "box",
                           "model.roi_head.positive_weighting": "box", **_steps(3500)},
    "iters3500": _steps(3500),
    "iters4000": _steps(4000),
    "rep512": {"model.roi_head.representation_size": 512},
    "roi-reg2": {"model.roi_head.loss_weight_reg": 2.0},
    "extra1": {"model.backbone.extra_convs": 1},
    "extra2": {"model.backbone.extra_convs": 2},
    "ohem": {"model.roi_head.hard_mining": True},
    "ctx15": {"model.roi_head.context_scales": [1.5]},
    "ohem-ctx15": {"model.roi_head.hard_mining": True, "model.roi_head.context_scales": [1.5]},
    "ohem-ctx15-i2000": {"model.roi_head.hard_mining": True, "model.roi_head.context_scales": [1.5],
                         **_steps(2000)},
    "ema998": {"train.ema_decay": 0.998},
    "ema995": {"train.ema_decay": 0.995},
    "casc6": {"model.roi_head.cascade_ious": [0.6]},
    "casc6-i2400": {"model.roi_head.cascade_ious": [0.6], **_steps(2400)},
    "casc67": {"model.roi_head.cascade_ious": [0.6, 0.7]},
    "rep512-reg2": {"model.roi_head.representation_size": 512, "model.roi_head.loss_weight_reg": 2.0},
    "roi-fg05": {"model.roi_head.positive_fraction": 0.5},
    "ratios5": {"model.anchors.aspect_ratios": [0.33, 0.5, 1.0, 2.0, 3.0]},
    "width40-iters2400": {"model.backbone.width": 40, **_steps(2400)},
    "dihedral": {"train.vflip_prob": 0.5, "train.transpose_prob": 0.5},
    "dihedral-i3300": {"train.vflip_prob": 0.5, "train.transpose_prob": 0.5, **_steps(3300)},
    "i2400": _steps(2400),
    "i2100": _steps(2100),
    "input352": {"model.input.min_size_train": [352], "model.input.max_size_train": 576,
                 "model.input.min_size_test": 352, "model.input.max_size_test": 576},
    "multiscale": {"model.input.min_size_train": [256, 288, 320, 352],
                   "model.input.max_size_train": 576},
    "width48": {"model.backbone.width": 48},
    "rpn512": {"model.rpn.batch_size_per_image": 512},
    "batch8": {"train.images_per_batch": 8},
    "roi128": {"model.roi_head.batch_size_per_image": 128},
    "anchors-small": {"model.anchors.sizes": [12, 16, 24, 32, 48, 64, 96, 128, 200]},
    "lr03": {"train.lr": 0.03},
    "anchors-sqrt2": {"model.anchors.sizes": [16, 22.6, 32, 45.3, 64, 90.5, 128, 181]},
    "anchors-sqrt2-train2000": {"model.anchors.sizes": [16, 22.6, 32, 45.3, 64, 90.5, 128, 181],
                                "@train_images": 2000},
    "data-min20": {"@spec.min_object": 20.0, "@spec.max_object": 160.0},
    "train2000": {"@train_images": 2000},
    "train3200": {"@train_images": 3200},
    "train2000-iters3500": {"@train_images": 2000, **_steps(3500)},
    "train3200-iters3500": {"@train_images": 3200, **_steps(3500)},
    "train2000-multiscale": {"@train_images": 2000, "model.input.min_size_train": [256, 288, 320, 352],
                             "model.input.max_size_train": 576},
    "train2000-width48": {"@train_images": 2000, "model.backbone.width": 48},
    "vis80": {"@spec.min_visible": 0.8},
    # the training scenes: crowded (4-16 objects) is the default since session 10
    "sparse-train": _crowd(1, 8, 0.6),  # the training scenes until session 9
    "dense3-12": _crowd(3, 12, 0.6),
    "dense4-16": _crowd(4, 16, 0.6),  # = the default training scenes
    "dense6-24": _crowd(6, 24, 0.6),
    "dense4-16-seed1": {**_crowd(4, 16, 0.6), "train.seed": 1},
    "dense4-16-seed2": {**_crowd(4, 16, 0.6), "train.seed": 2},
    "dense4-16-i2700": {**_crowd(4, 16, 0.6), **_steps(2700)},
    "dense4-16-train1600": {**_crowd(4, 16, 0.6), "@train_images": 1600},
    "dense4-16-vis5": _crowd(4, 16, 0.5),
    "dense4-16-vis5-seed1": {**_crowd(4, 16, 0.5), "train.seed": 1},
    "dense4-16-vis4": _crowd(4, 16, 0.4),
    "vis75": {"@spec.min_visible": 0.75},
    "giou10": {"model.roi_head.box_loss": "giou", "model.roi_head.loss_weight_reg": 10.0},
    "giou2": {"model.roi_head.box_loss": "giou", "model.roi_head.loss_weight_reg": 2.0},
    "seed1": {"train.seed": 1},
    "seed2": {"train.seed": 2},
    "seed3": {"train.seed": 3},
    "seed1-nchw": {"train.seed": 1, "model.channels_last": "never"},
    "seed2-nchw": {"train.seed": 2, "model.channels_last": "never"},
    "adamw-1e3": {"train.optimizer": "adamw", "train.lr": 0.001, "train.weight_decay": 0.05},
    "adamw-2e3": {"train.optimizer": "adamw", "train.lr": 0.002, "train.weight_decay": 0.05},
    "adamw-5e4": {"train.optimizer": "adamw", "train.lr": 0.0005, "train.weight_decay": 0.05},
    "adamw-1e3-seed1": {"train.optimizer": "adamw", "train.lr": 0.001, "train.weight_decay": 0.05,
                        "train.seed": 1},
    "adamw-1e3-seed2": {"train.optimizer": "adamw", "train.lr": 0.001, "train.weight_decay": 0.05,
                        "train.seed": 2},
    "adamw-1e3-seed3": {"train.optimizer": "adamw", "train.lr": 0.001, "train.weight_decay": 0.05,
                        "train.seed": 3},
    "roi128-i2000": {"model.roi_head.batch_size_per_image": 128, **_steps(2000)},
    "roi128-i2000-seed1": {"model.roi_head.batch_size_per_image": 128, **_steps(2000), "train.seed": 1},
    "cosine": {"train.lr_schedule": "cosine"},
    "cosine-lr03": {"train.lr_schedule": "cosine", "train.lr": 0.03},
    "i3600": _steps(3600),
    "width40": {"model.backbone.width": 40},
    "rpn-post600": {"model.rpn.post_nms_top_n_train": 600},
    # the full rate for longer within the preset's 2400 iterations (decay at 86% and 96%)
    "late-decay": {"train.lr_steps": [2064, 2304]},
    # Fast R-CNN's background RoIs from IoU [0.1, 0.5) only (the preset: [0, 0.5))
    "bg-lo01": {"model.roi_head.bg_iou_thresh_lo": 0.1},
    # one box regressor for all classes: every foreground RoI trains it (the preset: per class)
    "agnostic": {"model.roi_head.class_agnostic_reg": True},
    # each RoI also pooled 2.5x its size: more of what hides a partly hidden object
    "ctx15-25": {"model.roi_head.context_scales": [1.5, 2.5]},
    # what the 7% faster RPN step of 2026-12-05 buys in the same training time
    "i2600": _steps(2600),
    # the paper's weight decay (the preset: 1e-4)
    "wd5e4": {"train.weight_decay": 5e-4},
    "amp-bf16": {"train.amp": "bf16"},  # GPU only
    "amp-fp16": {"train.amp": "fp16"},  # GPU only
}


def _size_recall(dets: list[dict], anns: list) -> dict[str, Any]:
    import numpy as np

    from fasterrcnn.evaluation import box_iou_np

    edges = (0.0, *SIZE_EDGES, float("inf"))
    found = np.zeros(len(edges) - 1)
    total = np.zeros(len(edges) - 1)
    for det, ann in zip(dets, anns):
        keep = np.asarray(det["scores"]) >= 0.3
        boxes, labels = np.asarray(det["boxes"])[keep], np.asarray(det["labels"])[keep]
        for box, label in zip(ann.boxes, ann.labels):
            size = float(np.sqrt((box[2] - box[0]) * (box[3] - box[1])))
            b = int(np.searchsorted(edges, size, side="right") - 1)
            total[b] += 1
            same = labels == label
            if same.any() and box_iou_np(box[None], boxes[same]).max() >= 0.5:
                found[b] += 1
    names = [f"<{int(edges[1])}"] + [f"{int(a)}-{int(b)}" for a, b in zip(edges[1:-2], edges[2:-1])]
    names.append(f">={int(edges[-2])}")
    return {n: round(float(f / max(t, 1)), 3) for n, f, t in zip(names, found, total)}


def variant_changes(name: str) -> dict[str, Any]:
    """The overrides of ``name``: a variant of VARIANTS, or ``VARIANT.sK`` (with train.seed K)."""
    base, dot, seed = name.rpartition(".s")
    if dot and base in VARIANTS and seed.isdigit():
        return {**VARIANTS[base], "train.seed": int(seed)}
    if name not in VARIANTS:
        raise KeyError(name)
    return VARIANTS[name]


def _split_scores(dets: list[dict], anns: list, classes: Any) -> dict[str, Any]:
    """VOC07 mAP, all-point mAP and misses (objects no detection of their class finds at IoU
    > 0.5, at any score) of detections aligned with the annotations ``anns``."""
    from fasterrcnn.evaluation import evaluate_voc

    voc07 = evaluate_voc(anns, dets, classes, use_07_metric=True)
    allpoint = evaluate_voc(anns, dets, classes, use_07_metric=False)
    misses = sum(
        round(n * (1.0 - (pr["recall"][-1] if pr["recall"] else 0.0)))
        for n, pr in zip(voc07["num_gt"].values(), voc07["pr"].values())
    )
    return {"mAP": round(voc07["mAP"], 4), "all_point": round(allpoint["mAP"], 4), "misses": int(misses),
            "AP": {k: round(v, 3) for k, v in voc07["AP"].items() if v is not None}}


def save_detections(path: Path, splits: dict[str, list[dict]]) -> None:
    """Every split's detections in one ``.npz`` (``SPLIT_boxes``, ``_labels``, ``_scores`` and
    ``_image``, the image index of each row), for analyses without re-running the model."""
    import numpy as np

    arrays: dict[str, Any] = {}
    for split, dets in splits.items():
        arrays[f"{split}_boxes"] = np.concatenate([d["boxes"].reshape(-1, 4) for d in dets]) if dets else np.zeros((0, 4))
        arrays[f"{split}_labels"] = np.concatenate([d["labels"] for d in dets]) if dets else np.zeros(0)
        arrays[f"{split}_scores"] = np.concatenate([d["scores"] for d in dets]) if dets else np.zeros(0)
        arrays[f"{split}_image"] = np.concatenate([np.full(len(d["scores"]), i) for i, d in enumerate(dets)]) if dets else np.zeros(0)
    np.savez_compressed(path, **arrays)


def load_detections(path: Path, split: str, num_images: int) -> list[dict]:
    """The detections of ``split`` saved by :func:`save_detections`, one dict per image."""
    import numpy as np

    z = np.load(path)
    image = z[f"{split}_image"]
    return [{k: z[f"{split}_{k}"][image == i] for k in ("boxes", "labels", "scores")}
            for i in range(num_images)]


def run_one(name: str, device: str, out: Path, threads: int, val: int = 0) -> dict[str, Any]:
    import torch

    from fasterrcnn.config import override
    from fasterrcnn.presets import preset
    from fasterrcnn.data.dataset import InMemoryDataset
    from fasterrcnn.data.shapes import SPLIT_SPECS, ShapesDataset
    from fasterrcnn.engine.checkpoint import load_model
    from fasterrcnn.engine.inference import run_inference
    from fasterrcnn.engine.trainer import train_joint
    from fasterrcnn.modeling.builder import build_predictor

    torch.set_num_threads(threads)
    changes = variant_changes(name)
    both = {k[6:]: v for k, v in changes.items() if k.startswith("@spec.")}
    spec = dataclasses.replace(SPLIT_SPECS["test"], **both)
    train_only = {k[12:]: v for k, v in changes.items() if k.startswith("@train_spec.")}
    train_spec = dataclasses.replace(SPLIT_SPECS["train"], **{**both, **train_only})
    cfg = override(preset("tiny-shapes"), {k: v for k, v in changes.items() if not k.startswith("@")})
    start = time.time()
    num_train = int(changes.get("@train_images", 800))
    train_set = InMemoryDataset(ShapesDataset("train", num_train, seed=0, spec=train_spec))
    test_set = ShapesDataset("test", 200, seed=0, spec=spec)
    data_s = time.time() - start
    summary = train_joint(cfg, train_set, out_dir=out / name, classes=train_set.classes, device=device,
                    progress=False)
    train_s = time.time() - start - data_s
    net, saved_cfg, _ = load_model(out / name / "model_final.pt", device=device)
    model = build_predictor(net, saved_cfg.model)  # with the config's test-time views
    dets = run_inference(model, test_set, batch_size=8, device=device)
    anns = [test_set.annotation(i) for i in range(len(test_set))]
    test = _split_scores(dets, anns, test_set.classes)
    row = {
        "variant": name, "changes": changes, "device": device, "threads": threads,
        "mAP": test["mAP"], "AP": test["AP"], "all_point": test["all_point"], "misses": test["misses"],
        "recall_by_size": _size_recall(dets, anns), "iterations": summary["iteration"],
        "data_s": round(data_s, 1), "train_s": round(train_s, 1),
        "it_per_s": round(summary["iteration"] / max(train_s, 1e-9), 2),
    }
    if val:
        val_set = ShapesDataset("val", val, seed=0, spec=dataclasses.replace(SPLIT_SPECS["val"], **both))
        val_dets = run_inference(model, val_set, batch_size=8, device=device)
        val_anns = [val_set.annotation(i) for i in range(val)]
        row["val"] = {"images": val, **_split_scores(val_dets, val_anns, val_set.classes)}
        blocks = [_split_scores(val_dets[a:a + BLOCK], val_anns[a:a + BLOCK], val_set.classes)
                  for a in range(0, val, BLOCK)]
        row["val"]["blocks"] = [b["mAP"] for b in blocks]
        row["val"]["block_mean"] = round(sum(row["val"]["blocks"]) / len(blocks), 4)
    save_detections(out / name / "detections.npz", {"test": dets, **({"val": val_dets} if val else {})})
    (out / f"{name}.json").write_text(json.dumps(row, indent=1))
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("variants", nargs="*", help="variant names (default: all); see --list")
    p.add_argument("--list", action="store_true", help="print the variants and exit")
    p.add_argument("--device", default="cpu")
    p.add_argument("--parallel", type=int, default=1, help="variants trained at once")
    p.add_argument("--threads", type=int, default=1, help="torch threads per variant")
    p.add_argument("--val", type=int, default=0,
                   help="also score the first N shapes:val images (and blocks of 200)")
    p.add_argument("--out", default="runs/demo_sweep")
    p.add_argument("--deadline-min", type=float, default=None,
                   help="stop waiting (and kill what still runs) after this many minutes")
    p.add_argument("--run", help=argparse.SUPPRESS)  # one variant, in this process
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.list:
        for name, changes in VARIANTS.items():
            print(f"{name:16s} {json.dumps(changes)}")
        return 0
    if args.run:
        run_one(args.run, args.device, out, args.threads, args.val)
        return 0
    names = args.variants or list(VARIANTS)
    unknown = []
    for n in names:
        try:
            variant_changes(n)
        except KeyError:
            unknown.append(n)
    if unknown:
        p.error(f"unknown variants: {unknown}; see --list")
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    pending, running = list(names), {}
    deadline = time.time() + 60 * args.deadline_min if args.deadline_min else None
    while pending or running:
        while pending and len(running) < args.parallel:
            name = pending.pop(0)
            log = open(out / f"{name}.log", "w")
            cmd = [sys.executable, __file__, "--run", name, "--device", args.device,
                   "--threads", str(args.threads), "--out", str(out), "--val", str(args.val)]
            running[name] = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        for name, proc in list(running.items()):
            if proc.poll() is not None:
                del running[name]
                print(f"[{time.strftime('%H:%M:%S')}] {name} exited {proc.returncode}", flush=True)
        if deadline and time.time() > deadline:
            for name, proc in running.items():
                proc.kill()
                print(f"{name}: killed at the deadline", flush=True)
            break
        time.sleep(2)
    print(f"\n{'variant':20s} {'test':>6s} {'miss':>4s} {'it/s':>6s} {'train s':>7s}  "
          f"{'val':>6s} {'miss':>4s} {'blocks':>20s} {'mean':>6s}  recall by size (test)")
    for name in names:
        path = out / f"{name}.json"
        if not path.exists():
            print(f"{name:20s} (no result; see {out / (name + '.log')})")
            continue
        r = json.loads(path.read_text())
        v = r.get("val")
        vals = (f"{v['mAP']:6.3f} {v['misses']:4d} {' '.join(f'{b:.3f}' for b in v['blocks']):>20s} "
                f"{v['block_mean']:6.3f}") if v else ""
        print(f"{name:20s} {r['mAP']:6.3f} {r.get('misses', -1):4d} {r['it_per_s']:6.2f} "
              f"{r['train_s']:7.0f}  {vals}  {r['recall_by_size']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
