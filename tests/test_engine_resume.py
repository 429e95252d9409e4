"""SIGKILL in the middle of a run, resume from last.pt: bit-identical to an uninterrupted run.

A subprocess trains 12 iterations (checkpoint every 4, deterministic, CPU). At its 9th call of
``model.loss`` — after the iteration-8 checkpoint is on disk — it writes a marker file and blocks;
the test waits for the marker (no timing guesswork), SIGKILLs the process, resumes to the end
in-process and compares every tensor with an uninterrupted run using ``torch.equal``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from fasterrcnn.engine.checkpoint import load_checkpoint
from fasterrcnn.engine.trainer import train_joint
from test_engine_trainer import CLASSES, TinyDetector, ToyDataset, real_config, state_equal, toy_config

TESTS_DIR = str(Path(__file__).resolve().parent)

SCRIPT = """
import sys
sys.path.insert(0, {tests_dir!r})
import torch
torch.set_num_threads(1)
from test_engine_resume import run_training
run_training({kind!r}, {out_dir!r}, {workers}, block_at=9, marker={marker!r})
raise SystemExit("not blocked")
"""


def run_training(kind: str, out_dir: str | Path, workers: int, *, resume: str | None = None,
                 block_at: int | None = None, marker: str | None = None) -> dict[str, Any]:
    """12 deterministic iterations of the stand-in or the real (shrunk) detector."""
    make = toy_config if kind == "standin" else real_config
    cfg = make(max_iter=12, checkpoint_period=4, log_period=3, num_workers=workers, hflip_prob=0.5,
               lr_steps=[6], warmup_iters=3)
    torch.manual_seed(cfg.train.seed)
    if kind == "standin":
        model: torch.nn.Module = TinyDetector()
    else:
        from fasterrcnn.modeling.builder import build_model

        model = build_model(cfg.model)
    if block_at is not None:
        inner = model.loss
        calls = [0]

        def blocking_loss(*args: Any, **kwargs: Any) -> Any:
            calls[0] += 1
            if calls[0] == block_at:
                Path(marker).write_text("blocked")
                time.sleep(600)
            return inner(*args, **kwargs)

        model.loss = blocking_loss  # type: ignore[method-assign]
    return train_joint(cfg, ToyDataset(8), out_dir=out_dir, classes=CLASSES, resume=resume,
                 deterministic=True, model=model, progress=False)


def _kill_after_checkpoint(tmp_path: Path, kind: str, workers: int) -> Path:
    run_dir, marker = tmp_path / "run", tmp_path / "blocked"
    script = SCRIPT.format(tests_dir=TESTS_DIR, kind=kind, out_dir=str(run_dir), workers=workers,
                           marker=str(marker))
    with open(tmp_path / "stderr.txt", "wb") as err:
        proc = subprocess.Popen([sys.executable, "-c", script], stdout=err, stderr=err)
        try:
            deadline = time.monotonic() + 120
            while not marker.exists():
                if proc.poll() is not None:
                    pytest.fail("training subprocess ended early:\n"
                                + (tmp_path / "stderr.txt").read_text()[-3000:])
                if time.monotonic() > deadline:
                    pytest.fail("training subprocess never reached iteration 9")
                time.sleep(0.05)
            assert load_checkpoint(run_dir / "last.pt")["iteration"] == 8
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (run_dir / "model_final.pt").exists()
    return run_dir


@pytest.mark.parametrize("kind,workers", [("standin", 0), ("real", 0), ("real", 1)])
def test_sigkill_then_resume_is_bit_exact(tmp_path: Path, kind: str, workers: int) -> None:
    if kind == "real":
        pytest.importorskip("fasterrcnn.modeling.faster_rcnn")
    run_dir = _kill_after_checkpoint(tmp_path, kind, workers)
    with open(run_dir / "log.jsonl", "a") as f:  # as if killed later: a record past 8, a cut line
        f.write('{"iteration": 10, "losses": {"total": 1.0}}\n{"iterat')
    resumed = run_training(kind, run_dir, workers, resume=str(run_dir / "last.pt"))
    assert resumed["start_iteration"] == 8 and resumed["iteration"] == 12

    ref = run_training(kind, tmp_path / "ref", workers)
    assert ref["start_iteration"] == 0
    a, b = load_checkpoint(run_dir / "last.pt"), load_checkpoint(tmp_path / "ref" / "last.pt")
    assert state_equal(a["model"], b["model"]) == []
    fa = load_checkpoint(run_dir / "model_final.pt")["model"]
    assert state_equal(fa, b["model"]) == []
    for s1, s2 in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(s1["momentum_buffer"], s2["momentum_buffer"])
    assert a["sampler"] == b["sampler"] and a["scheduler"] == b["scheduler"] == {"iteration": 12}
    assert torch.equal(a["rng"]["torch"], b["rng"]["torch"])
    # the logged losses after the resume point match too, and the log reads as one run
    assert resumed["losses"] == ref["losses"]
    logs = [[json.loads(l) for l in (d / "log.jsonl").read_text().splitlines()] for d in (run_dir, tmp_path / "ref")]
    assert [r["iteration"] for r in logs[0]] == [r["iteration"] for r in logs[1]] == [3, 6, 9, 12]
    # (the record at 9 averages 9 only in the resumed run, 7..9 in the reference)
    assert [r["losses"] for i, r in enumerate(logs[0]) if i != 2] == \
        [r["losses"] for i, r in enumerate(logs[1]) if i != 2]


def test_sampler_start_continues_or_approximates() -> None:
    from fasterrcnn.engine.resume import sampler_start

    assert sampler_start(None, 4, 100) == (0, 0, "")
    ckpt = {"sampler": {"epoch": 3, "position": 5, "global_batch_size": 4, "num_images": 100}}
    assert sampler_start(ckpt, 4, 100) == (3, 5, "")
    epoch, position, note = sampler_start(ckpt, 8, 100)  # 20 images into the epoch = 2.5 batches of 8
    assert (epoch, position) == (3, 2) and "global batch 4 -> 8" in note and "approximately" in note
    assert sampler_start(ckpt, 4, 120)[2].startswith("global batch 4 -> 4 or dataset size 100 -> 120")
