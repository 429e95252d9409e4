"""Training loop: outputs, learning, NaN guard, AMP checks, evaluation, resume checks.

Also home of the small fixtures the other engine tests import (``ToyDataset``,
``TinyDetector``, ``toy_config``, ``real_config``): a stand-in with FasterRCNN's ``loss()``
signature keeps these tests fast and independent of the detector's internals.
"""

from __future__ import annotations

import json
import math
import random
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fasterrcnn.config import Config, ConfigError, override
from fasterrcnn.presets import preset
from fasterrcnn.data.dataset import Annotation
from fasterrcnn.engine.checkpoint import CheckpointError, load_checkpoint
from fasterrcnn.engine.guard import TrainingDiverged
from fasterrcnn.engine.trainer import train_joint

from helpers import favour_class

CLASSES = ("red", "green", "blue")


# --------------------------------------------------------------------------- fixtures (shared)


class ToyDataset:
    """Deterministic synthetic images: one coloured rectangle (label 1..3) on noise.

    Odd images are portrait, even ones landscape. ``same_geometry`` gives every image the same
    size and box (only pixels differ), which makes the real model's sample counts equal per
    image (used by the DDP equivalence test). ``extra`` adds a difficult and a crowd box.
    """

    classes = CLASSES

    def __init__(self, n: int = 8, seed: int = 0, same_geometry: bool = False, extra: bool = False,
                 size: int = 48) -> None:
        self.n, self.seed, self.same_geometry, self.extra, self.size = n, seed, same_geometry, extra, size

    def __len__(self) -> int:
        return self.n

    def _geometry(self, i: int) -> tuple[int, int, np.ndarray, int]:
        s = self.size
        if self.same_geometry:
            return s, s, np.array([s * 0.25, s * 0.25, s * 0.75, s * 0.7], np.float32), 1 + i % 3
        rng = np.random.default_rng([self.seed, i, 1])
        h, w = (s, s * 3 // 2) if i % 2 == 0 else (s * 3 // 2, s)
        bw, bh = rng.uniform(0.3, 0.6) * w, rng.uniform(0.3, 0.6) * h
        x1, y1 = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
        return h, w, np.array([x1, y1, x1 + bw, y1 + bh], np.float32).round(), 1 + i % 3

    def annotation(self, i: int) -> Annotation:
        h, w, box, label = self._geometry(i)
        boxes, labels = [box], [label]
        difficult, crowd = [False], [False]
        if self.extra:
            boxes += [np.array([0, 0, 8, 8], np.float32), np.array([2, 2, 12, 10], np.float32)]
            labels += [2, 3]
            difficult += [True, False]
            crowd += [False, True]
        return Annotation(i, f"toy/{i}.png", h, w, np.stack(boxes), np.array(labels),
                          np.array(difficult), np.array(crowd))

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict]:
        ann = self.annotation(i)
        rng = np.random.default_rng([self.seed, i, 2])
        img = rng.integers(0, 60, size=(ann.height, ann.width, 3)).astype(np.uint8)
        x1, y1, x2, y2 = ann.boxes[0].astype(int)
        colour = np.zeros(3, np.uint8)
        colour[ann.labels[0] - 1] = 200 + 10 * (i % 5)
        img[y1:y2, x1:x2] = colour
        return torch.from_numpy(img).permute(2, 0, 1).contiguous(), ann.as_target()


