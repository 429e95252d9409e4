"""Training data pipeline: aspect-ratio grouped, infinite, resumable, DDP-sharded batches.

The stream of batches is a pure function of ``(seed, dataset geometry, global batch size)``:

* epoch ``e`` shuffles all indices with a generator seeded from ``(seed, e)``; walking that
  permutation, images are put into one of two groups (landscape ``w >= h``, portrait ``w < h``,
  read from ``dataset.annotation(i)`` without decoding images) and every ``G`` images of a group
  form a *global batch* (``G = images_per_batch * world_size``). At the end of the epoch an
  incomplete group batch is completed with the group's first images of that epoch, so every
  image is seen every epoch and each epoch has exactly ``sum_g ceil(n_g / G)`` batches;
* the position in the stream is ``(epoch, position)`` = global batches consumed; it is all a
  checkpoint needs to continue exactly where a run stopped (:meth:`GroupedBatchSampler.state_at`);
* DDP: each global batch is cut into ``world_size`` consecutive chunks of ``images_per_batch``
  and rank ``r`` takes chunk ``r`` — equivalently, of the per-rank batch stream, rank ``r``
  takes every ``world_size``-th batch starting at ``r``. So ranks see different images, and one
  process with ``images_per_batch * world_size`` images per batch sees exactly the images all
  ranks see together;
* augmentation randomness comes from a seed derived from ``(seed, epoch, sample position in
  the epoch)`` carried with each index (:class:`SampleKey`), never from a global RNG, so the
  pixels and boxes of a batch do not depend on worker processes, ranks or resumption. The
  transpose (which swaps an image's aspect) draws from a seed of the global batch instead, so
  that a batch's images keep one aspect group.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, NamedTuple, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from ..config_train import TrainConfig
from ..modeling.transform import Orientation
from .dataset import DetectionDataset

LANDSCAPE, PORTRAIT = 0, 1


class SampleKey(NamedTuple):
    """What the batch sampler yields per image: dataset index + its augmentation seed, and the
    seed of its global batch (for augmentations every image of the batch shares)."""

    index: int
    seed: int
    batch_seed: int = 0


def derive_seed(*parts: int) -> int:
    """A 63-bit seed mixed from integers (numpy SeedSequence: stable across platforms)."""
    state = np.random.SeedSequence([int(p) & 0xFFFFFFFFFFFFFFFF for p in parts]).generate_state(
        2, dtype=np.uint32
    )
    return int((int(state[0]) << 31) ^ int(state[1])) & 0x7FFFFFFFFFFFFFFF


def aspect_groups(dataset: DetectionDataset) -> np.ndarray:
    """Group id per image: 0 for ``w >= h`` (landscape/square), 1 for ``w < h`` (portrait)."""
    out = np.empty(len(dataset), np.int64)
    for i in range(len(dataset)):
        ann = dataset.annotation(i)
        out[i] = LANDSCAPE if ann.width >= ann.height else PORTRAIT
    return out


def epoch_batches(groups: np.ndarray, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """The global batches (dataset indices) of one epoch, see the module docstring; pure."""
    n = len(groups)
    if n == 0:
        raise ValueError("cannot sample batches from an empty dataset")
    perm = np.random.Generator(np.random.PCG64(derive_seed(seed, epoch, 0x5EED))).permutation(n)
    batches: list[list[int]] = []
    buffers: dict[int, list[int]] = {}
    first: dict[int, list[int]] = {}
    for idx in perm.tolist():
        g = int(groups[idx])
        head = first.setdefault(g, [])
        if len(head) < batch_size:
            head.append(idx)
        buf = buffers.setdefault(g, [])
        buf.append(idx)
        if len(buf) == batch_size:
            batches.append(buf)
            buffers[g] = []
    for g in sorted(buffers):
        buf = buffers[g]
        if buf:
            k = 0
            while len(buf) < batch_size:  # complete with the group's first images (cyclically)
                buf.append(first[g][k % len(first[g])])
                k += 1
            batches.append(buf)
    return batches


def sample_keys(batch: Sequence[int], seed: int, epoch: int, position: int) -> list[SampleKey]:
    """Keys of global batch number ``position`` of ``epoch``: each image's augmentation seed
    is derived from ``(seed, epoch, its sample position in the epoch)``, the batch's from
    ``(seed, epoch, position)``."""
    start = position * len(batch)
    shared = derive_seed(seed, epoch, position, 0xBA7C)
    return [SampleKey(int(idx), derive_seed(seed, epoch, start + j), shared) for j, idx in enumerate(batch)]


def batches_per_epoch(groups: np.ndarray, batch_size: int) -> int:
    counts = np.bincount(np.asarray(groups, np.int64), minlength=2)
    return int(sum(-(-int(c) // batch_size) for c in counts if c > 0))


class GroupedBatchSampler(Sampler[list[SampleKey]]):
    """Infinite aspect-ratio grouped batch sampler, deterministic, resumable and DDP-sharded.

    Yields this rank's ``images_per_batch`` :class:`SampleKey`s per iteration, starting at
    stream position ``(start_epoch, start_position)`` (global batches into the epoch).
    """

    def __init__(
        self,
        groups: Sequence[int] | np.ndarray,
        images_per_batch: int,
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        start_epoch: int = 0,
        start_position: int = 0,
    ) -> None:
        if images_per_batch < 1:
            raise ValueError(f"images_per_batch must be >= 1, got {images_per_batch}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.groups = np.asarray(groups, np.int64)
        if len(self.groups) == 0:
            raise ValueError("cannot sample batches from an empty dataset")
        self.images_per_batch = int(images_per_batch)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.seed = int(seed)
        self.global_batch_size = self.images_per_batch * self.world_size
        self.num_batches_per_epoch = batches_per_epoch(self.groups, self.global_batch_size)
        self.start_epoch, self.start_position = self._normalise(start_epoch, start_position)

    def _normalise(self, epoch: int, position: int) -> tuple[int, int]:
        step = int(epoch) * self.num_batches_per_epoch + int(position)
        return divmod(step, self.num_batches_per_epoch)

    def __iter__(self) -> Iterator[list[SampleKey]]:
        epoch, position = self.start_epoch, self.start_position
        lo = self.rank * self.images_per_batch
        hi = lo + self.images_per_batch
        while True:
            batches = epoch_batches(self.groups, self.global_batch_size, self.seed, epoch)
            for pos in range(position, len(batches)):
                yield sample_keys(batches[pos], self.seed, epoch, pos)[lo:hi]
            epoch, position = epoch + 1, 0

    def state_at(self, consumed: int) -> dict[str, int]:
        """Checkpointable stream position after ``consumed`` batches from the start position."""
        epoch, position = self._normalise(self.start_epoch, self.start_position + consumed)
        return {
            "epoch": epoch,
            "position": position,
            "seed": self.seed,
            "global_batch_size": self.global_batch_size,
            "num_images": len(self.groups),
            "batches_per_epoch": self.num_batches_per_epoch,
        }


def flip_target(target: dict[str, Any], width: int) -> dict[str, Any]:
    """Horizontally mirror the boxes of a target: ``x1' = W - x2``, ``x2' = W - x1``."""
    return orient_target(target, Orientation(hflip=True), (0, width))


def orient_target(target: dict[str, Any], orientation: Orientation, size: tuple[int, int]) -> dict[str, Any]:
    """The target's boxes (and ``size``, if it has one) for its image of ``size`` (H, W) oriented."""
    out = dict(target, boxes=orientation.boxes(target["boxes"], size))
    if "size" in target:
        out["size"] = orientation.size(tuple(target["size"]))
    return out


