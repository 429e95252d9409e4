"""Timing the detector (``fasterrcnn bench``): synchronised timers, warm-up, medians with spread,
peak memory, autocast, and a per-stage pass split like the paper's Table 5.

Shapes: N images per batch, each [3, H, W]; G ground-truth boxes per image.

  * :func:`time_alternating`: warm every runner up, then run them in turn (A B, B A, ...) K times,
    the device synchronised around each call; :func:`summarize` gives median, min, max and the
    quartiles of the seconds;
  * :func:`staged_predict` / :func:`staged_loss`: the model's parts called in the order
    ``model.predict`` / ``model.loss`` call them, each inside a :class:`StageTimer` stage (the
    device synchronised at each boundary, so the end-to-end times are measured without it); the
    results are those of ``predict`` / ``loss`` (a test checks it);
  * memory: on CUDA ``torch.cuda.max_memory_allocated`` after a reset, per call; on the CPU the
    process's peak RSS (``resource.getrusage``), which is process-wide and never goes down: it
    includes both models and everything run before.
"""

from __future__ import annotations

import contextlib
import resource
import statistics
import sys
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import Tensor, nn

from ..config import ConfigError
from ..modeling.faster_rcnn import FasterRCNN, inference_mode
from ..modeling.roi_heads import RoIHeads
from ..modeling.transform import scale_boxes

DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_dtype(name: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``--dtype`` (None: fp32); fp16 only on CUDA."""
    if name not in DTYPES:
        raise ConfigError(f"--dtype must be one of {', '.join(DTYPES)}, got {name!r}")
    if name == "fp16" and device.type != "cuda":
        raise ConfigError("--dtype fp16 needs a CUDA device (CPU kernels lack fp16 convolutions); "
                          "on the CPU use --dtype bf16 or fp32")
    if name == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError("--dtype bf16 needs a GPU with bfloat16 support; use fp16")
    return DTYPES[name]


def autocast(device: torch.device, dtype: torch.dtype | None) -> Any:
    return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


def parse_size(text: str) -> tuple[int, int]:
    """``HxW`` -> (H, W), both positive."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ConfigError(f"--size expects HxW such as 600x1000, got {text!r}") from None
    if h <= 0 or w <= 0:
        raise ConfigError(f"--size must be positive, got {text!r}")
    return h, w


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def summarize(times: Sequence[float]) -> dict[str, float]:
    """Median, min, max, quartiles (seconds) and count of the runs."""
    t = sorted(float(x) for x in times)
    q = statistics.quantiles(t, n=4, method="inclusive") if len(t) > 1 else [t[0], t[0], t[0]]
    return {"median": statistics.median(t), "min": t[0], "max": t[-1], "q1": q[0], "q3": q[2], "n": len(t)}


class StageTimer:
    """Seconds per named stage of one pass, the device synchronised at each boundary; disabled,
    it does nothing (the same code runs untimed). ``a.b`` names a part of stage ``a``."""

    def __init__(self, device: torch.device, enabled: bool = True) -> None:
        self.device, self.enabled = device, enabled
        self.seconds: dict[str, float] = {}
        self._open: dict[str, float] = {}

    def start(self, name: str) -> None:
        if self.enabled:
            sync(self.device)
            self._open[name] = time.perf_counter()

    def stop(self, name: str) -> None:
        if self.enabled:
            sync(self.device)
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - self._open.pop(name)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self.start(name)
        try:
            yield
        finally:
            self.stop(name)

    @contextmanager
    def modules(self, parts: dict[str, nn.Module]) -> Iterator[None]:
        """Time every call of these modules as the named stages (forward hooks, removed after)."""
        handles = []
        if self.enabled:
            for name, m in parts.items():
                handles.append(m.register_forward_pre_hook(lambda *_, n=name: self.start(n)))
                handles.append(m.register_forward_hook(lambda *_, n=name: self.stop(n)))
        try:
            yield
        finally:
            for h in handles:
                h.remove()


def _head_parts(prefix: str, heads: nn.Module) -> dict[str, nn.Module]:
    return {f"{prefix}.roi_pool": heads.pooler, f"{prefix}.box_head": heads.box_head,
            f"{prefix}.predictor": heads.predictor}


def staged_predict(model: FasterRCNN, images: list[Tensor], timer: StageTimer) -> list[dict[str, Tensor]]:
    """``model.predict(images)``, stage by stage: transform, backbone, rpn_head, proposals,
    region (pooling, fc head, predictor, post-processing and the final selection)."""
    with inference_mode(model):
        with timer.stage("transform"):
            batch = model.transform(images, training=False)
        with timer.stage("backbone"):
            features = model.features(batch.tensor)
        with timer.stage("rpn_head"):
            out = model.rpn(features, batch.padded_size)
        with timer.stage("proposals"):
            props, _ = model.rpn.propose(out, batch.image_sizes, training=False)
        with timer.stage("region"), timer.modules(_head_parts("region", model.roi_heads)):
            found = model.roi_heads.class_boxes(features, props, batch.image_sizes)
            select = model.roi_heads.selector
            return [select(s, scale_boxes(b.reshape(-1, 4), size, orig).view(b.shape))
                    for (s, b), size, orig in zip(found, batch.image_sizes, batch.original_sizes)]


def staged_loss(model: FasterRCNN, images: list[Tensor], targets: list[dict], timer: StageTimer) -> dict[str, Tensor]:
    """``model.loss(images, targets)``, stage by stage: transform (and the targets scaled),
    backbone, rpn_head, rpn_loss (anchor labelling, sampling, loss), proposals, roi_sampling (the
    head's target assignment), roi_head (pooling, fc head, predictor, loss)."""
    with timer.stage("transform"):
        batch = model.transform(images, training=True)
        gt_boxes, gt_labels = model._scaled_targets(targets, batch)
    with timer.stage("backbone"):
        features = model.features(batch.tensor)
    with timer.stage("rpn_head"):
        out = model.rpn(features, batch.padded_size)
    with timer.stage("rpn_loss"):
        losses = dict(model.rpn.loss(out, batch.image_sizes, gt_boxes))
    with timer.stage("proposals"):
        props, _ = model.rpn.propose(out, batch.image_sizes, training=True)
    heads = model.roi_heads
    if type(heads).loss is not RoIHeads.loss:  # a head with its own loss (cascade): one stage
        with timer.stage("roi_head"):
            losses.update(heads.loss(features, props, gt_boxes, gt_labels, batch.image_sizes))
        return losses
    with timer.stage("roi_sampling"):
        sampled = heads.sample(features, props, gt_boxes, gt_labels)
    with timer.stage("roi_head"), timer.modules(_head_parts("roi_head", heads)):
        class_logits, box_deltas = heads(features, [r for r, _, _ in sampled])
        losses.update(heads.loss_fn(class_logits, box_deltas, sampled, heads.coder, "roi"))
    return losses


class TrainStep:
    """One full training step (forward under autocast, losses summed in float32, backward with a
    GradScaler under fp16, SGD step) of ``loss_fn(images, targets, timer)``. The learning rate is
    0: every update is computed, the weights stay put (a random model does not drift to NaN)."""

    def __init__(self, module: nn.Module, loss_fn: Callable, device: torch.device, dtype: torch.dtype | None) -> None:
        self.loss_fn, self.device, self.dtype = loss_fn, device, dtype
        params = [p for p in module.parameters() if p.requires_grad]
        self.optimizer = torch.optim.SGD(params, lr=0.0, momentum=0.9, weight_decay=1e-4)
        self.scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None

    def __call__(self, images: list[Tensor], targets: list[dict], timer: StageTimer) -> float:
        with autocast(self.device, self.dtype):
            losses = self.loss_fn(images, targets, timer)
        total = torch.stack([v.float() for v in losses.values()]).sum()
        self.optimizer.zero_grad(set_to_none=True)
        with timer.stage("backward"):
            (self.scaler.scale(total) if self.scaler else total).backward()
        with timer.stage("optimizer"):
            if self.scaler:
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                self.optimizer.step()
        return float(total.detach())


def synthetic_batch(n: int, size: tuple[int, int], num_classes: int, num_boxes: int, device: torch.device,
                    seed: int = 0) -> tuple[list[Tensor], list[dict]]:
    """``n`` random images [3, H, W] in 0..1 and targets of ``num_boxes`` random boxes (at least
    a sixth of the image on each side) with random labels 1..K."""
    g = torch.Generator().manual_seed(seed)
    h, w = size
    images, targets = [], []
    for _ in range(n):
        images.append(torch.rand(3, h, w, generator=g).to(device))
        lo = torch.rand(num_boxes, 2, generator=g) * torch.tensor([w * 0.8, h * 0.8])
        wh = (torch.rand(num_boxes, 2, generator=g) * 0.5 + 1 / 6) * torch.tensor([w, h])
        hi = torch.minimum(lo + wh, torch.tensor([float(w), float(h)]))
        boxes = torch.cat((lo, hi), dim=1)  # x1, y1, x2, y2
        labels = torch.randint(1, num_classes + 1, (num_boxes,), generator=g)
        targets.append({"boxes": boxes.to(device), "labels": labels.to(device)})
    return images, targets


def peak_memory_mb(device: torch.device) -> float:
    """CUDA: the peak allocated since the last reset; CPU: the process's peak RSS so far."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / (2**20 if sys.platform == "darwin" else 2**10)


def time_alternating(runners: dict[str, Callable[[], Any]], device: torch.device, *, iters: int,
                     warmup: int) -> tuple[dict[str, list[float]], dict[str, float]]:
    """(seconds of each call, peak memory in MiB) per runner: ``warmup`` untimed rounds, then
    ``iters`` rounds alternating the order (A B, B A, ...), the device synchronised around
    each call (CUDA: the peak-memory counter reset before it)."""
    for _ in range(warmup):
        for run in runners.values():
            run()
    times: dict[str, list[float]] = {k: [] for k in runners}
    peaks: dict[str, float] = {k: 0.0 for k in runners}
    for i in range(iters):
        for name in (list(runners) if i % 2 == 0 else list(reversed(runners))):
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            sync(device)
            t0 = time.perf_counter()
            runners[name]()
            sync(device)
            times[name].append(time.perf_counter() - t0)
            peaks[name] = max(peaks[name], peak_memory_mb(device))
    return times, peaks


def stage_medians(runs: Sequence[dict[str, float]]) -> dict[str, float]:
    """Per stage, the median seconds over runs (a stage absent from a run counts 0); ``total``
    is the median of the runs' sums of top-level stages (names without a dot)."""
    names = list(dict.fromkeys(k for r in runs for k in r))
    out = {k: statistics.median(r.get(k, 0.0) for r in runs) for k in names}
    out["total"] = statistics.median(sum(v for k, v in r.items() if "." not in k) for r in runs)
    return out


def table5(stages: dict[str, float], groups: dict[str, Sequence[str]]) -> dict[str, float]:
    """The paper's Table 5 columns (e.g. conv, proposal, region-wise) as sums of stages; a column
    none of whose stages ran is left out."""
    out = {g: sum(stages.get(s, 0.0) for s in names) for g, names in groups.items()
           if any(s in stages for s in names)}
    out["total"] = stages["total"]
    return out


def param_mb(module: nn.Module) -> float:
    """MiB of the module's parameters and buffers."""
    tensors = list(module.parameters()) + list(module.buffers())
    return sum(t.numel() * t.element_size() for t in tensors) / 2**20
