"""Helpers shared by the commands: known errors, threads, building the config from the flags,
``--classes``, loading a checkpoint for inference, sliced prediction, printing metrics and
drawing example detections."""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import logging
import os
from pathlib import Path
from typing import Any, Callable, Sequence

from ..config import Config, ConfigError, from_dict, override, parse_overrides, to_dict
from ..presets import preset

log = logging.getLogger("fasterrcnn")
DEFAULT_PRESET = "tiny-shapes"  # train's preset when none is named


def known_errors() -> tuple[type[BaseException], ...]:
    from ..data.dataset import DataError
    from ..engine.checkpoint import CheckpointError
    from ..engine.guard import TrainingDiverged
    from ..modeling.backbones import BackboneWeightsError

    return (DataError, ConfigError, CheckpointError, BackboneWeightsError, TrainingDiverged, FileNotFoundError)


# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 32 << 20  # glibc's largest: allocations up to 32 MiB come from the heap


def retain_freed_memory() -> bool:
    """Let glibc's malloc keep freed memory for the next allocation instead of handing it back
    to the system (the CPU counterpart of the caching allocator PyTorch uses on GPUs).

    A detector allocates its large temporaries afresh at every step (features, pooled RoIs, the
    sparse RoIAlign's products: 10-30 MiB each); by default glibc serves those from new memory
    maps and returns them on free, so every step pays page faults to touch them again. Serving
    allocations up to 32 MiB from the heap and never trimming it made the demo's evaluation
    (nine test-time views, 200 images) about 14% faster on a 2-core EPYC; the price is that the
    process keeps its peak memory until it exits. Only where the C library is glibc (Linux);
    returns whether it applied. ``FASTERRCNN_MALLOC=system`` leaves malloc as it is.
    """
    if os.environ.get("FASTERRCNN_MALLOC", "") == "system":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (macOS, Windows, musl without mallopt)
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))


def set_threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


def build_config(args: argparse.Namespace, num_classes: int | None = None) -> Config:
    """Preset (or, with ``--init CKPT``, the checkpoint's config, starting from its weights),
    then ``--config`` file, then the dedicated flags, then ``--set`` overrides."""
    import json

    init = getattr(args, "init", None)
    if init:
        if getattr(args, "preset", None):
            raise ConfigError("--init takes the model and its training settings from the checkpoint; "
                              "leave out --preset (change settings with --set)")
        from ..engine.checkpoint import checkpoint_config, load_checkpoint

        cfg = checkpoint_config(load_checkpoint(init), init)
        cfg = override(cfg, {"model.weights": str(init), "model.backbone.weights": None})
    else:
        cfg = preset(getattr(args, "preset", None) or DEFAULT_PRESET)
    if getattr(args, "config", None):
        path = Path(args.config)
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read config JSON ({exc})") from None
        merged = to_dict(cfg)
        _deep_update(merged, data, str(path))
        cfg = from_dict(Config, merged)
    flags: dict[str, Any] = {}
    for flag, key in (
        ("iters", "train.max_iter"),
        ("lr", "train.lr"),
        ("batch_size", "train.images_per_batch"),
        ("backbone_weights", "model.backbone.weights"),
        ("schedule", "train.schedule"),
        ("amp", "train.amp"),
        ("eval_period", "train.eval_period"),
        ("workers", "train.num_workers"),
        ("seed", "train.seed"),
    ):
        value = getattr(args, flag, None)
        if value is not None:
            flags[key] = value
    if getattr(args, "include_difficult", False):
        flags["train.include_difficult"] = True
    if num_classes is not None:
        flags["model.num_classes"] = num_classes
    cfg = override(cfg, flags)
    return override(cfg, parse_overrides(getattr(args, "set", None)))


def _deep_update(base: dict, new: Any, where: str, path: str = "") -> None:
    if not isinstance(new, dict):
        raise ConfigError(f"{where}: expected a JSON object at {path or 'top level'}")
    for key, value in new.items():
        dotted = f"{path}.{key}" if path else key
        if key not in base:
            raise ConfigError(f"{where}: unknown config key {dotted!r}")
        if isinstance(base[key], dict):
            _deep_update(base[key], value, where, dotted)
        else:
            base[key] = value


def classes_arg(text: str | None) -> tuple[str, ...] | None:
    if not text:
        return None
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if len(set(names)) != len(names):
        raise ConfigError(f"--classes has duplicate names: {text}")
    return names


def sliced_predictor(model: Any, args: argparse.Namespace) -> Callable | None:
    """``--tile`` turns on sliced inference for images larger than a tile."""
    if not getattr(args, "tile", None):
        return None
    from ..engine.sliced import predict_sliced

    # eval/detect: --batch-size is the inference batch; train: it is the training batch
    tiles_per_batch = 4 if args.command == "train" else args.batch_size

    def predict(images: list) -> list:
        return [
            predict_sliced(
                model,
                image,
                tile=args.tile,
                overlap=args.tile_overlap,
                batch_size=tiles_per_batch,
                max_detections=args.max_detections or 1000,
            )
            for image in images
        ]

    return predict


