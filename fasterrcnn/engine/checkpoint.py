"""Checkpoints: atomic writes, safe (``weights_only``) loading, RNG capture, compatibility checks.

A full training checkpoint (``DIR/last.pt``) is a plain dict::

    {"format": "fasterrcnn-checkpoint", "version": 1,
     "config": to_dict(cfg), "classes": [...], "model": state_dict,
     "iteration": int, "optimizer": ..., "scheduler": {"iteration": int},
     "scaler": dict | None, "sampler": {"epoch": int, "position": int, ...},
     "rng": capture_rng_state(), "rng_per_rank": [...] | None}

The light export (``DIR/model_final.pt``, :func:`export_weights`) keeps only ``format``,
``version``, ``config``, ``classes`` and ``model``. Everything in both is made of tensors and
plain Python containers/scalars so that ``torch.load(..., weights_only=True)`` can read it: no
pickled code is ever executed when loading a checkpoint.

Writes are atomic: the file is written to a temporary name in the same directory, flushed and
fsync'ed, then renamed over the target with :func:`os.replace`. A process killed mid-write leaves
the previous checkpoint intact (and at worst a stale ``.NAME.*.tmp`` file, see
:func:`remove_stale_temp_files`).
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import random
import secrets
import warnings
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import torch
from torch import nn

from ..config import Config, ConfigError, from_dict, to_dict

FORMAT = "fasterrcnn-checkpoint"
VERSION = 1
_REQUIRED = ("format", "version", "config", "classes", "model")
_TRAINING_KEYS = ("iteration", "optimizer", "scheduler", "sampler", "rng")

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


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable, not ours, or does not fit; the message names it."""


log = logging.getLogger("fasterrcnn")

# The config as written, kept beside the editable "config" so that an edit made afterwards
# (say, anchor sizes changed while the weights still fit) is found when the file is loaded.
WRITTEN_CONFIG_KEY = "config_as_written"
# Keys of the config that may be edited in a checkpoint without changing what its weights mean.
EDITABLE_KEYS = RESUME_FREE_KEYS + ("model.roi_head.score_thresh", "model.roi_head.detections_per_img")


# --------------------------------------------------------------------------- writing / reading


def save_checkpoint(path: str | os.PathLike, state: Mapping[str, Any]) -> Path:
    """Atomically write ``state`` to ``path`` (temp file + fsync + ``os.replace``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    state = dict(state)
    if "config" in state and WRITTEN_CONFIG_KEY not in state:
        state[WRITTEN_CONFIG_KEY] = json.dumps(state["config"], sort_keys=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # umask applies
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)
    return path


def _fsync_dir(directory: Path) -> None:
    """Make the rename durable (POSIX); silently skipped where directories can't be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_stale_temp_files(directory: str | os.PathLike) -> list[Path]:
    """Delete temp files left by writes that were killed (``.NAME.*.tmp``); returns them."""
    removed = []
    directory = Path(directory)
    if not directory.is_dir():
        return removed
    for p in directory.glob(".*.tmp"):
        if p.is_file() and ".pt." in p.name:
            try:
                p.unlink()
                removed.append(p)
            except OSError:
                pass
    return removed


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint on the CPU with ``weights_only=True``; CheckpointError if it is bad."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint file not found")
    if not path.is_file():
        raise CheckpointError(f"{path}: not a file")
    with open(path, "rb") as f:
        head = f.read(4)
    if not head:
        raise CheckpointError(f"{path}: not a fasterrcnn checkpoint: the file is empty")
    if head != _ZIP_MAGIC:  # torch.save has written zip archives since torch 1.6; so do we
        raise CheckpointError(
            f"{path}: not a fasterrcnn checkpoint: it is not a PyTorch zip archive (it starts "
            f"with bytes {head!r}, not {_ZIP_MAGIC!r}); it was not loaded"
        )
    try:
        with warnings.catch_warnings():  # torch's notes on pickle protocols are not for users
            warnings.simplefilter("ignore")
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # zip/pickle/EOF/unsafe-global errors all mean "unreadable"
        raise CheckpointError(f"{path}: {_unreadable_reason(exc)}") from None
    validate_checkpoint(ckpt, path)
    return ckpt


_ZIP_MAGIC = b"PK\x03\x04"


