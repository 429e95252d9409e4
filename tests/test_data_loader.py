"""Training data pipeline: flips, target preparation, grouped/infinite/resumable/sharded sampler."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from fasterrcnn.data.loader import (
    GroupedBatchSampler,
    SampleKey,
    TrainingSet,
    aspect_groups,
    batches_per_epoch,
    build_train_loader,
    collate,
    epoch_batches,
    flip_target,
    prepare_target,
)
from test_engine_trainer import ToyDataset, toy_config


def take(sampler: GroupedBatchSampler, n: int) -> list[list[SampleKey]]:
    return list(itertools.islice(iter(sampler), n))


def test_flip_target_math() -> None:
    t = {"boxes": torch.tensor([[10.0, 5.0, 30.0, 25.0], [0.0, 0.0, 100.0, 50.0]]), "labels": torch.tensor([1, 2])}
    f = flip_target(t, 100)
    assert f["boxes"].tolist() == [[70.0, 5.0, 90.0, 25.0], [0.0, 0.0, 100.0, 50.0]]
    assert torch.equal(flip_target(f, 100)["boxes"], t["boxes"])
    assert t["boxes"][0, 0] == 10.0  # input untouched


def test_prepare_target_drops_difficult_and_crowd() -> None:
    _, target = ToyDataset(2, extra=True)[0]
    kept = prepare_target(target, include_difficult=False)
    assert len(kept["boxes"]) == 1 and kept["labels"].tolist() == [1]
    with_difficult = prepare_target(target, include_difficult=True)
    assert with_difficult["labels"].tolist() == [1, 2]  # difficult kept, crowd still dropped
    assert kept["boxes"].dtype == torch.float32 and kept["labels"].dtype == torch.int64
    assert kept["image_id"] == 0 and kept["size"] == target["size"]


def test_training_set_flip_is_consistent_and_seeded() -> None:
    ds = ToyDataset(2)
    ts = TrainingSet(ds, hflip_prob=0.5, include_difficult=False)
    raw, target = ds[0]
    flips = []
    for seed in range(40):
        img, t = ts[SampleKey(0, seed)]
        assert img.dtype == torch.float32 and 0.0 <= img.min() and img.max() <= 1.0
        x1, y1, x2, y2 = t["boxes"][0].int().tolist()
        inside = img[:, y1:y2, x1:x2]
        assert torch.allclose(inside, inside[:, :1, :1].expand_as(inside))  # the box is on the rectangle
        expected = raw.flip(-1) if t["hflip"] else raw
        assert torch.equal(img, expected.float() / 255)
        flips.append(t["hflip"])
        img2, t2 = ts[SampleKey(0, seed)]
        assert torch.equal(img, img2) and t2["hflip"] == t["hflip"]
    assert 5 < sum(flips) < 35
    never = TrainingSet(ds, hflip_prob=0.0, include_difficult=False)
    assert not any(never[SampleKey(0, s)][1]["hflip"] for s in range(10))


def test_training_set_vflip_and_transpose() -> None:
    """Up-down flips per image, transposes per batch (one aspect per batch); boxes follow."""
    ds = ToyDataset(4)
    ts = TrainingSet(ds, hflip_prob=0.5, include_difficult=False, vflip_prob=0.5, transpose_prob=0.5)
    seen = set()
    for seed in range(40):
        for index in (0, 1):
            raw, _ = ds[index]
            img, t = ts[SampleKey(index, seed, batch_seed=1000 + seed)]
            expected = raw.transpose(-1, -2) if t["transpose"] else raw
            expected = expected.flip(-1) if t["hflip"] else expected
            expected = expected.flip(-2) if t["vflip"] else expected
            assert torch.equal(img, expected.float() / 255)
            x1, y1, x2, y2 = t["boxes"][0].int().tolist()
            inside = img[:, y1:y2, x1:x2]
            assert torch.allclose(inside, inside[:, :1, :1].expand_as(inside))  # on the rectangle
            assert t["size"] == tuple(img.shape[-2:])
            seen.add((t["transpose"], t["hflip"], t["vflip"]))
        # both images of one batch seed share the transpose
        assert ts[SampleKey(0, seed, seed)][1]["transpose"] == ts[SampleKey(1, seed + 1, seed)][1]["transpose"]
    assert len(seen) == 8  # every orientation occurs
    plain = TrainingSet(ds, hflip_prob=0.5, include_difficult=False)
    for seed in range(10):  # the hflip draw is the same with or without the other options
        assert plain[SampleKey(0, seed)][1]["hflip"] == ts[SampleKey(0, seed)][1]["hflip"]
        assert not plain[SampleKey(0, seed)][1]["transpose"]


def test_sample_keys_share_a_batch_seed() -> None:
    sampler = GroupedBatchSampler(np.zeros(8, np.int64), 4, seed=3)
    first, second = take(sampler, 2)
    assert len({k.batch_seed for k in first}) == 1 and len({k.seed for k in first}) == 4
    assert first[0].batch_seed != second[0].batch_seed


def test_epoch_batches_grouped_complete_and_deterministic() -> None:
    groups = np.array([0, 1] * 5 + [0, 0, 0])  # 8 landscape, 5 portrait
    b1 = epoch_batches(groups, 3, seed=1, epoch=0)
    assert b1 == epoch_batches(groups, 3, seed=1, epoch=0)
    assert b1 != epoch_batches(groups, 3, seed=1, epoch=1)
    assert b1 != epoch_batches(groups, 3, seed=2, epoch=0)
    assert len(b1) == batches_per_epoch(groups, 3) == 3 + 2
    for b in b1:
        assert len(b) == 3 and len({int(groups[i]) for i in b}) == 1
    assert set(itertools.chain(*b1)) == set(range(13))  # every image every epoch
    # a group smaller than the batch still yields a (cyclically completed) batch
    tiny = epoch_batches(np.array([0, 1]), 4, seed=0, epoch=0)
    assert sorted(map(sorted, tiny)) == [[0, 0, 0, 0], [1, 1, 1, 1]]
    with pytest.raises(ValueError):
        epoch_batches(np.array([], np.int64), 2, 0, 0)


def test_sampler_infinite_and_resumable() -> None:
    groups = aspect_groups(ToyDataset(7))
    assert groups.tolist() == [0, 1, 0, 1, 0, 1, 0]
    s = GroupedBatchSampler(groups, 2, seed=3)
    assert s.num_batches_per_epoch == 4
    stream = take(s, 13)  # more than three epochs
    for k in range(0, 13):
        state = s.state_at(k)
        assert (state["epoch"], state["position"]) == divmod(k, 4)
        resumed = GroupedBatchSampler(groups, 2, seed=3, start_epoch=state["epoch"],
                                      start_position=state["position"])
        assert take(resumed, 13 - k) == stream[k:]
    # the same position expressed differently (position beyond an epoch) is normalised
    assert take(GroupedBatchSampler(groups, 2, seed=3, start_epoch=0, start_position=5), 2) == stream[5:7]
    # augmentation seeds differ per sample position and per epoch
    seeds = [k.seed for b in stream for k in b]
    assert len(set(seeds)) == len(seeds)


def test_sampler_sharding_matches_single_process() -> None:
    groups = aspect_groups(ToyDataset(11))
    single = take(GroupedBatchSampler(groups, 4, seed=5), 9)
    ranks = [take(GroupedBatchSampler(groups, 2, seed=5, rank=r, world_size=2), 9) for r in range(2)]
    for it in range(9):
        assert ranks[0][it] + ranks[1][it] == single[it]  # same images, same augmentation seeds
        assert {k.index for k in ranks[0][it]}.isdisjoint({k.index for k in ranks[1][it]}) or \
            len(set(k.index for k in single[it])) < 4  # only a completed tail batch may repeat
    # resume on one rank
    r1 = GroupedBatchSampler(groups, 2, seed=5, rank=1, world_size=2, start_epoch=1, start_position=1)
    n = r1.num_batches_per_epoch
    assert take(r1, 3) == ranks[1][n + 1:n + 4]
    with pytest.raises(ValueError):
        GroupedBatchSampler(groups, 2, rank=2, world_size=2)


@pytest.mark.parametrize("workers", [0, 1])
def test_loader_does_not_touch_global_rng_and_is_worker_independent(workers: int) -> None:
    ds = ToyDataset(6, extra=True)
    cfg = toy_config(num_workers=workers, hflip_prob=0.5, images_per_batch=2)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    tl = build_train_loader(ds, cfg.train)
    it = iter(tl.loader)
    batches = [next(it) for _ in range(5)]
    del it
    assert torch.equal(torch.rand(3), expected)
    ref = build_train_loader(ds, toy_config(num_workers=0, hflip_prob=0.5).train)
    ref_batches = list(itertools.islice(iter(ref.loader), 5))
    for (imgs, tgts), (rimgs, rtgts) in zip(batches, ref_batches):
        assert len(imgs) == 2 and isinstance(tgts[0], dict)
        for a, b in zip(imgs, rimgs):
            assert torch.equal(a, b)
        for a, b in zip(tgts, rtgts):
            assert torch.equal(a["boxes"], b["boxes"]) and a["hflip"] == b["hflip"]
            assert len(a["boxes"]) == 1  # difficult and crowd boxes dropped


def test_collate_keeps_sizes() -> None:
    ts = TrainingSet(ToyDataset(2), 0.0, False)
    images, targets = collate([ts[SampleKey(0, 0)], ts[SampleKey(1, 0)]])
    assert images[0].shape != images[1].shape and len(targets) == 2
