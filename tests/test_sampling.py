import pytest
import torch

from fasterrcnn.modeling.sampling import Sampler, subsample


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
