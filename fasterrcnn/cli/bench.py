"""``fasterrcnn bench``: inference latency (batch 1), throughput (batch N), training throughput
and peak memory of a preset or checkpoint, optionally against torchvision's FasterRCNN built with
the identical architecture in the same process (``--compare torchvision``), and the time of each
stage split like the paper's Table 5 (``--stages``). Prints a table; ``--json`` writes every number.

Timing: ``--warmup`` untimed rounds, then ``--iters`` timed rounds; with a comparison the two
models alternate (A B, B A, ...). Medians with min/max and quartiles; the device is synchronised
around each timed call. Per-stage times come from separate passes synchronised at each stage
boundary (the end-to-end numbers are measured without those barriers).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
from pathlib import Path
from typing import Any, Callable

from ..config import ConfigError
from .common import set_threads

RANDOM_NOTE = ("weights are random (no --checkpoint): speed does not depend on the weights except "
               "through the number of detections that reach the final NMS, which a trained model changes")
STAGE_GROUPS = {  # Table 5's columns (plus input, backward, optimizer) from each model's stages
    "fasterrcnn": {"input": ("transform",), "conv": ("backbone",), "proposal": ("rpn_head", "rpn_loss", "proposals"),
                   "region_wise": ("region", "roi_sampling", "roi_head"), "backward": ("backward",),
                   "optimizer": ("optimizer",), "other": ("other",)},
    "torchvision": {"input": ("transform",), "conv": ("backbone",), "proposal": ("rpn",),
                    "region_wise": ("roi_heads",), "backward": ("backward",), "optimizer": ("optimizer",),
                    "other": ("other",)},
}


def _device(name: str) -> Any:
    import torch

    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"--device must be cpu or cuda, got {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available here")
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"--device must be cpu or cuda, got {name!r}")
    return device


def _model(args: argparse.Namespace, device: Any) -> tuple[Any, str]:
    """(model, weights: "checkpoint" or "random") with its input scaled to --size."""
    if args.checkpoint:
        from ..engine.checkpoint import load_model

        model, _, _ = load_model(args.checkpoint, device=device)
        weights = "checkpoint"
    else:
        from ..config import override, parse_overrides
        from ..modeling.builder import build_model
        from ..presets import preset

        cfg = override(preset(args.preset), parse_overrides(args.set)) if args.set else preset(args.preset)
        model = build_model(cfg.model, load_backbone_weights=False).to(device)
        weights = "random"
    h, w = args.size_hw
    t = model.transform  # the network sees --size as it is: no resizing
    t.min_size_test, t.max_size_test = min(h, w), max(h, w)
    t.min_size_train, t.max_size_train = (min(h, w),), max(h, w)
    if args.proposals is not None:
        s = model.rpn.test_settings
        model.rpn.test_settings = dataclasses.replace(
            s, post_nms_top_n=args.proposals, pre_nms_top_n=max(s.pre_nms_top_n, args.proposals))
    return model, weights


def _check(args: argparse.Namespace) -> None:
    from ..engine.bench import parse_size

    if not args.checkpoint and not args.preset:
        raise ConfigError("give --preset NAME or --checkpoint FILE")
    if args.set and args.checkpoint:
        raise ConfigError("--set overrides a preset; a checkpoint is timed as it was trained")
    args.size_hw = parse_size(args.size)
    for flag, value, low in (("--batch", args.batch, 1), ("--iters", args.iters, 1), ("--warmup", args.warmup, 0),
                             ("--gt-boxes", args.gt_boxes, 0), ("--train-batch", args.train_batch, 1),
                             ("--proposals", args.proposals, 1)):
        if value is not None and value < low:
            raise ConfigError(f"{flag} must be at least {low}, got {value}")


def run_bench(args: argparse.Namespace) -> dict[str, Any]:
    """Every number of one ``bench`` run (the JSON written by ``--json``)."""
    import torch
    import torchvision

    from ..engine import bench as B
    from ..engine.step import frozen_batchnorms, set_train_mode
    from ..modeling.fold import fold_batchnorm

    _check(args)
    device = _device(args.device)
    dtype = B.resolve_dtype(args.dtype, device)
    torch.manual_seed(args.seed)
    model, weights = _model(args, device)
    # inference as `detect` runs it: BatchNorm folded into the convolutions (a copy; training,
    # and the torchvision twin built from the model, keep the norm layers)
    infer_model = model if args.no_fold else fold_batchnorm(model)
    predict: dict[str, Callable] = {"fasterrcnn": infer_model.predict}
    staged_predict = {"fasterrcnn": lambda im, t: B.staged_predict(infer_model, im, t)}
    loss_fns: dict[str, Callable] = {
        "fasterrcnn": lambda im, tg, t: B.staged_loss(model, im, tg, t) if t.enabled else model.loss(im, tg)}
    modules = {"fasterrcnn": model}
    if args.compare == "torchvision":
        from ..engine.torchvision_twin import build_twin, timed_twin, twin_loss, twin_predict

        twin = build_twin(model)
        modules["torchvision"] = twin
        predict["torchvision"] = lambda im: twin_predict(twin, im)

        def twin_staged(im: list, t: Any) -> Any:
            with timed_twin(twin, t.start, t.stop):
                return twin_predict(twin, im)

        def twin_losses(im: list, tg: list, t: Any) -> Any:
            with timed_twin(twin, t.start, t.stop) if t.enabled else _null():
                return twin_loss(twin, im, tg)

        staged_predict["torchvision"] = twin_staged
        loss_fns["torchvision"] = twin_losses
    names = list(modules)
    h, w = args.size_hw
    k = model.num_classes
    one, _ = B.synthetic_batch(1, (h, w), k, args.gt_boxes, device, seed=args.seed)
    many, _ = B.synthetic_batch(args.batch, (h, w), k, args.gt_boxes, device, seed=args.seed + 1)
    train_n = args.train_batch or args.batch
    timg, ttgt = B.synthetic_batch(train_n, (h, w), k, args.gt_boxes, device, seed=args.seed + 2)
    res: dict[str, dict[str, Any]] = {n: {"param_memory_mb": B.param_mb(modules[n]), "peak_memory_mb": {}}
                                      for n in names}
    last: dict[str, Any] = {}

    def timed(phase: str, make: Callable[[str], Callable[[], Any]]) -> dict[str, list[float]]:
        times, peaks = B.time_alternating({n: make(n) for n in names}, device, iters=args.iters, warmup=args.warmup)
        for n in names:
            res[n]["peak_memory_mb"][phase] = peaks[n]
        return times

    def infer(n: str, images: list) -> Callable[[], Any]:
        def run() -> None:
            with B.autocast(device, dtype):
                last[n] = predict[n](images)
        return run

    times = timed("infer", lambda n: infer(n, one))
    for n in names:
        res[n]["infer_latency_s"] = B.summarize(times[n])
        res[n]["detections_per_image"] = float(sum(len(d["boxes"]) for d in last[n]) / len(last[n]))
    if args.batch > 1:
        times = timed("infer_batch", lambda n: infer(n, many))
    for n in names:
        res[n]["infer_batch_s"] = B.summarize(times[n])
        res[n]["infer_throughput_img_s"] = args.batch / res[n]["infer_batch_s"]["median"]
    stage_runs: dict[str, dict[str, list]] = {n: {"infer": [], "train": []} for n in names}
    if args.stages:
        for i in range(args.iters):
            for n in (names if i % 2 == 0 else names[::-1]):
                stage_runs[n]["infer"].append(_staged(lambda t: staged_predict[n](one, t), device, dtype, B))
    if not args.no_train:
        steps = {n: B.TrainStep(modules[n], loss_fns[n], device, dtype) for n in names}
        for n in names:
            set_train_mode(modules[n], frozen_batchnorms(modules[n]))
        off = B.StageTimer(device, enabled=False)
        times = timed("train", lambda n: lambda: steps[n](timg, ttgt, off))
        for n in names:
            res[n]["train_step_s"] = B.summarize(times[n])
            res[n]["train_throughput_img_s"] = train_n / res[n]["train_step_s"]["median"]
        if args.stages:
            for i in range(args.iters):
                for n in (names if i % 2 == 0 else names[::-1]):
                    stage_runs[n]["train"].append(_staged(lambda t: steps[n](timg, ttgt, t), device, None, B))
        for n in names:
            modules[n].eval()
    for n in names:
        if args.stages:
            st = {p: B.stage_medians(r) for p, r in stage_runs[n].items() if r}
            res[n]["stages"] = st
            res[n]["table5"] = {p: B.table5(s, STAGE_GROUPS[n]) for p, s in st.items()}
    out: dict[str, Any] = {
        "preset": args.preset, "checkpoint": args.checkpoint, "weights": weights,
        "note": RANDOM_NOTE if weights == "random" else None,
        "device": device.type, "device_name": _device_name(device), "dtype": args.dtype,
        "size": [h, w], "batch": args.batch, "train_batch": None if args.no_train else train_n,
        "iters": args.iters, "warmup": args.warmup, "gt_boxes": args.gt_boxes,
        "proposals": model.rpn.test_settings.post_nms_top_n, "threads": torch.get_num_threads(),
        "folded_batchnorms": getattr(infer_model, "folded_batchnorms", 0),
        "torch": torch.__version__, "torchvision": torchvision.__version__,
        "memory": ("CUDA max_memory_allocated per call, MiB (both models resident)" if device.type == "cuda"
                   else "CPU peak RSS of the whole process so far, MiB: process-wide and monotone"),
        "results": res,
    }
    if len(names) == 2:
        out["ratio"] = _ratios(res["fasterrcnn"], res["torchvision"], device.type == "cuda")
    return out


def _null() -> Any:
    import contextlib

    return contextlib.nullcontext()


def _staged(fn: Callable[[Any], Any], device: Any, dtype: Any, B: Any) -> dict[str, float]:
    """Stage seconds of one pass, with ``other`` = the pass's wall time minus its stages."""
    import time

    timer = B.StageTimer(device)
    B.sync(device)
    t0 = time.perf_counter()
    with B.autocast(device, dtype):
        fn(timer)
    B.sync(device)
    wall = time.perf_counter() - t0
    timer.seconds["other"] = max(0.0, wall - sum(v for k, v in timer.seconds.items() if "." not in k))
    return timer.seconds


