"""Tests of the config: presets, overrides from strings, unknown keys and bad choices, old files."""

from __future__ import annotations

import pytest

from fasterrcnn.config import (
    Config, ConfigError, from_dict, override, parse_overrides, to_dict,
)
from fasterrcnn.presets import PRESETS, preset


def test_paper_defaults_for_the_new_options():
    cfg = preset("vgg16-voc07")
    assert cfg.model.rpn.positive_weighting == "anchor"
    assert cfg.model.roi_head.positive_weighting == "roi"
    assert cfg.model.anchors.offset == 0.5 and cfg.model.roi_head.aligned is True
    assert cfg.model.roi_head.vote_iou == 0.0 and cfg.model.roi_head.hard_mining is False
    assert cfg.model.test_aug.min_sizes == () and cfg.model.test_aug.hflip is False


def test_override_from_command_line_strings():
    cfg = override(preset("tiny-shapes"), parse_overrides([
        "model.roi_head.aligned=true", "model.anchors.offset=0.5",
        "model.rpn.positive_weighting=anchor", "train.lr=0.01",
    ]))
    assert cfg.model.roi_head.aligned is True and cfg.model.anchors.offset == 0.5
    assert cfg.model.rpn.positive_weighting == "anchor" and cfg.train.lr == 0.01
    cfg = override(preset("tiny-shapes"), parse_overrides([
        "model.test_aug.min_sizes=288, 336,384", "model.input.min_size_train=256,288",
        "model.anchors.sizes=16,22.6", "model.test_aug.hflip=yes",
    ]))
    assert cfg.model.test_aug.min_sizes == (288, 336, 384) and cfg.model.test_aug.hflip is True
    assert cfg.model.input.min_size_train == (256, 288) and cfg.model.anchors.sizes == (16.0, 22.6)


@pytest.mark.parametrize("key,value,match", [
    ("model.rpn.positive_weighting", "boxes", "rpn.positive_weighting"),
    ("model.roi_head.positive_weighting", "anchor", "roi_head.positive_weighting"),
    ("model.roi_head.aligned", "maybe", "expected a boolean"),
    ("model.rpn.no_such_key", "1", "unknown config key"),
    ("model.roi_head.vote_iou", 1.5, "vote_iou must be in"),
    ("model.roi_head.box_loss", "iou", "box_loss must be one of"),
    ("model.channels_last", "sometimes", "channels_last must be one of"),
    ("model.roi_head.hard_mining_nms", 0.0, "hard_mining_nms must be in"),
    ("model.roi_head.context_scales", [1.5, -1], "context_scales must be positive"),
    ("model.test_aug.min_sizes", [288, -1], "min_sizes must be positive"),
    ("model.test_aug.min_sizes", ["big"], "min_sizes must be integers"),
    ("model.backbone.fpn_norm", "gn", "fpn_norm must be one of"),
    ("model.rpn.conv_depth", 0, "conv_depth must be >= 1"),
    ("model.roi_head.conv_layers", [256, 0], "conv_layers must be positive"),
    ("model.roi_head.fc_layers", 0, "fc_layers must be >= 1"),
])
def test_bad_values_raise_config_errors(key, value, match):
    with pytest.raises(ConfigError, match=match):
        override(preset("tiny-shapes"), {key: value})


def test_round_trip_and_files_written_before_a_field_existed():
    for name in PRESETS:
        cfg = preset(name)
        assert from_dict(Config, to_dict(cfg)) == cfg
    old = to_dict(preset("tiny-shapes"))
    del old["model"]["rpn"]["positive_weighting"], old["model"]["roi_head"]["aligned"]
    cfg = from_dict(Config, old)  # a checkpoint's config from before these fields: paper values
    assert cfg.model.rpn.positive_weighting == "anchor" and cfg.model.roi_head.aligned is True


def test_fpn_norm_needs_a_pyramid():
    from fasterrcnn.modeling.builder import build_model

    with pytest.raises(ConfigError, match="fpn_norm='bn' needs a feature pyramid"):
        build_model(override(preset("tiny-shapes"), {"model.backbone.fpn_norm": "bn"}).model)


def test_channels_last_reads_older_booleans_and_names_its_modes():
    """model.channels_last was a boolean: configs written then still load (true -> "always")."""
    base = to_dict(preset("tiny-shapes"))
    for old, new in ((True, "always"), (False, "never")):
        base["model"]["channels_last"] = old
        assert from_dict(Config, base).model.channels_last == new
    assert override(preset("zf-voc07"), {"model.channels_last": "true"}).model.channels_last == "always"
    assert override(preset("zf-voc07"), {"model.channels_last": "inference"}).model.channels_last == "inference"
