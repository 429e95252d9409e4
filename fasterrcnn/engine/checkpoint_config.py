"""The config inside a checkpoint: which of its keys may differ, and how two configs differ.

A checkpoint keeps its config twice: ``"config"`` (a dict that tools may edit) and
``"config_as_written"`` (:data:`WRITTEN_CONFIG_KEY`, the same dict as JSON text, written by
:func:`~fasterrcnn.engine.checkpoint.save_checkpoint`). Two questions are asked of it:

* was the config edited after the file was written in a key that changes what the weights mean
  (:func:`edits_since_written`, everything but :data:`EDITABLE_KEYS` matters)?
* may a run be resumed with another config (:func:`resume_differences`; only
  :data:`RESUME_FREE_KEYS` and the keys the user allows may differ)?

Both answer with :func:`config_differences` on dotted keys; the checks that raise
:class:`~fasterrcnn.engine.checkpoint.CheckpointError` are in :mod:`fasterrcnn.engine.checkpoint`.
"""

from __future__ import annotations

import json
from typing import Any, Iterable, Mapping

from ..config import Config, ConfigError, from_dict, to_dict

# Config keys that may differ between a checkpoint and the config used to resume it: they change
# how a run is operated, not what it computes (``max_iter`` may be raised to extend a run).
RESUME_FREE_KEYS = (
    "train.max_iter",
    "train.num_workers",
    "train.log_period",
    "train.checkpoint_period",
    "train.eval_period",
    "train.max_bad_steps",
    "model.backbone.weights",  # the ImageNet init is irrelevant once weights are in the checkpoint
    "model.test_aug",  # test-time views and score fusion: no effect on training
)

# The config as written, kept beside the editable "config" so that an edit made afterwards
# (say, anchor sizes changed while the weights still fit) is found when the file is loaded.
WRITTEN_CONFIG_KEY = "config_as_written"
# Keys of the config that may be edited in a checkpoint without changing what its weights mean.
EDITABLE_KEYS = RESUME_FREE_KEYS + ("model.roi_head.score_thresh", "model.roi_head.detections_per_img")

Differences = dict[str, tuple[Any, Any]]


def written_config(config: Mapping[str, Any]) -> str:
    """The text stored under :data:`WRITTEN_CONFIG_KEY` for a checkpoint's config dict."""
    return json.dumps(config, sort_keys=True)


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, Mapping):
        out: dict[str, Any] = {}
        for k, v in data.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    if isinstance(data, tuple):
        data = list(data)
    return {prefix: data}


def config_differences(a: Mapping[str, Any], b: Mapping[str, Any]) -> Differences:
    """``{dotted key: (value in a, value in b)}`` for every key where two config dicts differ
    (a key missing on one side reads ``None`` there; tuples and lists compare equal)."""
    fa, fb = _flatten(a), _flatten(b)
    missing = object()
    out = {}
    for k in sorted(set(fa) | set(fb)):
        va, vb = fa.get(k, missing), fb.get(k, missing)
        if va != vb:
            out[k] = (None if va is missing else va, None if vb is missing else vb)
    return out


def covered(key: str, prefixes: Iterable[str]) -> bool:
    """True when ``key`` is one of ``prefixes`` or lies under one (``"train.lr"`` covers
    ``"train.lr"``; ``"train"`` covers every ``"train.*"``)."""
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def edits_since_written(ckpt: Mapping[str, Any]) -> Differences | None:
    """How the checkpoint's ``"config"`` differs from the config as written (``{}``: unedited);
    ``None`` for files written before the written copy was kept. ValueError when the written
    copy is damaged."""
    written = ckpt.get(WRITTEN_CONFIG_KEY)
    if not isinstance(written, str):
        return None
    return config_differences(json.loads(written), ckpt["config"])


def resume_differences(saved: Mapping[str, Any], cfg: Config) -> Differences:
    """How ``cfg`` differs from a checkpoint's config dict ``saved``. Fields added to the config
    since the checkpoint was written take their defaults (the behaviour it was trained with); a
    key this version does not know is compared as written, so the difference is reported."""
    try:
        saved = to_dict(from_dict(Config, saved))
    except ConfigError:
        pass
    return config_differences(saved, to_dict(cfg))