def _ratios(ours: dict, tv: dict, cuda: bool) -> dict[str, float | None]:
    """Speed-ups of ours over torchvision (> 1: ours faster) and our memory over theirs."""
    r: dict[str, float | None] = {
        "infer_speedup": tv["infer_latency_s"]["median"] / ours["infer_latency_s"]["median"],
        "infer_throughput": ours["infer_throughput_img_s"] / tv["infer_throughput_img_s"],
    }
    if "train_step_s" in ours:
        r["train_throughput"] = ours["train_throughput_img_s"] / tv["train_throughput_img_s"]
    for phase in ours["peak_memory_mb"]:
        r[f"memory_{phase}"] = ours["peak_memory_mb"][phase] / tv["peak_memory_mb"][phase] if cuda else None
    return r


def _device_name(device: Any) -> str:
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


def format_table(r: dict[str, Any]) -> str:
    """The readable summary of :func:`run_bench`'s result."""
    names = list(r["results"])
    res = r["results"]
    h, w = r["size"]
    lines = [f"bench {r['preset'] or r['checkpoint']} ({r['weights']} weights) on {r['device']} "
             f"({r['device_name']}, {r['threads']} threads), {r['dtype']}, {h}x{w}, {r['gt_boxes']} gt boxes, "
             f"{r['proposals']} test proposals; median [min-max] of {r['iters']} after {r['warmup']} warm-up"]
    if r["note"]:
        lines.append(f"note: {r['note']}")
    head = f"{'':34s}" + "".join(f"{n:>26s}" for n in names) + ("    ratio" if len(names) == 2 else "")
    lines.append(head)

    def row(label: str, cell: Callable[[dict], str], ratio: float | None = None) -> None:
        extra = f"    {ratio:.2f}x" if ratio is not None else ""
        lines.append(f"{label:34s}" + "".join(f"{cell(res[n]):>26s}" for n in names) + extra)

    def sec(key: str) -> Callable[[dict], str]:
        return lambda x: f"{x[key]['median']:.4f} [{x[key]['min']:.4f}-{x[key]['max']:.4f}]"

    ratio = r.get("ratio", {})
    row("inference latency, batch 1 (s)", sec("infer_latency_s"), ratio.get("infer_speedup"))
    if r["batch"] > 1:
        row(f"inference, batch {r['batch']} (s)", sec("infer_batch_s"))
    row("inference throughput (img/s)", lambda x: f"{x['infer_throughput_img_s']:.2f}", ratio.get("infer_throughput"))
    if r["train_batch"]:
        row(f"training step, batch {r['train_batch']} (s)", sec("train_step_s"))
        row("training throughput (img/s)", lambda x: f"{x['train_throughput_img_s']:.2f}",
            ratio.get("train_throughput"))
    row("detections per image", lambda x: f"{x['detections_per_image']:.1f}")
    for phase in res[names[0]]["peak_memory_mb"]:
        row(f"peak memory, {phase} (MiB)", lambda x, p=phase: f"{x['peak_memory_mb'][p]:.0f}",
            ratio.get(f"memory_{phase}"))
    row("parameters + buffers (MiB)", lambda x: f"{x['param_memory_mb']:.0f}")
    if len(names) == 2:
        lines.append("ratio: speed-ups of fasterrcnn over torchvision (> 1: ours faster); memory: ours / theirs")
    for phase in ("infer", "train"):
        if "table5" not in res[names[0]] or phase not in res[names[0]]["table5"]:
            continue
        lines.append(f"per stage, {phase} (median s; Table 5 columns, then each model's stages):")
        for g in res[names[0]]["table5"][phase]:
            row(f"  {g}", lambda x, g=g, p=phase: f"{x['table5'][p].get(g, 0.0):.4f}")
        for n in names:
            parts = ", ".join(f"{k} {v:.4f}" for k, v in res[n]["stages"][phase].items() if k != "total")
            lines.append(f"  {n}: {parts}")
    return "\n".join(lines)


