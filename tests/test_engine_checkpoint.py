"""Checkpoints: atomic writes, clear errors for bad files, weights_only round trip, config checks."""

from __future__ import annotations

import os
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from fasterrcnn.config import to_dict
from fasterrcnn.engine.checkpoint import (
    FORMAT,
    VERSION,
    CheckpointError,
    check_compatible,
    check_config_unedited,
    export_weights,
    load_checkpoint,
    load_state_strict,
    remove_stale_temp_files,
    save_checkpoint,
)
from fasterrcnn.engine.checkpoint_config import config_differences, covered
from fasterrcnn.engine.rng_state import capture_rng_state, restore_rng_state
from fasterrcnn.engine.lr_schedule import StepWarmupScheduler
from test_engine_trainer import CLASSES, TinyDetector, toy_config


def full_checkpoint(iteration: int = 7) -> dict:
    cfg = toy_config()
    model = TinyDetector()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model.cls.weight.grad = torch.ones_like(model.cls.weight)
    opt.step()  # momentum buffers exist
    sched = StepWarmupScheduler.from_config(opt, cfg.train, iteration=iteration)
    return {
        "format": FORMAT, "version": VERSION, "config": to_dict(cfg), "classes": list(CLASSES),
        "model": model.state_dict(), "iteration": iteration, "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(), "scaler": None,
        "sampler": {"epoch": 1, "position": 2}, "rng": capture_rng_state(), "rng_per_rank": None,
    }


def test_round_trip_weights_only_with_rng(tmp_path: Path) -> None:
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    np.random.randn()  # exercise numpy's cached-gaussian state
    ckpt = full_checkpoint()
    expected = (torch.rand(4), np.random.rand(4), [random.random() for _ in range(4)], np.random.randn())
    path = save_checkpoint(tmp_path / "last.pt", ckpt)
    loaded = load_checkpoint(path)  # weights_only=True inside
    assert loaded["iteration"] == 7 and loaded["sampler"] == {"epoch": 1, "position": 2}
    for k, v in ckpt["model"].items():
        assert torch.equal(loaded["model"][k], v)
    assert any(s["momentum_buffer"] is not None for s in loaded["optimizer"]["state"].values())
    torch.manual_seed(99)
    np.random.seed(99)
    random.seed(99)
    restore_rng_state(loaded["rng"])
    got = (torch.rand(4), np.random.rand(4), [random.random() for _ in range(4)], np.random.randn())
    assert torch.equal(got[0], expected[0]) and np.array_equal(got[1], expected[1])
    assert got[2] == expected[2] and got[3] == expected[3]


