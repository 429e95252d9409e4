"""How the cost grows (issue 26): time against the image's pixels (inference and training), against
the number of ground-truth boxes (training) and against the proposal count (inference), with the
per-stage split at every point, so that one sees which stage takes over as each one grows.

Every point is one ``fasterrcnn bench --stages`` run at batch 1 (``--compare torchvision`` adds
torchvision's twin). Writes DIR/growth_<preset>.json (every point's full result) and
DIR/growth_<preset>.md (one table per sweep: total ms and each stage's share of it).

Usage::

    python benchmarks/bench_growth.py --preset vgg16-voc07 --device cpu --iters 3 --out benchmarks/out/growth
    python benchmarks/bench_growth.py --preset zf-voc07 --sweeps proposals --proposals 100,300,1000,2000,6000
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

SWEEPS = ("pixels", "gt_boxes", "proposals")


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def _point(opts: argparse.Namespace, size: tuple[int, int], extra: list[str]) -> dict[str, Any]:
    from fasterrcnn.cli.bench import run_bench
    from fasterrcnn.cli.parser import build_parser

    argv = ["bench", "--preset", opts.preset, "--size", f"{size[0]}x{size[1]}", "--device", opts.device,
            "--dtype", opts.dtype, "--batch", "1", "--iters", str(opts.iters), "--warmup", str(opts.warmup),
            "--stages", *extra]
    if opts.compare:
        argv += ["--compare", "torchvision"]
    return run_bench(build_parser().parse_args(argv))


def sweep_points(opts: argparse.Namespace, base: tuple[int, int]) -> dict[str, list[dict[str, Any]]]:
    """{sweep: [{"x": value, "result": bench result}, ...]} for the sweeps asked for."""
    out: dict[str, list[dict[str, Any]]] = {}
    if "pixels" in opts.sweeps:
        out["pixels"] = []
        for s in opts.scales:
            size = (max(32, int(round(base[0] * s / 16)) * 16), max(32, int(round(base[1] * s / 16)) * 16))
            r = _point(opts, size, ["--gt-boxes", str(opts.gt_boxes)])
            out["pixels"].append({"x": size[0] * size[1], "size": list(size), "result": r})
            _show("pixels", out["pixels"][-1])
    if "gt_boxes" in opts.sweeps:
        out["gt_boxes"] = []
        for g in opts.boxes:
            out["gt_boxes"].append({"x": g, "result": _point(opts, base, ["--gt-boxes", str(g)])})
            _show("gt_boxes", out["gt_boxes"][-1])
    if "proposals" in opts.sweeps:
        out["proposals"] = []
        for n in opts.proposal_counts:
            out["proposals"].append({"x": n, "result": _point(opts, base, ["--proposals", str(n), "--no-train"])})
            _show("proposals", out["proposals"][-1])
    return out


def _show(sweep: str, point: dict[str, Any]) -> None:
    res = point["result"]["results"]
    parts = []
    for name, r in res.items():
        st = r.get("stages", {})
        for phase in ("infer", "train"):
            if phase in st:
                parts.append(f"{name} {phase} {1000 * st[phase]['total']:.0f} ms")
    print(f"{sweep} = {point['x']}: " + ", ".join(parts), flush=True)


PHASES = {"pixels": ("infer", "train"), "gt_boxes": ("train",), "proposals": ("infer",)}


def markdown(preset: str, sweeps: dict[str, list[dict[str, Any]]]) -> str:
    """Per sweep, phase and model: one row per point with the total (ms) and each top-level
    stage's share of it (%)."""
    lines = [f"# Cost growth: {preset}", ""]
    for sweep, points in sweeps.items():
        if not points:
            continue
        for phase in PHASES[sweep]:
            for name in points[0]["result"]["results"]:
                stages = [k for k in points[0]["result"]["results"][name]["stages"].get(phase, {})
                          if "." not in k and k != "total"]
                if not stages:
                    continue
                lines += [f"## {sweep}, {phase}, {name}", "",
                          f"| {sweep} | total ms | " + " | ".join(f"{s} %" for s in stages) + " |",
                          "|" + "---|" * (len(stages) + 2)]
                for p in points:
                    st = p["result"]["results"][name]["stages"][phase]
                    total = st["total"] or float("nan")
                    label = f"{p['x']} ({p['size'][0]}x{p['size'][1]})" if "size" in p else str(p["x"])
                    lines.append(f"| {label} | {1000 * st['total']:.0f} | "
                                 + " | ".join(f"{100 * st.get(s, 0.0) / total:.0f}" for s in stages) + " |")
                lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_table import standard_size

    from fasterrcnn.cli.common import set_threads

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="vgg16-voc07")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default="fp32")
    p.add_argument("--sweeps", default=",".join(SWEEPS), help=f"comma-separated among {', '.join(SWEEPS)}")
    p.add_argument("--scales", default="0.5,0.75,1.0,1.25", help="image side scales of the standard size")
    p.add_argument("--boxes", default="1,5,20,50,100", help="ground-truth boxes per training image")
    p.add_argument("--proposals", dest="proposal_counts", default="50,100,300,1000,2000",
                   help="test-time proposals after NMS")
    p.add_argument("--gt-boxes", type=int, default=3, help="gt boxes per image in the pixels sweep")
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--compare", action="store_true", help="torchvision's twin too")
    p.add_argument("--out", default="benchmarks/out/growth")
    opts = p.parse_args(argv)
    opts.sweeps = [s.strip() for s in opts.sweeps.split(",") if s.strip()]
    if any(s not in SWEEPS for s in opts.sweeps):
        print(f"error: --sweeps takes {', '.join(SWEEPS)}", file=sys.stderr)
        return 2
    opts.scales = [float(v) for v in opts.scales.split(",") if v.strip()]
    opts.boxes, opts.proposal_counts = _ints(opts.boxes), _ints(opts.proposal_counts)
    set_threads(opts.threads)
    sweeps = sweep_points(opts, standard_size(opts.preset))
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"growth_{opts.preset}.json").write_text(json.dumps(sweeps, indent=2) + "\n")
    text = markdown(opts.preset, sweeps)
    (out / f"growth_{opts.preset}.md").write_text(text)
    print(text)
    print(f"wrote {out / f'growth_{opts.preset}.json'} and {out / f'growth_{opts.preset}.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
