"""DDP on the CPU (gloo, 2 processes launched like torchrun) equals one process with the same
global batch: same first-iteration losses and the same weights after a few SGD steps.

Both the stand-in and the real detector (ZF backbone, no BatchNorm) are checked. For the real one
the config makes the RPN/RoI sampling take every candidate (so random sampling cannot differ)
and all images share one geometry, so that every image contributes the same number of samples:
then the batch-mean loss of one process equals the mean of the per-rank losses DDP averages.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from fasterrcnn.config import Config, override
from fasterrcnn.engine.checkpoint import load_checkpoint
from fasterrcnn.engine.trainer import train_joint
from test_engine_trainer import CLASSES, TinyDetector, ToyDataset, real_config, toy_config

TESTS_DIR = str(Path(__file__).resolve().parent)
PER_RANK = 2
ITERS = 4

SCRIPT = """
import sys
sys.path.insert(0, {tests_dir!r})
import torch
torch.set_num_threads(1)
from fasterrcnn.engine import distributed
info = distributed.init_from_env("cpu")
assert info.world_size == 2 and info.backend == "gloo", info
from test_engine_ddp import run
for kind in {kinds!r}:
    run(kind, {out_dir!r} + "/" + kind, {per_rank})
distributed.cleanup()
"""


def ddp_config(kind: str, images_per_batch: int) -> Config:
    common = dict(images_per_batch=images_per_batch, max_iter=ITERS, log_period=1, lr=0.01,
                  warmup_iters=0, checkpoint_period=2)
    if kind == "standin":
        return toy_config(hflip_prob=0.5, **common)
    return override(real_config(hflip_prob=0.0, **common), {
        "model.backbone.name": "zf",
        "model.backbone.frozen_stages": 0,
        "model.backbone.stride": 16,
        "model.anchors.sizes": [32, 48],
        "model.input.min_size_train": [64],
        "model.rpn.conv_channels": 16,
        "model.rpn.pre_nms_top_n_train": 100000,
        "model.rpn.post_nms_top_n_train": 20,
        "model.rpn.nms_thresh": 1.0,
        "model.rpn.min_size": 0.0,
        "model.rpn.batch_size_per_image": 100000,
        "model.rpn.positive_fraction": 1.0,
        "model.roi_head.batch_size_per_image": 100000,
        "model.roi_head.positive_fraction": 1.0,
        "model.roi_head.bg_iou_thresh_lo": 0.0,
        "model.roi_head.dropout": 0.0,
    })


def run(kind: str, out_dir: str, images_per_batch: int) -> dict[str, Any]:
    cfg = ddp_config(kind, images_per_batch)
    dataset = ToyDataset(10, same_geometry=(kind == "real"), size=64)
    model = None
    if kind == "standin":
        torch.manual_seed(cfg.train.seed)
        model = TinyDetector(stochastic=False)
    return train_joint(cfg, dataset, out_dir=out_dir, classes=CLASSES, model=model, progress=False)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(l) for l in path.read_text().splitlines() if '"losses"' in l]


def test_two_process_ddp_matches_single_process(tmp_path: Path) -> None:
    kinds = ["standin"]
    try:
        import fasterrcnn.modeling.faster_rcnn  # noqa: F401

        kinds.append("real")
    except ImportError:
        pass
    ddp_dir = tmp_path / "ddp"
    script = SCRIPT.format(tests_dir=TESTS_DIR, kinds=kinds, out_dir=str(ddp_dir), per_rank=PER_RANK)
    port = _free_port()
    procs, logs = [], []
    for rank in range(2):
        env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2",
                   LOCAL_WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                   GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1")
        log = open(tmp_path / f"rank{rank}.txt", "wb")
        logs.append(log)
        procs.append(subprocess.Popen([sys.executable, "-c", script], env=env, stdout=log, stderr=log))
    try:
        for p in procs:
            p.wait(timeout=240)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for log in logs:
            log.close()
    for rank, p in enumerate(procs):
        assert p.returncode == 0, (tmp_path / f"rank{rank}.txt").read_text()[-4000:]

    for kind in kinds:
        single = run(kind, str(tmp_path / "single" / kind), PER_RANK * 2)
        assert single["iteration"] == ITERS
        d_rec = _records(ddp_dir / kind / "log.jsonl")
        s_rec = _records(tmp_path / "single" / kind / "log.jsonl")
        assert [r["iteration"] for r in d_rec] == list(range(1, ITERS + 1))  # rank 0 only logs
        for key, value in s_rec[0]["losses"].items():
            assert d_rec[0]["losses"][key] == pytest.approx(value, rel=1e-5, abs=1e-7), (kind, key)
        for d, s in zip(d_rec, s_rec):
            assert d["losses"]["total"] == pytest.approx(s["losses"]["total"], rel=1e-4), kind
        wd = load_checkpoint(ddp_dir / kind / "model_final.pt")["model"]
        ws = load_checkpoint(tmp_path / "single" / kind / "model_final.pt")["model"]
        last = load_checkpoint(ddp_dir / kind / "last.pt")
        assert last["sampler"]["global_batch_size"] == PER_RANK * 2
        assert len(last["rng_per_rank"]) == 2  # every rank's RNG state, for an exact resume
        for k in ws:
            torch.testing.assert_close(wd[k], ws[k], rtol=1e-5, atol=1e-6, msg=f"{kind}: {k}")
        assert d_rec[0]["losses"]["total"] != d_rec[-1]["losses"]["total"]  # the weights moved


@pytest.mark.parametrize("synchronize, expected", [(True, ["barrier", "destroy"]), (False, ["destroy"])])
def test_cleanup_waits_for_peers_only_after_a_normal_end(
    monkeypatch: pytest.MonkeyPatch, synchronize: bool, expected: list[str]
) -> None:
    from fasterrcnn.engine import distributed

    calls: list[str] = []
    monkeypatch.setattr(distributed, "is_dist", lambda: True)
    monkeypatch.setattr(distributed.dist, "barrier", lambda: calls.append("barrier"))
    monkeypatch.setattr(distributed.dist, "destroy_process_group", lambda: calls.append("destroy"))
    distributed.cleanup(synchronize=synchronize)
    assert calls == expected


def test_cleanup_without_a_group_does_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    from fasterrcnn.engine import distributed

    monkeypatch.setattr(distributed.dist, "barrier", lambda: pytest.fail("barrier without a group"))
    assert not distributed.is_dist()
    distributed.cleanup()


def test_group_from_env_joins_and_leaves_only_its_own_group(monkeypatch: pytest.MonkeyPatch) -> None:
    from fasterrcnn.engine import distributed

    calls: list[str] = []
    monkeypatch.setattr(distributed, "init_from_env", lambda device: calls.append(f"init {device}"))
    monkeypatch.setattr(distributed, "cleanup", lambda synchronize=True: calls.append(f"leave {synchronize}"))
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with distributed.group_from_env("cpu"):  # one process: nothing to join
        pass
    assert calls == []
    monkeypatch.setenv("WORLD_SIZE", "2")
    with distributed.group_from_env("cpu"):
        calls.append("body")
    assert calls == ["init cpu", "body", "leave True"]
    calls.clear()
    with pytest.raises(RuntimeError, match="boom"):
        with distributed.group_from_env("cpu"):
            raise RuntimeError("boom")
    assert calls == ["init cpu", "leave False"]  # no barrier after an error
    calls.clear()
    monkeypatch.setattr(distributed, "is_dist", lambda: True)  # a group joined by the caller
    with distributed.group_from_env("cpu"):
        pass
    assert calls == []