def load_for_inference(args: argparse.Namespace) -> tuple[Any, Config, tuple[str, ...]]:
    """(predictor, config, class names) of ``--checkpoint``: the model, its BatchNorm layers
    folded into the convolutions (:func:`~fasterrcnn.modeling.fold.fold_batchnorm`), wrapped in
    the test-time views its config and the flags ask for (``predictor.model`` is the network)."""
    from ..engine.checkpoint import load_model
    from ..modeling.fold import fold_batchnorm

    model, cfg, classes = load_model(args.checkpoint, device=args.device)
    return inference_predictor(fold_batchnorm(model), cfg, args), cfg, tuple(classes)


def inference_predictor(model: Any, cfg: Config, args: argparse.Namespace) -> Any:
    """The predictor of a loaded model from its config and the flags; each flag does one thing:
    ``--no-tta`` (no test-time views), ``--tta-sizes``, ``--tta-flip`` / ``--tta-vflip`` /
    ``--tta-transpose`` (replace the config's views), ``--tta-zoom`` / ``--tta-zoom-max-box``,
    ``--tta-fusion``; ``--score-thresh``, ``--max-detections`` and ``--box-vote`` (the final
    selection)."""
    import dataclasses

    from ..modeling.builder import build_predictor

    aug = cfg.model.test_aug
    sizes_text = getattr(args, "tta_sizes", None)
    flip = bool(getattr(args, "tta_flip", False))
    vflip = bool(getattr(args, "tta_vflip", False))
    transpose = bool(getattr(args, "tta_transpose", False))
    zoom_text = getattr(args, "tta_zoom", None)
    zoom_box = getattr(args, "tta_zoom_max_box", None)
    views_given = sizes_text is not None or flip or vflip or transpose
    zoom_given = zoom_text is not None or zoom_box is not None
    changes: dict[str, Any] = {}
    if getattr(args, "no_tta", False):
        if views_given or zoom_given:
            raise ConfigError("--no-tta cannot be combined with --tta-sizes, --tta-flip/-vflip/-transpose "
                              "or --tta-zoom")
        changes.update(min_sizes=(), hflip=False, vflip=False, transpose=False, zoom_sizes=())
    if views_given:  # the flags replace the config's views: sizes default to the test scale
        changes.update(min_sizes=_sizes(sizes_text or "", "--tta-sizes"), hflip=flip, vflip=vflip,
                       transpose=transpose)
    if zoom_box is not None:
        if not zoom_box > 0:
            raise ConfigError(f"--tta-zoom-max-box must be > 0 pixels, got {zoom_box}")
        changes["zoom_max_box"] = float(zoom_box)
    if zoom_text is not None:
        changes["zoom_sizes"] = () if zoom_text.strip().lower() == "none" else _sizes(zoom_text, "--tta-zoom")
    if getattr(args, "tta_fusion", None) is not None:
        changes["score_fusion"] = args.tta_fusion
    selector = model.roi_heads.selector
    select: dict[str, Any] = {}
    if getattr(args, "score_thresh", None) is not None:
        select["score_thresh"] = float(args.score_thresh)
    if getattr(args, "max_detections", None):
        select["detections_per_img"] = int(args.max_detections)
    vote = getattr(args, "box_vote", None)
    if vote is not None:
        if not 0.0 <= vote <= 1.0:
            raise ConfigError(f"--box-vote must be an IoU in [0, 1] (0 = off), got {vote}")
        select["vote_iou"] = float(vote)
    return build_predictor(model, cfg.model, test_aug=dataclasses.replace(aug, **changes),
                           selector=dataclasses.replace(selector, **select))


def _sizes(text: str, flag: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise ConfigError(f"{flag} expects integers like 288,336,384, got {text!r}") from None
    if any(s <= 0 for s in sizes):
        raise ConfigError(f"{flag} must be positive, got {text!r}")
    return sizes


def print_metrics(result: dict[str, Any]) -> None:
    metric = result.get("metric")
    if metric == "coco":
        keys = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100")
        print("  ".join(f"{k} {result[k]:.4f}" if result.get(k) is not None else f"{k} n/a" for k in keys))
        return
    for name, ap in result.get("AP", {}).items():
        print(f"  {name:>16s}  AP {ap:.4f}" if ap is not None else f"  {name:>16s}  AP n/a (no ground truth)")
    m = result.get("mAP")
    print(f"{metric} mAP@0.5 = {m:.4f}" if m is not None else f"{metric} mAP: n/a")


def draw_examples(model: Any, dataset: Any, indices: Sequence[int], path: Path, thresh: float,
                  detections: Sequence[dict[str, Any]] | None = None) -> Path:
    """A grid of images ``indices`` of ``dataset`` with their detections scored ``thresh`` or
    more: ``detections[i]`` (numpy arrays or tensors, aligned with the dataset) where given,
    else ``model.predict`` on each image."""
    import torch

    from ..visualize import draw_detections, grid

    pictures = []
    for i in indices:
        image, _ = dataset[i]
        if detections is not None:
            det = {k: torch.as_tensor(detections[i][k]) for k in ("boxes", "labels", "scores")}
        else:
            det = model.predict([image.float() / 255.0])[0]
        keep = det["scores"] >= thresh
        pictures.append(
            draw_detections(image, det["boxes"][keep], det["labels"][keep], det["scores"][keep], dataset.classes)
        )
    grid(pictures, columns=3).save(path, quality=90)
    return path