class TinyDetector(nn.Module):
    """Stand-in with ``FasterRCNN.loss``'s signature and its use of the global RNG.

    ``stochastic``: random input scale (torch.randint) and dropout, like multi-scale training
    and random RoI sampling; ``nan_calls``: calls (1-based) whose losses are NaN.
    The loss is a mean over images, so it is DDP-equivalent.
    """

    def __init__(self, num_classes: int = 3, stochastic: bool = True, nan_calls: tuple[int, ...] = ()) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.frozen = nn.Linear(8, 8)
        self.frozen.requires_grad_(False)
        self.cls = nn.Linear(8, num_classes + 1)
        self.box = nn.Linear(8, 4)
        self.obj = nn.Linear(8, 1)
        self.stochastic = stochastic
        self.nan_calls = set(nan_calls)
        self.calls = 0

    def loss(self, images: list[torch.Tensor], targets: list[dict]) -> dict[str, torch.Tensor]:
        self.calls += 1
        parts: dict[str, list[torch.Tensor]] = {"rpn_cls": [], "rpn_reg": [], "roi_cls": [], "roi_reg": []}
        for img, t in zip(images, targets):
            size = (12, 16)[int(torch.randint(2, (1,)))] if self.stochastic else 12
            x = F.interpolate(img[None], size=(size, size), mode="bilinear", align_corners=False)
            f = F.relu(self.conv(x))
            if self.stochastic:
                f = F.dropout(f, 0.1, training=True)
            g = f.mean((2, 3)) + 0.0 * self.frozen(f.mean((2, 3)))
            h, w = img.shape[-2:]
            has = len(t["labels"]) > 0
            label = t["labels"][:1] if has else torch.zeros(1, dtype=torch.int64)
            box = t["boxes"][0] / torch.tensor([w, h, w, h]) if has else torch.zeros(4)
            parts["roi_cls"].append(F.cross_entropy(self.cls(g), label))
            parts["roi_reg"].append(F.smooth_l1_loss(self.box(g)[0], box, beta=0.1))
            parts["rpn_cls"].append(
                F.binary_cross_entropy_with_logits(self.obj(g)[0, 0], torch.tensor(1.0 if has else 0.0)))
            parts["rpn_reg"].append((self.box(g)[0, :2] - box[:2]).abs().mean())
        out = {k: torch.stack(v).mean() for k, v in parts.items()}
        if self.calls in self.nan_calls:
            out["roi_reg"] = out["roi_reg"] * float("nan")
        return out


def toy_config(**train: Any) -> Config:
    """A config whose train section suits the toy set (model section unused by the stand-in)."""
    cfg = preset("tiny-shapes")
    values = {
        "model.num_classes": 3,
        "train.images_per_batch": 2,
        "train.max_iter": 10,
        "train.lr": 0.05,
        "train.lr_steps": [8],
        "train.warmup_iters": 2,
        "train.checkpoint_period": 4,
        "train.log_period": 2,
        "train.num_workers": 0,
        "train.grad_clip_norm": None,
        "train.vflip_prob": 0.0,  # the preset's upside-down flips and transposes: off for the toy
        "train.transpose_prob": 0.0,
    }
    values.update({f"train.{k}": v for k, v in train.items()})
    return override(cfg, values)


def real_config(**train: Any) -> Config:
    """The real detector shrunk to run in milliseconds on 48-64 px images."""
    cfg = toy_config(**train)
    return override(cfg, {
        "model.backbone.width": 8,
        "model.anchors.sizes": [16, 32],
        "model.rpn.conv_channels": 16,
        "model.rpn.pre_nms_top_n_train": 200,
        "model.rpn.post_nms_top_n_train": 32,
        "model.rpn.batch_size_per_image": 64,
        "model.roi_head.representation_size": 32,
        "model.roi_head.batch_size_per_image": 32,
        "model.input.min_size_train": [48, 64],
        "model.input.max_size_train": 96,
        "model.input.min_size_test": 48,
        "model.input.max_size_test": 96,
    })


def state_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> list[str]:
    """Keys whose tensors differ (empty: bit-identical)."""
    assert a.keys() == b.keys()
    return [k for k in a if not torch.equal(a[k], b[k])]


# --------------------------------------------------------------------------- tests


def test_smoke_outputs_and_learning(tmp_path: Path) -> None:
    cfg = toy_config(max_iter=30, log_period=1, checkpoint_period=10, lr_steps=[25], hflip_prob=0.0)
    torch.manual_seed(0)
    model = TinyDetector(stochastic=False)
    out = train_joint(cfg, ToyDataset(4), out_dir=tmp_path, classes=CLASSES, model=model, progress=False)
    for name in ("last.pt", "model_final.pt", "log.jsonl", "train.log", "config.json"):
        assert (tmp_path / name).is_file(), name
    assert (tmp_path / "tb").is_dir() and any((tmp_path / "tb").iterdir())
    records = [json.loads(l) for l in (tmp_path / "log.jsonl").read_text().splitlines()]
    losses = [r["losses"]["total"] for r in records if "losses" in r]
    assert len(losses) == 30
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])
    assert {"iteration", "lr", "time", "images_per_s", "eta_s"} <= records[0].keys()
    assert out["iteration"] == 30 and out["skipped_steps"] == 0
    ckpt = load_checkpoint(tmp_path / "last.pt")
    assert ckpt["iteration"] == 30 and ckpt["classes"] == list(CLASSES)
    final = load_checkpoint(tmp_path / "model_final.pt")
    assert "optimizer" not in final
    assert state_equal(final["model"], model.state_dict()) == []
    assert not list(tmp_path.glob(".*.tmp"))