def _unreadable_reason(exc: BaseException) -> str:
    """Why ``torch.load(..., weights_only=True)`` failed, in our words. torch's own first line
    advises loading again with ``weights_only=False``: that would run whatever code the file
    holds, so it is never repeated here."""
    text = str(exc)
    unsafe = [ln.strip() for ln in text.splitlines()
              if ln.strip().startswith(("Trying to load unsupported", "Unsupported"))
              or "GLOBAL" in ln]
    if isinstance(exc, pickle.UnpicklingError) or "Weights only load failed" in text:
        why = unsafe[0].rstrip(".") if unsafe else "it holds objects a checkpoint never holds"
        return (f"not a fasterrcnn checkpoint: it holds pickled objects or code that a "
                f"checkpoint never contains ({why}); it was not loaded and nothing in it was run")
    first = next((ln.strip() for ln in text.splitlines() if ln.strip()
                  and "weights_only" not in ln), type(exc).__name__)
    return ("cannot read checkpoint: the zip archive is incomplete or damaged (a truncated or "
            f"corrupt file, e.g. a copy that did not finish): {first}")


def validate_checkpoint(ckpt: Any, path: str | os.PathLike = "<checkpoint>") -> None:
    """CheckpointError unless ``ckpt`` looks like one of our checkpoints."""
    if not isinstance(ckpt, Mapping) or ckpt.get("format") != FORMAT:
        kind = type(ckpt).__name__
        raise CheckpointError(
            f"{path}: not a fasterrcnn checkpoint (a {kind} without format={FORMAT!r}; "
            "plain state dicts are not accepted)"
        )
    version = ckpt.get("version")
    if not isinstance(version, int) or version > VERSION or version < 1:
        raise CheckpointError(
            f"{path}: checkpoint version {version!r} is not supported (this code reads up to "
            f"version {VERSION}); update fasterrcnn"
        )
    missing = [k for k in _REQUIRED if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks {', '.join(missing)}")
    if not isinstance(ckpt["model"], Mapping):
        raise CheckpointError(f"{path}: checkpoint 'model' entry is not a state dict")


def check_config_unedited(ckpt: Mapping[str, Any], path: str | os.PathLike = "<checkpoint>") -> None:
    """CheckpointError when the checkpoint's config was edited after it was written in a key
    that changes what the weights mean (anchors, backbone, input size, ...: everything but
    :data:`EDITABLE_KEYS`); an edit of an editable key is logged. Files written before the
    written copy was kept pass unchecked."""
    written = ckpt.get(WRITTEN_CONFIG_KEY)
    if not isinstance(written, str):
        return
    try:
        original = json.loads(written)
    except ValueError:
        raise CheckpointError(f"{path}: checkpoint's {WRITTEN_CONFIG_KEY!r} entry is damaged") from None
    diffs = config_differences(original, ckpt["config"])
    if not diffs:
        return
    lines = [f"{k}: written {old!r}, now {new!r}" for k, (old, new) in diffs.items()]
    bad = [ln for k, ln in zip(diffs, lines)
           if not any(k == f or k.startswith(f + ".") for f in EDITABLE_KEYS)]
    if bad:
        raise CheckpointError(
            f"{path}: the config in this checkpoint was edited after it was written, in key(s) "
            "that change what its weights mean (they still fit, but would be read wrongly):\n  "
            + "\n  ".join(bad) + "\nUse the file as it was written, or train with the new config."
        )
    log.warning("%s: config edited after the checkpoint was written: %s", path, "; ".join(lines))


def is_training_checkpoint(ckpt: Mapping[str, Any]) -> bool:
    """True for a full ``last.pt`` (resumable), False for a light weights export."""
    return all(k in ckpt for k in _TRAINING_KEYS)


def checkpoint_config(ckpt: Mapping[str, Any], path: str | os.PathLike = "<checkpoint>") -> Config:
    """The :class:`Config` stored in a checkpoint."""
    try:
        return from_dict(Config, ckpt["config"])
    except (ConfigError, TypeError) as exc:
        raise CheckpointError(f"{path}: checkpoint config is not valid here: {exc}") from None


def export_weights(
    path: str | os.PathLike,
    *,
    model: nn.Module | Mapping[str, torch.Tensor],
    cfg: Config,
    classes: Iterable[str],
) -> Path:
    """Write the light deployment file (config, classes and weights only), atomically."""
    state = model.state_dict() if isinstance(model, nn.Module) else dict(model)
    return save_checkpoint(
        path,
        {
            "format": FORMAT,
            "version": VERSION,
            "config": to_dict(cfg),
            "classes": list(classes),
            "model": {k: v.detach().cpu() for k, v in state.items()},
        },
    )


def load_model(
    path: str | os.PathLike, device: str | torch.device = "cpu"
) -> tuple[nn.Module, Config, tuple[str, ...]]:
    """Build the model a checkpoint describes and load its weights strictly (eval mode)."""
    from ..modeling.builder import build_model

    ckpt = load_checkpoint(path)
    cfg = checkpoint_config(ckpt, path)
    classes = tuple(str(c) for c in ckpt["classes"])
    if len(classes) != cfg.model.num_classes:
        raise CheckpointError(
            f"{path}: checkpoint names {len(classes)} classes but its config has "
            f"model.num_classes={cfg.model.num_classes}"
        )
    model = build_model(cfg.model, load_backbone_weights=False)  # the checkpoint has every weight
    load_state_strict(model, ckpt["model"], path)
    check_config_unedited(ckpt, path)  # the weights fit: is the config still the one they had?
    model.to(device)
    model.eval()
    return model, cfg, classes


def load_state_strict(
    model: nn.Module, state: Mapping[str, torch.Tensor], path: str | os.PathLike = "<checkpoint>"
) -> None:
    """``model.load_state_dict(state, strict=True)`` with a readable CheckpointError on mismatch."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and isinstance(state[k], torch.Tensor) and state[k].shape != own[k].shape
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} key(s) (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} key(s) (e.g. {', '.join(unexpected[:3])})")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatch(es) (e.g. {'; '.join(shapes[:3])})")
        raise CheckpointError(
            f"{path}: the weights do not fit the model built from the config: "
            + "; ".join(parts)
            + " — was this checkpoint written with a different config or code version?"
        )
    model.load_state_dict(state, strict=True)


# --------------------------------------------------------------------------- config compatibility


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, Mapping):
        out: dict[str, Any] = {}
        for k, v in data.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    if isinstance(data, tuple):
        data = list(data)
    return {prefix: data}


def config_differences(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``{dotted key: (value in a, value in b)}`` for every key where two config dicts differ."""
    fa, fb = _flatten(a), _flatten(b)
    keys = sorted(set(fa) | set(fb))
    missing = object()
    out = {}
    for k in keys:
        va, vb = fa.get(k, missing), fb.get(k, missing)
        if va != vb:
            out[k] = (None if va is missing else va, None if vb is missing else vb)
    return out


def check_compatible(
    ckpt: Mapping[str, Any],
    cfg: Config,
    *,
    allow: Iterable[str] = (),
    path: str | os.PathLike = "<checkpoint>",
) -> list[str]:
    """Raise CheckpointError if ``cfg`` differs from the checkpoint's config in a key that
    changes the computation (everything except :data:`RESUME_FREE_KEYS` and ``allow``, which
    may name keys or key prefixes such as ``"train.lr"``). Returns the tolerated differences
    as ``"key: old -> new"`` lines (to be logged)."""
    free = tuple(RESUME_FREE_KEYS) + tuple(allow)

    def tolerated(key: str) -> bool:
        return any(key == f or key.startswith(f + ".") for f in free)

    old = ckpt["config"]
    try:  # fields added since the checkpoint was written take their defaults (the old behaviour)
        old = to_dict(from_dict(Config, old))
    except ConfigError:
        pass  # e.g. a key this version does not know: compare as written, the difference is reported
    diffs = config_differences(old, to_dict(cfg))
    bad = {k: v for k, v in diffs.items() if not tolerated(k)}
    if bad:
        lines = "\n".join(f"  {k}: checkpoint={old!r}, now={new!r}" for k, (old, new) in bad.items())
        raise CheckpointError(
            f"{path}: cannot resume with a different config; differing key(s):\n{lines}\n"
            "Resume with the checkpoint's config (or start a new run in another directory)."
        )
    return [f"{k}: {old!r} -> {new!r}" for k, (old, new) in diffs.items()]


# --------------------------------------------------------------------------- RNG state


def capture_rng_state() -> dict[str, Any]:
    """All RNG states (torch CPU, CUDA, numpy, python) as ``weights_only``-loadable values."""
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        # only when CUDA is in use: capturing must not create CUDA contexts for a CPU run
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": {"version": int(version), "state": list(internal), "gauss_next": gauss_next},
    }


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state` (CUDA states restored when the device count fits)."""
    torch.set_rng_state(state["torch"].to(torch.uint8))
    cuda = list(state.get("cuda") or [])
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([c.to(torch.uint8) for c in cuda])
    npst = state["numpy"]
    np.random.set_state(
        (
            npst["kind"],
            npst["keys"].numpy().astype(np.uint32),
            int(npst["pos"]),
            int(npst["has_gauss"]),
            float(npst["cached_gaussian"]),
        )
    )
    py = state["python"]
    random.setstate((int(py["version"]), tuple(int(x) for x in py["state"]), py["gauss_next"]))


def resolve_resume(resume: str | os.PathLike | None, last: Path) -> Path | None:
    """The checkpoint to resume from: ``None`` (start afresh), ``"auto"`` (``last`` if it exists)
    or a path."""
    if resume is None:
        return None
    if str(resume) == "auto":
        return last if last.is_file() else None
    return Path(resume)