def cmd_bench(args: argparse.Namespace) -> int:
    set_threads(args.threads)
    result = run_bench(args)
    print(format_table(result))
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {path}")
    return 0


def add_bench_parser(sub: Any, add_runtime: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser("bench", help="time inference and training (optionally against torchvision)",
                       description=__doc__.split("\n\n")[0].replace("``", ""))
    p.add_argument("--preset", default=None, help="preset to build with random weights (or --checkpoint)")
    p.add_argument("--checkpoint", default=None, help="model_final.pt or last.pt to time instead")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a preset field, e.g. model.channels_last=true (with --preset)")
    p.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default="fp32",
                   help="autocast precision (fp16: CUDA only)")
    p.add_argument("--size", default="600x1000", metavar="HxW", help="input size the network sees (default 600x1000)")
    p.add_argument("--batch", type=int, default=2, help="images per batch for throughput (default 2)")
    p.add_argument("--train-batch", type=int, default=None, help="images per training step (default: --batch)")
    p.add_argument("--iters", type=int, default=5, help="timed rounds (default 5)")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds first (default 1)")
    p.add_argument("--gt-boxes", type=int, default=3, help="ground-truth boxes per training image (default 3)")
    p.add_argument("--proposals", type=int, default=None, help="test-time proposals after NMS (default: the model's)")
    p.add_argument("--compare", choices=("torchvision",), default=None,
                   help="also time torchvision's FasterRCNN built with the identical architecture")
    p.add_argument("--no-train", action="store_true", help="inference only")
    p.add_argument("--no-fold", action="store_true",
                   help="time inference without folding BatchNorm into the convolutions (detect folds)")
    p.add_argument("--stages", action="store_true", help="also time each stage (the paper's Table 5 split)")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic images and the weights")
    p.add_argument("--json", default=None, metavar="OUT", help="write every number to this JSON file")
    add_runtime(p)
    p.set_defaults(func=cmd_bench)
