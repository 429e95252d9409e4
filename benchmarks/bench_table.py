"""The whole speed table of issue 26: every preset at its standard size, ours against torchvision's
FasterRCNN built with the identical architecture, in one process per preset row (the two models
alternate), with the paper's Table 5 split (conv / proposal / region-wise) for both.

Standard sizes: vgg16-voc07 and zf-voc07 600x1000 (the paper's), mobilenetv2-trees 512x512 (its
tile), tiny-shapes 336x448 (its test scale on the 4:3 shapes images), every other preset (the FPN
and C4 ones) at its ``min_size_test x max_size_test``. Writes DIR/bench_table.json (every row's
full ``fasterrcnn bench`` result) and DIR/bench_table.md. Run it when the machine is otherwise idle.

Usage::

    python benchmarks/bench_table.py --device cpu --iters 5 --out benchmarks/out/cpu
    python benchmarks/bench_table.py --device cuda --dtype bf16 --batch 16 --iters 20 --out benchmarks/out/h100
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

STANDARD_SIZES = {"vgg16-voc07": (600, 1000), "zf-voc07": (600, 1000), "mobilenetv2-trees": (512, 512),
                  "tiny-shapes": (336, 448)}


def standard_size(name: str) -> tuple[int, int]:
    from fasterrcnn.presets import preset

    if name in STANDARD_SIZES:
        return STANDARD_SIZES[name]
    i = preset(name).model.input
    return i.min_size_test, i.max_size_test


def bench_args(name: str, size: tuple[int, int], opts: argparse.Namespace, extra: list[str] = ()) -> Any:
    """The parsed ``fasterrcnn bench`` flags of one row."""
    from fasterrcnn.cli.parser import build_parser

    argv = ["bench", "--preset", name, "--size", f"{size[0]}x{size[1]}", "--device", opts.device,
            "--dtype", opts.dtype, "--batch", str(opts.batch), "--iters", str(opts.iters),
            "--warmup", str(opts.warmup), "--stages", *extra]
    if opts.train_batch:
        argv += ["--train-batch", str(opts.train_batch)]
    if not opts.no_compare:
        argv += ["--compare", "torchvision"]
    if opts.no_train:
        argv.append("--no-train")
    if opts.no_fold:
        argv.append("--no-fold")
    if opts.threads:
        argv += ["--threads", str(opts.threads)]
    return build_parser().parse_args(argv)


def _ms(x: float | None) -> str:
    return "" if x is None else f"{1000 * x:.0f}"


def markdown(rows: list[dict[str, Any]]) -> str:
    """One line per preset: latency, throughput, training img/s (ours, torchvision, ratio), peak
    memory, and the Table 5 split of the batch-1 inference (ms)."""
    head = ("| preset | size | infer s (ours / tv) | speed-up | img/s batch (ours / tv) | ratio | "
            "train img/s (ours / tv) | ratio | peak MiB infer (ours / tv) | conv / proposal / region ms (ours) | "
            "conv / proposal / region ms (tv) |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        res, ratio = r["results"], r.get("ratio", {})
        ours, tv = res["fasterrcnn"], res.get("torchvision")

        def pair(key: str, fmt: str) -> str:
            a = format(ours[key]["median"] if isinstance(ours.get(key), dict) else ours.get(key, float("nan")), fmt)
            if tv is None:
                return a
            b = format(tv[key]["median"] if isinstance(tv.get(key), dict) else tv.get(key, float("nan")), fmt)
            return f"{a} / {b}"

        def split(x: dict | None) -> str:
            t = (x or {}).get("table5", {}).get("infer")
            return " / ".join(_ms(t.get(g)) for g in ("conv", "proposal", "region_wise")) if t else ""

        mem = f"{ours['peak_memory_mb']['infer']:.0f}" + (f" / {tv['peak_memory_mb']['infer']:.0f}" if tv else "")
        rat = lambda k: f"{ratio[k]:.2f}x" if ratio.get(k) is not None else ""  # noqa: E731
        train = pair("train_throughput_img_s", ".2f") if "train_step_s" in ours else ""
        lines.append(f"| {r['preset']} | {r['size'][0]}x{r['size'][1]} | {pair('infer_latency_s', '.3f')} | "
                     f"{rat('infer_speedup')} | {pair('infer_throughput_img_s', '.2f')} | {rat('infer_throughput')} | "
                     f"{train} | {rat('train_throughput')} | {mem} | {split(ours)} | {split(tv)} |")
    if rows:
        r = rows[0]
        lines.append("")
        lines.append(f"{r['device']} ({r['device_name']}, {r['threads']} threads), {r['dtype']}, batch {r['batch']}, "
                     f"medians of {r['iters']} after {r['warmup']} warm-up; speed-up > 1: ours faster. "
                     f"Memory: {r['memory']}.")
        if r.get("note"):
            lines.append(f"Note: {r['note']}.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from fasterrcnn.cli.bench import format_table, run_bench
    from fasterrcnn.cli.common import retain_freed_memory, set_threads
    from fasterrcnn.presets import PRESETS

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default="fp32")
    p.add_argument("--presets", default=None, help="comma-separated (default: every preset)")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--train-batch", type=int, default=None)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-compare", action="store_true", help="ours only")
    p.add_argument("--no-train", action="store_true")
    p.add_argument("--no-fold", action="store_true", help="our inference without BatchNorm folding")
    p.add_argument("--out", default="benchmarks/out/bench_table")
    opts = p.parse_args(argv)
    names = [n.strip() for n in opts.presets.split(",")] if opts.presets else list(PRESETS)
    unknown = [n for n in names if n not in PRESETS]
    if unknown:
        print(f"error: unknown preset(s) {', '.join(unknown)}; choose from {', '.join(PRESETS)}", file=sys.stderr)
        return 2
    set_threads(opts.threads)
    retain_freed_memory()  # as the fasterrcnn command does (both models share the process)
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in names:
        result = run_bench(bench_args(name, standard_size(name), opts))
        print(format_table(result), flush=True)
        rows.append(result)
        (out / "bench_table.json").write_text(json.dumps(rows, indent=2) + "\n")  # kept after every row
        (out / "bench_table.md").write_text(markdown(rows))
    print(markdown(rows))
    print(f"wrote {out / 'bench_table.json'} and {out / 'bench_table.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
