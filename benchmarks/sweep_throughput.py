"""How many demo-preset training steps per second a machine gives when P runs share it.

For planning sweeps (``benchmarks/demo_sweep.py --parallel P``): each of P processes trains the
``tiny-shapes`` preset for ``--iters`` iterations (one torch thread each) on the same device, all
at once; the table gives each process's median time per step over its second half and the
aggregate steps per second. A demo-preset run is 2400 steps, so a sweep of R runs needs about
``R * 2400 / aggregate`` seconds of training (plus evaluation).

Usage::

    python benchmarks/sweep_throughput.py --device cuda --procs 1 4 8 --iters 300
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run_worker(device: str, iters: int, images: int, amp: str, out: Path) -> None:
    import torch

    from fasterrcnn.config import override
    from fasterrcnn.presets import preset
    from fasterrcnn.data.dataset import InMemoryDataset
    from fasterrcnn.data.shapes import ShapesDataset
    from fasterrcnn.engine.trainer import train_joint

    torch.set_num_threads(1)
    cfg = override(preset("tiny-shapes"), {"train.max_iter": iters, "train.lr_steps": [iters],
                                           "train.amp": amp, "train.checkpoint_period": 10**9})
    data = InMemoryDataset(ShapesDataset("train", images, seed=0))
    train_joint(cfg, data, out_dir=out, classes=data.classes, device=device, progress=False)


def step_times(log: Path) -> list[float]:
    """The logged seconds per step (one entry per log period), second half of the run only."""
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if "iter_time" in r]
    return [r["iter_time"] for r in rows[len(rows) // 2:]]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    p.add_argument("--iters", type=int, default=300)
    p.add_argument("--images", type=int, default=200, help="training images per process")
    p.add_argument("--amp", default="none", choices=("none", "bf16", "fp16"))
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        run_worker(args.device, args.iters, args.images, args.amp, Path(args.worker))
        return 0
    env = dict(os.environ, OMP_NUM_THREADS="1")
    print(f"{'procs':>5s} {'amp':>5s} {'ms/step (median per process)':>30s} {'steps/s':>8s} {'wall s':>7s}",
          flush=True)
    for procs in args.procs:
        with tempfile.TemporaryDirectory() as tmp:
            start = time.time()
            jobs = [subprocess.Popen([sys.executable, __file__, "--worker", f"{tmp}/{k}",
                                      "--device", args.device, "--iters", str(args.iters),
                                      "--images", str(args.images), "--amp", args.amp], env=env)
                    for k in range(procs)]
            codes = [j.wait() for j in jobs]
            wall = time.time() - start
            if any(codes):
                print(f"{procs:5d} {args.amp:>5s} failed: exit codes {codes}", flush=True)
                continue
            medians = [statistics.median(step_times(Path(tmp) / str(k) / "log.jsonl")) for k in range(procs)]
        per = " ".join(f"{1000 * m:.0f}" for m in medians)
        print(f"{procs:5d} {args.amp:>5s} {per:>30s} {sum(1 / m for m in medians):8.1f} {wall:7.0f}",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
