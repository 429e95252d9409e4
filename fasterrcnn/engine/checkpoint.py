"""Checkpoints: atomic writes, safe (``weights_only``) loading, building the model a file describes.

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

Which config differences a checkpoint tolerates (an edited config, a resume with another config)
is decided in :mod:`fasterrcnn.engine.checkpoint_config`; :func:`check_config_unedited` and
:func:`check_compatible` here raise :class:`CheckpointError` on the ones that matter. The RNG
state stored in training checkpoints is :mod:`fasterrcnn.engine.rng_state`'s.
"""

from __future__ import annotations

import logging
import os
import pickle
import secrets
import warnings
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
from torch import nn

from ..config import Config, ConfigError, from_dict, to_dict
from .checkpoint_config import (
    EDITABLE_KEYS,
    RESUME_FREE_KEYS,
    WRITTEN_CONFIG_KEY,
    covered,
    edits_since_written,
    resume_differences,
    written_config,
)

FORMAT = "fasterrcnn-checkpoint"
VERSION = 1
_REQUIRED = ("format", "version", "config", "classes", "model")
_TRAINING_KEYS = ("iteration", "optimizer", "scheduler", "sampler", "rng")


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable, not ours, or does not fit; the message names it."""


log = logging.getLogger("fasterrcnn")


# --------------------------------------------------------------------------- writing / reading


def save_checkpoint(path: str | os.PathLike, state: Mapping[str, Any]) -> Path:
    """Atomically write ``state`` to ``path`` (temp file + fsync + ``os.replace``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    state = dict(state)
    if "config" in state and WRITTEN_CONFIG_KEY not in state:
        state[WRITTEN_CONFIG_KEY] = written_config(state["config"])
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
    try:
        diffs = edits_since_written(ckpt)
    except ValueError:
        raise CheckpointError(f"{path}: checkpoint's {WRITTEN_CONFIG_KEY!r} entry is damaged") from None
    if not diffs:
        return
    lines = [f"{k}: written {old!r}, now {new!r}" for k, (old, new) in diffs.items()]
    bad = [ln for k, ln in zip(diffs, lines) if not covered(k, EDITABLE_KEYS)]
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


# --------------------------------------------------------------------------- config checks


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
    diffs = resume_differences(ckpt["config"], cfg)
    bad = {k: v for k, v in diffs.items() if not covered(k, free)}
    if bad:
        lines = "\n".join(f"  {k}: checkpoint={old!r}, now={new!r}" for k, (old, new) in bad.items())
        raise CheckpointError(
            f"{path}: cannot resume with a different config; differing key(s):\n{lines}\n"
            "Resume with the checkpoint's config (or start a new run in another directory)."
        )
    return [f"{k}: {old!r} -> {new!r}" for k, (old, new) in diffs.items()]