def test_atomic_write_keeps_old_file_on_crash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "last.pt"
    save_checkpoint(path, full_checkpoint(4))
    before = path.read_bytes()
    real_save = torch.save

    def crashing_save(obj, f, *args, **kwargs):  # write part of the data, then die
        real_save(obj, f, *args, **kwargs)
        f.truncate(100)
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(torch, "save", crashing_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, full_checkpoint(8))
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert load_checkpoint(path)["iteration"] == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_stale_temp_files_are_removed(tmp_path: Path) -> None:
    (tmp_path / ".last.pt.123.abcd.tmp").write_bytes(b"partial")
    (tmp_path / "keep.txt").write_text("x")
    removed = remove_stale_temp_files(tmp_path)
    assert [p.name for p in removed] == [".last.pt.123.abcd.tmp"]
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_bad_files_raise_checkpoint_error_naming_the_path(tmp_path: Path) -> None:
    good = save_checkpoint(tmp_path / "good.pt", full_checkpoint())
    data = good.read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(data[: len(data) // 2])
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(os.urandom(2048))
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    plain = tmp_path / "plain.pt"
    torch.save(TinyDetector().state_dict(), plain)
    evil = tmp_path / "evil.pt"
    with open(evil, "wb") as f:
        pickle.dump({"format": FORMAT, "obj": Path("x")}, f, protocol=2)  # not weights_only-safe
    newer = tmp_path / "newer.pt"
    torch.save({**full_checkpoint(), "version": VERSION + 1}, newer)
    for path, pattern in [
        (truncated, "cannot read.*incomplete"), (garbage, "not a fasterrcnn checkpoint"),
        (empty, "not a fasterrcnn checkpoint: the file is empty"),
        (plain, "not a fasterrcnn checkpoint"), (evil, "not a fasterrcnn checkpoint"),
        (newer, "version"),
        (tmp_path / "missing.pt", "not found"), (tmp_path, "not a file"),
    ]:
        with pytest.raises(CheckpointError, match=pattern) as info:
            load_checkpoint(path)
        assert str(path) in str(info.value)
        assert isinstance(info.value, ValueError)
        assert "weights_only" not in str(info.value)  # never the advice to load unsafely


def test_edited_config_is_found_when_weights_still_fit(tmp_path: Path, caplog) -> None:
    path = save_checkpoint(tmp_path / "a.pt", full_checkpoint())
    ckpt = load_checkpoint(path)
    ckpt["config"]["model"]["anchors"]["sizes"] = [7, 9, 11]
    edited = tmp_path / "edited.pt"
    torch.save(ckpt, edited)  # the written copy of the config travels along
    with pytest.raises(CheckpointError, match=r"(?s)edited after it was written.*model.anchors.sizes"):
        check_config_unedited(load_checkpoint(edited), edited)
    ckpt = load_checkpoint(path)
    ckpt["config"]["train"]["max_iter"] = 5  # an operational key: allowed, and logged
    torch.save(ckpt, edited)
    with caplog.at_level("WARNING", logger="fasterrcnn"):
        check_config_unedited(load_checkpoint(edited), edited)
    assert "train.max_iter: written 10, now 5" in caplog.text
    ckpt["config_as_written"] = "{not json"
    with pytest.raises(CheckpointError, match="'config_as_written' entry is damaged"):
        check_config_unedited(ckpt, edited)
    del ckpt["config_as_written"]  # written before the copy was kept: nothing to compare with
    ckpt["config"]["model"]["anchors"]["sizes"] = [7, 9, 11]
    check_config_unedited(ckpt, edited)


def test_config_differences_on_dotted_keys() -> None:
    a = {"model": {"anchors": {"sizes": (8, 16)}, "num_classes": 2}, "train": {"lr": 0.1}}
    b = {"model": {"anchors": {"sizes": [8, 16]}, "num_classes": 3}, "train": {}, "extra": 1}
    assert config_differences(a, b) == {"extra": (None, 1), "model.num_classes": (2, 3),
                                        "train.lr": (0.1, None)}
    assert config_differences(a, a) == {}
    assert covered("train.lr", ["train"]) and covered("train.lr", ["train.lr"])
    assert not covered("train.lr_steps", ["train.lr"]) and not covered("train", ["train.lr"])


def test_check_compatible_lists_differences(tmp_path: Path) -> None:
    ckpt = full_checkpoint()
    assert check_compatible(ckpt, toy_config()) == []
    tolerated = check_compatible(ckpt, toy_config(max_iter=99, num_workers=3))
    assert any(t.startswith("train.max_iter") for t in tolerated) and len(tolerated) == 2
    with pytest.raises(CheckpointError) as info:
        check_compatible(ckpt, toy_config(lr=1.0, lr_steps=[1, 2]), path=tmp_path / "c.pt")
    msg = str(info.value)
    assert "train.lr: checkpoint=0.05, now=1.0" in msg and "train.lr_steps" in msg
    assert str(tmp_path / "c.pt") in msg
    assert check_compatible(ckpt, toy_config(lr=1.0), allow=["train.lr"]) == ["train.lr: 0.05 -> 1.0"]


def test_check_compatible_fills_fields_added_since(tmp_path: Path) -> None:
    """A checkpoint written before a config field existed resumes: the field takes its default."""
    ckpt = full_checkpoint()
    del ckpt["config"]["train"]["vflip_prob"], ckpt["config"]["train"]["transpose_prob"]
    assert check_compatible(ckpt, toy_config()) == []
    with pytest.raises(CheckpointError, match="train.transpose_prob"):
        check_compatible(ckpt, toy_config(transpose_prob=0.5))
    del ckpt["config"]["model"]["test_aug"]["score_fusion"]  # test-time only: tolerated, reported
    assert check_compatible(ckpt, toy_config()) == ["model.test_aug.score_fusion: 'max' -> 'agreement'"]
    ckpt["config"]["train"]["future_field"] = 1  # unknown to this version: compared as written
    with pytest.raises(CheckpointError, match="train.future_field"):
        check_compatible(ckpt, toy_config())


def test_export_and_strict_loading(tmp_path: Path) -> None:
    model = TinyDetector()
    path = export_weights(tmp_path / "model_final.pt", model=model, cfg=toy_config(), classes=CLASSES)
    light = load_checkpoint(path)
    assert set(light) == {"format", "version", "config", "classes", "model", "config_as_written"}
    other = TinyDetector()
    load_state_strict(other, light["model"], path)
    assert all(torch.equal(a, b) for a, b in zip(other.state_dict().values(), model.state_dict().values()))
    with pytest.raises(CheckpointError, match="do not fit") as info:
        load_state_strict(TinyDetector(num_classes=5), light["model"], path)
    assert "shape mismatch" in str(info.value) and str(path) in str(info.value)
    bad = dict(light["model"])
    bad.pop("conv.weight")
    bad["extra"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match="missing 1 key.*unexpected 1 key"):
        load_state_strict(TinyDetector(), bad)


def test_load_model_real(tmp_path: Path) -> None:
    pytest.importorskip("fasterrcnn.modeling.faster_rcnn")
    from fasterrcnn.config import override
    from fasterrcnn.engine.checkpoint import load_model
    from fasterrcnn.modeling.builder import build_model
    from test_engine_trainer import real_config

    cfg = real_config()
    model = build_model(cfg.model)
    path = export_weights(tmp_path / "w.pt", model=model, cfg=cfg, classes=CLASSES)
    loaded, cfg2, classes = load_model(path)
    assert cfg2 == cfg and classes == CLASSES
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))
    # weights from another config do not fit: clear error
    other = override(cfg, {"model.roi_head.representation_size": 16})
    ckpt = load_checkpoint(path)
    save_checkpoint(tmp_path / "mixed.pt", {**ckpt, "config": to_dict(other)})
    with pytest.raises(CheckpointError, match="do not fit"):
        load_model(tmp_path / "mixed.pt")
    save_checkpoint(tmp_path / "classes.pt", {**ckpt, "classes": ["a"]})
    with pytest.raises(CheckpointError, match="classes"):
        load_model(tmp_path / "classes.pt")
    bad_cfg = to_dict(cfg)
    bad_cfg["train"]["no_such_key"] = 1
    save_checkpoint(tmp_path / "badcfg.pt", {**ckpt, "config": bad_cfg})
    with pytest.raises(CheckpointError, match="no_such_key"):
        load_model(tmp_path / "badcfg.pt")
