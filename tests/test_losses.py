import math

import pytest
import torch

from fasterrcnn.modeling.losses import (
    box_balanced_example_weights, box_balanced_weights, detection_losses, example_losses, giou_losses,
    smooth_l1,
)


def test_smooth_l1_hand_values():
    x = torch.tensor([0.5, 2.0, -0.05, 1.0])
    t = torch.zeros(4)
    torch.testing.assert_close(smooth_l1(x, t, 1.0), torch.tensor([0.125, 1.5, 0.00125, 0.5]))
    torch.testing.assert_close(
        smooth_l1(x, t, 1 / 9), torch.tensor([0.5 - 1 / 18, 2 - 1 / 18, 0.5 * 0.0025 * 9, 1 - 1 / 18])
    )
    torch.testing.assert_close(smooth_l1(x, t, 0.0), x.abs())


def test_detection_losses_hand_case():
    logits = torch.tensor([[0.0, 0.0], [0.0, math.log(3.0)]])
    labels = torch.tensor([1, 1])
    # CE: log 2 and log(4/3)
    deltas = torch.tensor([[0.5, 0.0, 0.0, 2.0]])
    targets = torch.zeros(1, 4)
    cls, reg = detection_losses(logits, labels, deltas, targets, beta=1.0)
    torch.testing.assert_close(cls, torch.tensor((math.log(2) + math.log(4 / 3)) / 2))
    torch.testing.assert_close(reg, torch.tensor((0.125 + 1.5) / 2))  # sum over fg / sampled


def test_giou_losses_hand_values():
    box = torch.tensor([[0.0, 0, 10, 10]] * 4)
    gt = torch.tensor([[0.0, 0, 10, 10],    # the same box: 0
                       [5.0, 0, 15, 10],    # IoU 50 / 150, hull = union: 1 - 1/3
                       [20.0, 0, 30, 10],   # disjoint: IoU 0, hull 300, union 200: 1 + 1/3
                       [2.0, 2, 4, 4]])     # inside: IoU 4 / 100, hull = union: 1 - 0.04
    torch.testing.assert_close(giou_losses(box, gt), torch.tensor([0.0, 2 / 3, 4 / 3, 0.96]))
    assert giou_losses(torch.zeros(0, 4), torch.zeros(0, 4)).shape == (0,)


def test_detection_losses_with_given_box_losses():
    logits = torch.tensor([[0.0, 0.0], [0.0, math.log(3.0)], [1.0, 0.0]])
    labels = torch.tensor([1, 1, 0])
    deltas = torch.full((2, 4), 7.0)  # ignored: box_losses replaces the smooth L1 of the deltas
    cls, reg = detection_losses(logits, labels, deltas, torch.zeros(2, 4), beta=1.0,
                                box_weights=torch.tensor([2.0, 0.5]),
                                box_losses=torch.tensor([0.25, 1.0]))
    torch.testing.assert_close(reg, torch.tensor((2 * 0.25 + 0.5 * 1.0) / 3))  # / sampled
    _, reg_no_targets = detection_losses(logits, labels, deltas, None, beta=1.0,
                                         box_weights=torch.tensor([2.0, 0.5]),
                                         box_losses=torch.tensor([0.25, 1.0]))
    torch.testing.assert_close(reg_no_targets, reg)  # no delta targets needed then
    with pytest.raises(ValueError, match="box_targets or box_losses"):
        detection_losses(logits, labels, deltas, None, beta=1.0)


def test_no_samples_gives_zero_with_graph():
    logits = torch.zeros(0, 2, requires_grad=True)
    cls, reg = detection_losses(logits, torch.zeros(0, dtype=torch.long), torch.zeros(0, 4), torch.zeros(0, 4), beta=1.0)
    assert cls.item() == 0 and reg.item() == 0
    cls.backward()


def test_background_only_has_no_regression_loss():
    logits = torch.tensor([[2.0, -1.0]])
    cls, reg = detection_losses(logits, torch.tensor([0]), torch.zeros(0, 4), torch.zeros(0, 4), beta=1.0)
    torch.testing.assert_close(cls, torch.log1p(torch.exp(torch.tensor(-3.0))))
    assert reg.item() == 0


def test_box_balanced_weights_hand_case():
    # 4 positives: 3 on box 0, 1 on box 7 -> each box carries 2 of the total 4
    w = box_balanced_weights(torch.tensor([0, 7, 0, 0]))
    torch.testing.assert_close(w, torch.tensor([2 / 3, 2.0, 2 / 3, 2 / 3]))
    torch.testing.assert_close(box_balanced_weights(torch.tensor([5, 5])), torch.ones(2))
    assert box_balanced_weights(torch.zeros(0, dtype=torch.int64)).shape == (0,)


def test_weighted_detection_losses_hand_case():
    logits = torch.tensor([[0.0, 0.0], [0.0, math.log(3.0)]])
    labels = torch.tensor([1, 0])  # CE: log 2 and log 4
    deltas = torch.tensor([[0.5, 0.0, 0.0, 2.0]])
    targets = torch.zeros(1, 4)
    cls, reg = detection_losses(logits, labels, deltas, targets, beta=1.0,
                                class_weights=torch.tensor([3.0, 1.0]),
                                box_weights=torch.tensor([0.5]))
    torch.testing.assert_close(cls, torch.tensor((3 * math.log(2) + math.log(4)) / 2))
    torch.testing.assert_close(reg, torch.tensor(0.5 * (0.125 + 1.5) / 2))
    ones = detection_losses(logits, labels, deltas, targets, beta=1.0,
                            class_weights=torch.ones(2), box_weights=torch.ones(1))
    plain = detection_losses(logits, labels, deltas, targets, beta=1.0)
    torch.testing.assert_close(ones, plain)


def test_box_balanced_example_weights_positives_first():
    w = box_balanced_example_weights(torch.tensor([0, 7, 0, 0]), 6)
    torch.testing.assert_close(w, torch.tensor([2 / 3, 2.0, 2 / 3, 2 / 3, 1.0, 1.0]))
    torch.testing.assert_close(box_balanced_example_weights(torch.zeros(0, dtype=torch.int64), 3),
                               torch.ones(3))


def test_example_losses_hand_case():
    logits = torch.zeros(3, 3)  # uniform: log loss ln 3 each
    targets = torch.tensor([2, 0, 1])
    deltas = torch.tensor([[0.5, 0.0, 0.0, 2.0], [9.0, 9.0, 9.0, 9.0], [0.0, 0.0, 0.0, 0.0]])
    box_targets = torch.zeros(3, 4)
    out = example_losses(logits, targets, deltas, box_targets, beta=1.0)
    # row 0: 0.5 * 0.5^2 + (2 - 0.5) = 1.625; row 1 is background: no box term; row 2: 0
    torch.testing.assert_close(out, torch.tensor([math.log(3) + 1.625, math.log(3), math.log(3)]))