def test_ema_weights_are_exported_and_resumed(tmp_path: Path) -> None:
    # decay 0.5 over 3 steps: the first update copies w1, then 0.5 ema + 0.5 w -> .25 w1 + .25 w2 + .5 w3
    cfg = toy_config(max_iter=3, checkpoint_period=2, hflip_prob=0.0, ema_decay=0.5)
    torch.manual_seed(0)
    model = TinyDetector(stochastic=False)
    seen: list[dict[str, torch.Tensor]] = []
    inner = model.loss

    def recording_loss(*args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        seen.append({k: v.clone() for k, v in model.state_dict().items()})  # weights before the step
        return inner(*args, **kwargs)

    model.loss = recording_loss  # type: ignore[method-assign]
    train_joint(cfg, ToyDataset(4), out_dir=tmp_path / "a", classes=CLASSES, model=model, progress=False)
    w1, w2, w3 = seen[1], seen[2], model.state_dict()
    final = load_checkpoint(tmp_path / "a" / "model_final.pt")["model"]
    for k in w3:
        if w3[k].is_floating_point():
            torch.testing.assert_close(final[k], 0.25 * w1[k] + 0.25 * w2[k] + 0.5 * w3[k])
    assert not torch.equal(final["cls.weight"], w3["cls.weight"])
    assert load_checkpoint(tmp_path / "a" / "last.pt")["ema"] is not None
    # stop at 2, resume to 3: the same average as the uninterrupted run
    torch.manual_seed(0)
    train_joint(toy_config(max_iter=2, checkpoint_period=2, hflip_prob=0.0, ema_decay=0.5), ToyDataset(4),
          out_dir=tmp_path / "b", classes=CLASSES, model=TinyDetector(stochastic=False), progress=False)
    train_joint(cfg, ToyDataset(4), out_dir=tmp_path / "b", classes=CLASSES, model=TinyDetector(stochastic=False),
          resume="auto", progress=False)
    resumed = load_checkpoint(tmp_path / "b" / "model_final.pt")["model"]
    assert state_equal(resumed, final) == []
    # a checkpoint without an average cannot resume a run that keeps one
    train_joint(toy_config(max_iter=2), ToyDataset(4), out_dir=tmp_path / "c", classes=CLASSES,
          model=TinyDetector(), progress=False)
    with pytest.raises(CheckpointError, match="EMA"):
        train_joint(toy_config(max_iter=3, ema_decay=0.5), ToyDataset(4), out_dir=tmp_path / "c",
              classes=CLASSES, model=TinyDetector(), resume="auto", allow_config_changes=["train.ema_decay"],
              progress=False)
    with pytest.raises(ConfigError, match="ema_decay"):
        toy_config(ema_decay=1.0)


def test_nan_guard_skips_then_diverges(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cfg = toy_config(max_iter=20, checkpoint_period=4, max_bad_steps=3)
    # one isolated bad step (3) is skipped and training goes on; 6, 7, 8 in a row -> diverged
    model = TinyDetector(nan_calls=(3, 6, 7, 8))
    with caplog.at_level("WARNING", logger="fasterrcnn.train"):  # logged, not Python warnings
        with pytest.raises(TrainingDiverged) as info:
            train_joint(cfg, ToyDataset(4), out_dir=tmp_path, classes=CLASSES, model=model, progress=False)
    messages = [r.getMessage() for r in caplog.records if "non-finite" in r.getMessage()]
    assert len(messages) == 4
    assert messages[0].startswith("iteration 3:") and "roi_reg=nan" in messages[0]
    assert "rpn_cls=" in messages[0]
    msg = str(info.value)
    assert "learning rate" in msg and "6..8" in msg and "last.pt" in msg
    assert info.value.iteration == 8
    ckpt = load_checkpoint(tmp_path / "last.pt")
    assert ckpt["iteration"] == 4  # the iteration-8 checkpoint was never written
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())
    assert not (tmp_path / "model_final.pt").exists()
    assert "WARNING" in (tmp_path / "train.log").read_text()


def test_nan_weights_never_checkpointed(tmp_path: Path) -> None:
    class Poison(TinyDetector):
        """Finite losses, but a (loss-unrelated) weight turns inf at iteration 3."""

        def __init__(self) -> None:
            super().__init__()
            self.spare = nn.Parameter(torch.zeros(2))

        def loss(self, images, targets):
            if self.calls == 2:
                with torch.no_grad():
                    self.spare[0] = float("inf")
            return super().loss(images, targets)

    cfg = toy_config(max_iter=8, checkpoint_period=4)
    with pytest.raises(TrainingDiverged, match="non-finite"):
        train_joint(cfg, ToyDataset(4), out_dir=tmp_path, classes=CLASSES, model=Poison(), progress=False)
    assert not (tmp_path / "last.pt").exists()


def test_amp_checks_and_cpu_bf16(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="fp16.*CUDA"):
        train_joint(toy_config(amp="fp16"), ToyDataset(4), out_dir=tmp_path, classes=CLASSES,
              model=TinyDetector(), progress=False)
    out = train_joint(toy_config(amp="bf16", max_iter=3), ToyDataset(4), out_dir=tmp_path / "bf16",
                classes=CLASSES, model=TinyDetector(), progress=False)
    assert out["iteration"] == 3 and out["skipped_steps"] == 0


def test_eval_period_metrics_and_rng_neutrality(tmp_path: Path) -> None:
    calls: list[bool] = []

    def val_fn(model: nn.Module) -> dict[str, float]:
        calls.append(model.training)
        torch.rand(100)  # evaluation randomness must not leak into training
        np.random.rand(3)
        random.random()
        return {"mAP": 0.25 * len(calls), "note": "x"}

    cfg = toy_config(max_iter=6, eval_period=2, checkpoint_period=100)
    torch.manual_seed(0)
    m1 = TinyDetector()
    out = train_joint(cfg, ToyDataset(4), out_dir=tmp_path / "a", classes=CLASSES, model=m1, val_fn=val_fn,
                progress=False)
    assert calls == [False, False, False]  # at 2, 4 and the end (6), in eval mode
    assert m1.training
    assert out["metrics"]["mAP"] == 0.75
    vals = [json.loads(l) for l in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in vals if "val" in r] == [2, 4, 6]
    torch.manual_seed(0)
    m2 = TinyDetector()
    train_joint(cfg, ToyDataset(4), out_dir=tmp_path / "b", classes=CLASSES, model=m2, progress=False)
    assert state_equal(m1.state_dict(), m2.state_dict()) == []


def test_resume_checks(tmp_path: Path) -> None:
    cfg = toy_config(max_iter=4)
    train_joint(cfg, ToyDataset(4), out_dir=tmp_path, classes=CLASSES, model=TinyDetector(), progress=False)
    with pytest.raises(CheckpointError) as info:
        train_joint(toy_config(max_iter=6, lr=0.1, images_per_batch=1), ToyDataset(4), out_dir=tmp_path,
              classes=CLASSES, model=TinyDetector(), resume="auto", progress=False)
    assert "train.lr" in str(info.value) and "train.images_per_batch" in str(info.value)
    assert "train.max_iter" not in str(info.value)
    with pytest.raises(CheckpointError, match="weights only"):
        train_joint(cfg, ToyDataset(4), out_dir=tmp_path / "x", classes=CLASSES, model=TinyDetector(),
              resume=tmp_path / "model_final.pt", progress=False)
    with pytest.raises(CheckpointError, match="not found"):
        train_joint(cfg, ToyDataset(4), out_dir=tmp_path / "y", classes=CLASSES, model=TinyDetector(),
              resume=tmp_path / "nope.pt", progress=False)
    # extending a run (max_iter is operational) and lr changes when explicitly allowed
    out = train_joint(toy_config(max_iter=6, lr=0.01), ToyDataset(4), out_dir=tmp_path, classes=CLASSES,
                model=TinyDetector(), resume="auto", allow_config_changes=["train.lr"], progress=False)
    assert out["start_iteration"] == 4 and out["iteration"] == 6
    assert "config change on resume: train.lr" in (tmp_path / "train.log").read_text()
    # "auto" without a checkpoint starts afresh
    out = train_joint(cfg, ToyDataset(4), out_dir=tmp_path / "fresh", classes=CLASSES, model=TinyDetector(),
                resume="auto", progress=False)
    assert out["start_iteration"] == 0


def test_deterministic_switch_is_restored(tmp_path: Path) -> None:
    before = torch.are_deterministic_algorithms_enabled()
    train_joint(toy_config(max_iter=1), ToyDataset(4), out_dir=tmp_path, classes=CLASSES,
          model=TinyDetector(), deterministic=True, progress=False)
    assert torch.are_deterministic_algorithms_enabled() == before


def test_adamw_run_resumes_like_uninterrupted(tmp_path: Path) -> None:
    cfg = toy_config(max_iter=3, checkpoint_period=2, hflip_prob=0.0, optimizer="adamw", lr=0.01)
    torch.manual_seed(0)
    train_joint(cfg, ToyDataset(4), out_dir=tmp_path / "a", classes=CLASSES,
          model=TinyDetector(stochastic=False), progress=False)
    torch.manual_seed(0)
    train_joint(override(cfg, {"train.max_iter": 2}), ToyDataset(4), out_dir=tmp_path / "b",
          classes=CLASSES, model=TinyDetector(stochastic=False), progress=False)
    assert "exp_avg" in str(load_checkpoint(tmp_path / "b" / "last.pt")["optimizer"]["state"])
    train_joint(cfg, ToyDataset(4), out_dir=tmp_path / "b", classes=CLASSES,
          model=TinyDetector(stochastic=False), resume="auto", progress=False)
    a = load_checkpoint(tmp_path / "a" / "model_final.pt")["model"]
    b = load_checkpoint(tmp_path / "b" / "model_final.pt")["model"]
    assert state_equal(a, b) == []


def test_real_model_trains(tmp_path: Path) -> None:
    pytest.importorskip("fasterrcnn.modeling.faster_rcnn")
    from fasterrcnn.engine.checkpoint import load_model

    cfg = real_config(max_iter=3, log_period=1)
    out = train_joint(cfg, ToyDataset(4), out_dir=tmp_path, classes=CLASSES, progress=False)
    assert out["iteration"] == 3
    assert all(math.isfinite(v) for v in out["losses"].values())
    assert {"rpn_cls", "rpn_reg", "roi_cls", "roi_reg", "total"} <= out["losses"].keys()
    model, cfg2, classes = load_model(tmp_path / "model_final.pt")
    assert cfg2 == cfg and classes == CLASSES and not model.training
    favour_class(model, label=3)  # three iterations leave scores near uniform: make some count
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        [det] = model.predict([ToyDataset(1)[0][0].float() / 255])  # 48 high, 72 wide
    assert len(det["boxes"]) > 0 and det["labels"].unique().tolist() == [3]
    assert (det["boxes"] >= 0).all() and (det["boxes"][:, [2, 0]] <= 72).all()
    assert (det["boxes"][:, [3, 1]] <= 48).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("amp", ["none", "bf16", "fp16"])
def test_cuda_amp_train_and_resume(tmp_path: Path, amp: str) -> None:
    pytest.importorskip("fasterrcnn.modeling.faster_rcnn")
    if amp == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("no bf16 on this GPU")
    cfg = real_config(amp=amp, max_iter=4, log_period=1, checkpoint_period=2, num_workers=1)
    out = train_joint(cfg, ToyDataset(4), out_dir=tmp_path, classes=CLASSES, device="cuda", progress=False)
    assert out["iteration"] == 4 and out["skipped_steps"] == 0
    assert all(math.isfinite(v) for v in out["losses"].values())
    ckpt = load_checkpoint(tmp_path / "last.pt")
    assert (ckpt["scaler"] is not None) == (amp == "fp16")
    assert all(v.device.type == "cpu" for v in ckpt["model"].values())
    # extend the run by two iterations from the checkpoint (scaler, RNG, sampler restored)
    more = train_joint(override(cfg, {"train.max_iter": 6}), ToyDataset(4),
                 out_dir=tmp_path, classes=CLASSES, device="cuda", resume="auto", progress=False)
    assert more["start_iteration"] == 4 and more["iteration"] == 6
