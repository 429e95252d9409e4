"""4-step alternating training: steps, freezing (incl. BatchNorm), proposal sources, resume."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from fasterrcnn.config import ConfigError, override
from fasterrcnn.engine import alternating
from fasterrcnn.engine.alternating import scaled_lr_steps, step_config, train_alternating
from fasterrcnn.engine.checkpoint import CheckpointError, load_checkpoint, load_model
from fasterrcnn.modeling.faster_rcnn import FasterRCNN
from helpers import favour_class
from test_engine_trainer import CLASSES, ToyDataset, real_config, state_equal

ITERS = [3, 2, 3, 2]


def alt_config(**train: Any):
    values = {"alternating_iters": ITERS, "checkpoint_period": 2, "max_iter": 10, "lr_steps": [8],
              "schedule": "alternating"}
    values.update(train)
    return real_config(**values)


def part(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if k.startswith(prefix)}


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


class Spy:
    """Records each step's start/end weights, the models asked for proposals, and whether the
    backbone's BatchNorm layers were in training mode during the loss."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.steps: list[dict[str, Any]] = []
        self.proposals: list[tuple[int, dict[str, torch.Tensor], list[torch.Tensor], bool]] = []
        self.losses: list[tuple[int, list[torch.Tensor], bool, tuple[str, ...], bool]] = []
        real_train = alternating.train_joint
        real_propose = FasterRCNN.propose
        real_loss = FasterRCNN.loss
        spy = self

        def train(cfg, train_set, **kw):
            step = int(Path(kw["out_dir"]).name[-1])
            entry = {"step": step, "before": snapshot(kw["model"]), "cfg": cfg}
            spy.steps.append(entry)
            out = real_train(cfg, train_set, **kw)
            entry["after"] = snapshot(kw["model"])
            return out

        def propose(self, images, *, training_settings=False):
            images_copy = [i.clone() for i in images]
            spy.proposals.append(
                (spy.steps[-1]["step"], snapshot(self), images_copy, training_settings)
            )
            return real_propose(self, images, training_settings=training_settings)

        def loss(self, images, targets, *, proposals=None, stages=("rpn", "roi")):
            bn_training = any(m.training for m in self.backbone.modules()
                              if isinstance(m, nn.modules.batchnorm._BatchNorm))
            spy.losses.append((spy.steps[-1]["step"], [i.clone() for i in images],
                               proposals is not None, tuple(stages), bn_training))
            return real_loss(self, images, targets, proposals=proposals, stages=stages)

        monkeypatch.setattr(alternating, "train_joint", train)
        monkeypatch.setattr(FasterRCNN, "propose", propose)
        monkeypatch.setattr(FasterRCNN, "loss", loss)

    def step(self, k: int) -> dict[str, Any]:
        (entry,) = [s for s in self.steps if s["step"] == k]
        return entry


def test_scaled_lr_steps_and_step_config() -> None:
    assert scaled_lr_steps((50000,), 70000, 80000) == (57143,)
    assert scaled_lr_steps((50000,), 70000, 40000) == (28571,)
    assert scaled_lr_steps((), 0, 10) == ()
    with pytest.raises(ConfigError, match="max_iter"):
        scaled_lr_steps((5,), 0, 10)
    cfg = alt_config()
    s3 = step_config(cfg, 3)
    assert s3.train.max_iter == 3 and s3.train.lr_steps == (2,) and s3.train.lr == cfg.train.lr
    assert s3.model == cfg.model
    with pytest.raises(ConfigError, match="alternating_iters"):
        train_alternating(override(cfg, {"train.alternating_iters": [1, 2, 3, -1]}), ToyDataset(2),
                          out_dir="unused", classes=CLASSES, progress=False)