def prepare_target(target: dict[str, Any], include_difficult: bool) -> dict[str, Any]:
    """Training target: drop crowd boxes (and difficult ones unless asked to keep them)."""
    boxes = torch.as_tensor(target["boxes"], dtype=torch.float32).reshape(-1, 4)
    labels = torch.as_tensor(target["labels"], dtype=torch.int64).reshape(-1)
    n = len(boxes)
    keep = torch.ones(n, dtype=torch.bool)
    if "iscrowd" in target:
        keep &= ~torch.as_tensor(target["iscrowd"], dtype=torch.bool).reshape(n)
    if not include_difficult and "difficult" in target:
        keep &= ~torch.as_tensor(target["difficult"], dtype=torch.bool).reshape(n)
    out = {
        "boxes": boxes[keep],
        "labels": labels[keep],
    }
    for k in ("image_id", "file_name", "size"):
        if k in target:
            out[k] = target[k]
    return out


class TrainingSet:
    """Map-style view of a detection dataset for training, indexed by :class:`SampleKey`.

    Returns ``(float image [3, H, W] in 0..1, target {"boxes", "labels", "image_id", ...})``
    with the flips decided by the key's seed and the transpose by its batch seed (``target``
    records them: ``hflip``, ``vflip``, ``transpose``).
    """

    def __init__(
        self,
        dataset: DetectionDataset,
        hflip_prob: float,
        include_difficult: bool,
        *,
        vflip_prob: float = 0.0,
        transpose_prob: float = 0.0,
    ) -> None:
        self.dataset = dataset
        self.hflip_prob = float(hflip_prob)
        self.vflip_prob = float(vflip_prob)
        self.transpose_prob = float(transpose_prob)
        self.include_difficult = bool(include_difficult)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: SampleKey | tuple[int, int]) -> tuple[torch.Tensor, dict[str, Any]]:
        key = SampleKey(*key)
        image, target = self.dataset[int(key.index)]
        target = prepare_target(target, self.include_difficult)
        rng = np.random.Generator(np.random.PCG64(int(key.seed)))
        hflip = self.hflip_prob > 0 and rng.random() < self.hflip_prob
        vflip = self.vflip_prob > 0 and rng.random() < self.vflip_prob
        shared = np.random.Generator(np.random.PCG64(int(key.batch_seed)))
        transpose = self.transpose_prob > 0 and shared.random() < self.transpose_prob
        orientation = Orientation(transpose=transpose, hflip=hflip, vflip=vflip)
        if not orientation.identity:
            size = (int(image.shape[-2]), int(image.shape[-1]))
            image = orientation.image(image)
            target = orient_target(target, orientation, size)
        target.update(hflip=hflip, vflip=vflip, transpose=transpose)
        if image.dtype == torch.uint8:
            image = image.float().div_(255.0)
        else:
            image = image.float()
        return image.contiguous(), target


