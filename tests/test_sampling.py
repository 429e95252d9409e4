import pytest
import torch

from fasterrcnn.modeling.sampling import HardExampleMiner, Sampler, hard_examples, subsample


def _masks(n_pos, n_neg, n_ign=0):
    pos = torch.zeros(n_pos + n_neg + n_ign, dtype=torch.bool)
    neg = torch.zeros_like(pos)
    pos[:n_pos] = True
    neg[n_pos : n_pos + n_neg] = True
    return pos, neg


def test_balanced_when_enough_positives():
    pos, neg = _masks(200, 1000, 50)
    p, n = subsample(pos, neg, 256, 0.5)
    assert len(p) == 128 and len(n) == 128
    assert pos[p].all() and neg[n].all()
    assert len(set(p.tolist())) == 128


def test_negatives_fill_when_few_positives():
    pos, neg = _masks(10, 1000)
    p, n = Sampler(256, 0.5)(pos, neg)
    assert len(p) == 10 and len(n) == 246


def test_roi_fraction():
    pos, neg = _masks(100, 100)
    p, n = subsample(pos, neg, 128, 0.25)
    assert len(p) == 32 and len(n) == 96


def test_too_few_of_everything():
    pos, neg = _masks(3, 5, 10)
    p, n = subsample(pos, neg, 256, 0.5)
    assert sorted(p.tolist()) == [0, 1, 2] and sorted(n.tolist()) == [3, 4, 5, 6, 7]


def test_nothing_to_sample():
    pos, neg = _masks(0, 0, 4)
    p, n = subsample(pos, neg, 256, 0.5)
    assert p.numel() == 0 and n.numel() == 0


def test_overlapping_masks_rejected():
    pos = torch.tensor([True, False])
    with pytest.raises(ValueError):
        subsample(pos, pos.clone(), 4, 0.5)


def test_seeded_generator_is_deterministic():
    pos, neg = _masks(300, 300)
    a = subsample(pos, neg, 64, 0.5, torch.Generator().manual_seed(3))
    b = subsample(pos, neg, 64, 0.5, torch.Generator().manual_seed(3))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_hard_examples_highest_loss_first_after_nms():
    boxes = torch.tensor(
        [[0.0, 0, 10, 10], [0, 0, 10, 9], [50, 50, 60, 60], [100, 100, 110, 110], [0, 0, 30, 30]]
    )
    losses = torch.tensor([3.0, 2.5, 1.0, 0.5, 2.0])
    # box 1 overlaps the harder box 0 at IoU 0.9: skipped; box 4 (IoU 0.11 with box 0) kept
    assert hard_examples(losses, boxes, 3, 0.7).tolist() == [0, 4, 2]
    assert hard_examples(losses, boxes, 10, 0.7).tolist() == [0, 4, 2, 3]
    assert hard_examples(losses, boxes, 2, 1.0).tolist() == [0, 1]  # no NMS
    assert HardExampleMiner(2, 0.7)(losses, boxes).tolist() == [0, 4]
    assert hard_examples(torch.zeros(0), torch.zeros(0, 4), 4, 0.7).numel() == 0