def test_four_steps_freeze_and_unify(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spy = Spy(monkeypatch)
    metrics_seen: list[bool] = []

    def val_fn(model: nn.Module) -> dict[str, float]:
        metrics_seen.append(model.training)
        return {"mAP": 0.5}

    cfg = alt_config()
    out = train_alternating(cfg, ToyDataset(4), out_dir=tmp_path, classes=CLASSES, val_fn=val_fn,
                            progress=False)
    for k in range(1, 5):
        for name in ("last.pt", "model_final.pt", "log.jsonl"):
            assert (tmp_path / f"step{k}" / name).is_file(), (k, name)
        assert load_checkpoint(tmp_path / f"step{k}" / "last.pt")["iteration"] == ITERS[k - 1]
    assert [s["step"] for s in spy.steps] == [1, 2, 3, 4]
    assert out["iteration"] == sum(ITERS) and out["metrics"] == {"mAP": 0.5}
    assert metrics_seen == [False]
    assert [s["step"] for s in out["steps"]] == [1, 2, 3, 4]
    assert not any(s["reused"] for s in out["steps"])
    assert spy.step(1)["cfg"].train.lr_steps == (2,) and spy.step(2)["cfg"].train.lr_steps == (2,)

    s1, s2, s3, s4 = (spy.step(k) for k in range(1, 5))
    # step 1 trains RPN (+ backbone), step 2 RoI head (+ backbone), both from the same fresh init
    assert state_equal(part(s1["before"], "backbone."), part(s2["before"], "backbone.")) == []
    assert state_equal(part(s1["before"], "roi_heads."), part(s1["after"], "roi_heads.")) == []
    assert state_equal(part(s1["before"], "rpn."), part(s1["after"], "rpn."))
    assert state_equal(part(s2["before"], "rpn."), part(s2["after"], "rpn.")) == []
    assert state_equal(part(s2["before"], "roi_heads."), part(s2["after"], "roi_heads."))
    assert state_equal(part(s2["before"], "backbone."), part(s2["after"], "backbone."))
    # step 3 starts from backbone/RoI head of step 2 and the RPN of step 1; only the RPN moves
    assert state_equal(part(s3["before"], "backbone."), part(s2["after"], "backbone.")) == []
    assert state_equal(part(s3["before"], "roi_heads."), part(s2["after"], "roi_heads.")) == []
    assert state_equal(part(s3["before"], "rpn."), part(s1["after"], "rpn.")) == []
    assert state_equal(part(s3["before"], "backbone."), part(s3["after"], "backbone.")) == []
    assert state_equal(part(s3["before"], "roi_heads."), part(s3["after"], "roi_heads.")) == []
    assert state_equal(part(s3["before"], "rpn."), part(s3["after"], "rpn."))
    # step 4 continues from step 3; only the RoI head moves
    assert state_equal(s4["before"], s3["after"]) == []
    assert state_equal(part(s4["before"], "backbone."), part(s4["after"], "backbone.")) == []
    assert state_equal(part(s4["before"], "rpn."), part(s4["after"], "rpn.")) == []
    assert state_equal(part(s4["before"], "roi_heads."), part(s4["after"], "roi_heads."))

    # BatchNorm of the frozen backbone in eval mode (steps 3, 4), training mode in steps 1, 2
    bn = {k: {b for (s, _, _, _, b) in spy.losses if s == k} for k in range(1, 5)}
    assert bn == {1: {True}, 2: {True}, 3: {False}, 4: {False}}
    stages = {k: {st for (s, _, _, st, _) in spy.losses if s == k} for k in range(1, 5)}
    assert stages == {1: {("rpn",)}, 2: {("roi",)}, 3: {("rpn",)}, 4: {("roi",)}}

    # proposals of steps 2 / 4: the frozen step-1 / step-3 networks, on the loss's own images
    step1 = load_checkpoint(tmp_path / "step1" / "model_final.pt")["model"]
    step3 = load_checkpoint(tmp_path / "step3" / "model_final.pt")["model"]
    for k, source in ((2, step1), (4, step3)):
        calls = [p for p in spy.proposals if p[0] == k]
        losses = [l for l in spy.losses if l[0] == k]
        assert len(calls) == len(losses) == ITERS[k - 1]
        for call, loss in zip(calls, losses):
            (_, weights, images, training_settings), (_, loss_images, given, _, _) = call, loss
            assert training_settings and given
            assert state_equal(weights, source) == []
            assert all(torch.equal(a, b) for a, b in zip(images, loss_images))
    assert not [p for p in spy.proposals if p[0] in (1, 3)]
    assert not [l for l in spy.losses if l[0] in (1, 3) and l[2]]

    # the unified network: backbone of step 2, RPN of step 3, RoI head of step 4
    final = load_checkpoint(tmp_path / "model_final.pt")
    assert "optimizer" not in final and final["config"]["train"]["schedule"] == "alternating"
    fw = final["model"]
    assert state_equal(part(fw, "backbone."), part(s2["after"], "backbone.")) == []
    assert state_equal(part(fw, "rpn."), part(s3["after"], "rpn.")) == []
    assert state_equal(part(fw, "roi_heads."), part(s4["after"], "roi_heads.")) == []
    model, cfg2, classes = load_model(tmp_path / "model_final.pt")
    assert cfg2 == cfg and classes == CLASSES
    favour_class(model, label=2)  # a few iterations leave scores near uniform: make some count
    [det] = model.predict([ToyDataset(1)[0][0].float() / 255])  # 48 high, 72 wide
    assert len(det["boxes"]) > 0 and det["labels"].unique().tolist() == [2]
    assert (det["boxes"] >= 0).all() and (det["boxes"][:, [2, 0]] <= 72).all()
    assert (det["boxes"][:, [3, 1]] <= 48).all()


def test_resume_skips_finished_steps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = alt_config()
    reference = train_alternating(cfg, ToyDataset(4), out_dir=tmp_path / "ref", classes=CLASSES,
                                  progress=False, deterministic=True)
    ref = load_checkpoint(reference["final_weights"])["model"]

    # interrupted in step 3 after its iteration-2 checkpoint (3 + 2 + 2 loss calls, then boom)
    calls = {"n": 0}
    real_loss = FasterRCNN.loss

    def dying_loss(self, *args, **kw):
        calls["n"] += 1
        if calls["n"] == 8:
            raise KeyboardInterrupt
        return real_loss(self, *args, **kw)

    run = tmp_path / "run"
    with monkeypatch.context() as m:
        m.setattr(FasterRCNN, "loss", dying_loss)
        with pytest.raises(KeyboardInterrupt):
            train_alternating(cfg, ToyDataset(4), out_dir=run, classes=CLASSES, progress=False,
                              deterministic=True)
    assert (run / "step2" / "model_final.pt").is_file()
    assert not (run / "step3" / "model_final.pt").exists()
    assert load_checkpoint(run / "step3" / "last.pt")["iteration"] == 2

    with pytest.raises(CheckpointError, match="output directory"):
        train_alternating(cfg, ToyDataset(4), out_dir=run, classes=CLASSES, progress=False,
                          resume=tmp_path / "elsewhere.pt")
    spy = Spy(monkeypatch)
    out = train_alternating(cfg, ToyDataset(4), out_dir=run, classes=CLASSES, progress=False,
                            resume=run / "step3" / "last.pt", deterministic=True)
    assert [s["step"] for s in spy.steps] == [3, 4]
    assert [s["reused"] for s in out["steps"]] == [True, True, False, False]
    assert out["steps"][2]["start_iteration"] == 2 and out["iteration"] == sum(ITERS)
    # the resumed run ends bit-identical to the uninterrupted one
    assert state_equal(load_checkpoint(run / "model_final.pt")["model"], ref) == []

    # everything finished: nothing trains, the final export is rewritten and evaluated
    (run / "model_final.pt").unlink()
    out = train_alternating(cfg, ToyDataset(4), out_dir=run, classes=CLASSES, progress=False,
                            resume="auto", val_fn=lambda model: {"mAP": float(model.training)})
    assert [s["step"] for s in spy.steps] == [3, 4]
    assert all(s["reused"] for s in out["steps"]) and out["metrics"] == {"mAP": 0.0}
    assert state_equal(load_checkpoint(run / "model_final.pt")["model"], ref) == []

    # a fresh (non-resumed) run retrains from step 1 and drops the stale later results first
    short = alt_config(alternating_iters=[1, 1, 1, 1])
    with monkeypatch.context() as m:
        m.setattr(FasterRCNN, "loss", dying_loss)
        calls["n"] = 6  # dies at the 2nd loss call: inside step 2
        with pytest.raises(KeyboardInterrupt):
            train_alternating(short, ToyDataset(4), out_dir=run, classes=CLASSES, progress=False)
    assert (run / "step1" / "model_final.pt").is_file()
    for k in (2, 3, 4):
        assert not (run / f"step{k}" / "model_final.pt").exists()
    assert not (run / "model_final.pt").exists()


def test_pretrained_mobilenet_v2_runs_all_four_steps(tmp_path: Path) -> None:
    """Steps 3 and 4 rebuild the model from the earlier steps' weights without reading the ImageNet
    file; they must still build the pretrained architecture (FrozenBatchNorm2d), or the saved
    weights do not fit (a real failure of alternating training from ImageNet MobileNetV2)."""
    import torchvision

    torch.manual_seed(0)
    weights = tmp_path / "mobilenet_v2_imagenet.pth"
    torch.save(torchvision.models.mobilenet_v2().state_dict(), weights)
    cfg = override(alt_config(alternating_iters=[1, 1, 1, 1], max_iter=4, lr_steps=[]), {
        "model.backbone.name": "mobilenet_v2", "model.backbone.weights": str(weights),
        "model.backbone.stride": 16, "model.backbone.frozen_stages": 2,
    })
    summary = train_alternating(cfg, ToyDataset(4), out_dir=tmp_path / "run", classes=CLASSES,
                                progress=False)
    model, _, _ = load_model(summary["final_weights"])
    assert isinstance(model.backbone.features[0][1], torchvision.ops.FrozenBatchNorm2d)
    assert [s["step"] for s in summary["steps"]] == [1, 2, 3, 4]
