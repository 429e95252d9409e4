"""Thin helpers around ``torch.distributed`` for data-parallel training.

Launch (one process per GPU; torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT)::

    torchrun --nproc_per_node=8 -m fasterrcnn train ...                       # one machine
    torchrun --nnodes=2 --nproc_per_node=8 --node_rank=N \\
             --rdzv_backend=c10d --rdzv_endpoint=HOST:29400 -m fasterrcnn train ...  # two machines

Multi-node needs nothing special here: torchrun's rendezvous provides the environment that
:func:`init_from_env` reads; the output directory must be on a file system shared by all nodes
(rank 0 writes checkpoints, every rank reads them when resuming). Each process takes
``train.images_per_batch`` images, so the global batch is ``images_per_batch * world_size``
(see :mod:`fasterrcnn.engine.lr_schedule` for the linear scaling rule).

Why :class:`LossModule`: ``DistributedDataParallel`` only synchronises gradients of work done
through its ``forward``; the detector's training entry point is ``model.loss(images, targets)``.
Rather than relying on ``FasterRCNN.forward`` dispatching to ``loss`` when targets are given,
the trainer wraps the detector in :class:`LossModule` whose ``forward`` *is* ``loss`` — this
works for any module with a ``loss`` method and keeps the checkpoint keys of the bare model.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass
from typing import Any, Iterator, Mapping

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    backend: str | None = None  # None: single process


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_dist() else 0


def world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def is_main_process() -> bool:
    return rank() == 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0")) if is_dist() else 0


def info() -> DistInfo:
    """The current process group as a :class:`DistInfo` (single process if none)."""
    if not is_dist():
        return DistInfo()
    return DistInfo(rank(), local_rank(), world_size(), str(dist.get_backend()))


def init_from_env(
    device: str | None = None, timeout: datetime.timedelta = datetime.timedelta(hours=2)
) -> DistInfo:
    """Join the process group described by torchrun's environment variables.

    Without ``WORLD_SIZE`` (or with ``WORLD_SIZE=1``) nothing happens (single process). The
    backend is NCCL when training on CUDA (``device`` "cuda" or, if None, CUDA available) and
    gloo on the CPU. The long ``timeout`` lets rank 0 evaluate while the others wait.
    Already initialised: returns the current group unchanged.
    """
    if is_dist():
        return info()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    rank_ = int(os.environ["RANK"])
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device is None else str(device).startswith("cuda")
    backend = "nccl" if use_cuda else "gloo"
    if use_cuda:
        torch.cuda.set_device(local)
    dist.init_process_group(
        backend=backend, init_method="env://", rank=rank_, world_size=world, timeout=timeout
    )
    return DistInfo(rank_, local, world, backend)


def cleanup(synchronize: bool = True) -> None:
    """Leave the process group (no-op without one).

    With ``synchronize`` (a normal end) every rank first waits for the others, so that none
    tears its connections down while a peer is still using them: with gloo on the CPU, a rank
    whose peer had already left could abort at exit ("terminate called without an active
    exception", seen once in CI in the two-process test). After an error, pass False: the
    other ranks may never reach the barrier."""
    if is_dist():
        if synchronize:
            dist.barrier()
        dist.destroy_process_group()


@contextlib.contextmanager
def group_from_env(device: str) -> Iterator[None]:
    """Inside: the process group torchrun describes (``WORLD_SIZE`` > 1), joined here unless one
    is joined already, and left at the end if joined here: after a barrier on a normal end,
    without one after an error (see :func:`cleanup`). A no-op for a single process."""
    created = not is_dist() and int(os.environ.get("WORLD_SIZE", "1")) > 1
    if created:
        init_from_env(device)
    try:
        yield
    except BaseException:
        if created:
            cleanup(synchronize=False)
        raise
    if created:
        cleanup()


def barrier() -> None:
    if is_dist():
        dist.barrier()


def _reduce_device() -> torch.device:
    if is_dist() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_dict(values: Mapping[str, float | torch.Tensor], average: bool = True) -> dict[str, float]:
    """Sum (or average) scalar values over all ranks, for logging; same keys on every rank."""
    keys = sorted(values)
    if not keys:
        return {}
    flat = torch.tensor(
        [float(values[k].detach().float().item()) if isinstance(values[k], torch.Tensor)
         else float(values[k]) for k in keys],
        dtype=torch.float64 if _reduce_device().type == "cpu" else torch.float32,
        device=_reduce_device(),
    )
    if is_dist():
        dist.all_reduce(flat)
        if average:
            flat /= world_size()
    return {k: float(v) for k, v in zip(keys, flat.tolist())}


def any_rank(flag: bool) -> bool:
    """True if ``flag`` is true on any rank (a collective: call it on every rank)."""
    if not is_dist():
        return bool(flag)
    t = torch.tensor([1.0 if flag else 0.0], device=_reduce_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def all_gather_object(obj: Any) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` (a collective)."""
    if not is_dist():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


class LossModule(nn.Module):
    """``forward(images, targets) = detector.loss(images, targets)`` (what DDP needs)."""

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, images: list[torch.Tensor], targets: list[dict]) -> dict[str, torch.Tensor]:
        return self.detector.loss(images, targets)


def wrap_for_training(detector: nn.Module, device: torch.device, sync_bn: bool = True) -> nn.Module:
    """A module whose call returns the loss dict; DDP-wrapped when a process group exists.

    ``sync_bn``: on CUDA, BatchNorm layers become :class:`torch.nn.SyncBatchNorm` (in place,
    same parameter names), so batch statistics cover the global batch as in a single-process
    run; SyncBatchNorm has no CPU implementation, so on the CPU (gloo) statistics stay per process.
    ``find_unused_parameters=True`` because a batch can leave some head parameter without a
    gradient on one rank (e.g. an image without objects); that must not stall a long run.
    """
    if not is_dist():
        return LossModule(detector)
    if sync_bn and device.type == "cuda":
        _convert_sync_bn_(detector)
    module = LossModule(detector)
    ids = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=ids, find_unused_parameters=True)


def has_batch_norm(module: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())


def _convert_sync_bn_(module: nn.Module) -> None:
    """Replace BatchNorm children by SyncBatchNorm in place (the top module itself is kept)."""
    for name, child in list(module.named_children()):
        converted = nn.SyncBatchNorm.convert_sync_batchnorm(child)
        if converted is not child:
            setattr(module, name, converted)