def collate(batch: list[tuple[torch.Tensor, dict[str, Any]]]) -> tuple[list[torch.Tensor], list[dict[str, Any]]]:
    """``[(image, target), ...] -> ([images], [targets])`` (images keep their own sizes)."""
    return [b[0] for b in batch], [b[1] for b in batch]


def _worker_init(worker_id: int) -> None:
    """Workers need no global randomness (keys carry seeds); seed it anyway, reproducibly."""
    info = torch.utils.data.get_worker_info()
    base = info.seed if info is not None else worker_id
    np.random.seed(base % 2**32)
    import random

    random.seed(base)


@dataclass(frozen=True)
class TrainLoader:
    """The DataLoader together with its sampler (whose :meth:`state_at` goes in checkpoints)."""

    loader: DataLoader
    sampler: GroupedBatchSampler


def build_train_loader(
    dataset: DetectionDataset,
    train: TrainConfig,
    *,
    rank: int = 0,
    world_size: int = 1,
    start_epoch: int = 0,
    start_position: int = 0,
    pin_memory: bool = False,
    groups: np.ndarray | None = None,
) -> TrainLoader:
    """The training DataLoader for ``dataset`` (``num_workers=train.num_workers``).

    Creating or iterating it never touches the global torch RNG (fixed ``generator``), so the
    model's randomness is identical with 0 or N workers and across a resume.
    """
    if groups is None:
        groups = aspect_groups(dataset)
    sampler = GroupedBatchSampler(
        groups,
        train.images_per_batch,
        seed=train.seed,
        rank=rank,
        world_size=world_size,
        start_epoch=start_epoch,
        start_position=start_position,
    )
    generator = torch.Generator()
    generator.manual_seed(derive_seed(train.seed, rank, 0xDA7A))
    loader = DataLoader(
        TrainingSet(dataset, train.hflip_prob, train.include_difficult,  # type: ignore[arg-type]
                    vflip_prob=train.vflip_prob, transpose_prob=train.transpose_prob),
        batch_sampler=sampler,
        num_workers=train.num_workers,
        collate_fn=collate,
        pin_memory=pin_memory,
        persistent_workers=False,
        worker_init_fn=_worker_init if train.num_workers > 0 else None,
        generator=generator,
    )
    return TrainLoader(loader, sampler)
