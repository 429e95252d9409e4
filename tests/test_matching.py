import pytest
import torch

from torchvision.ops import box_iou

from fasterrcnn.modeling.matching import BACKGROUND, IGNORE, Matcher, match, pairwise_iou

IOU = torch.tensor(
    [
        [0.90, 0.20, 0.50, 0.00, 0.10],
        [0.10, 0.65, 0.20, 0.25, 0.05],
    ]
)


def test_rpn_rule_with_best_anchor_of_each_gt():
    m = match(IOU, fg_thresh=0.7, bg_thresh_hi=0.3, allow_low_quality=True)
    # col1: 0.65 is gt1's best -> positive; col2: 0.5 between thresholds -> ignored
    assert m.tolist() == [0, 1, IGNORE, BACKGROUND, BACKGROUND]


def test_rpn_rule_without_low_quality():
    m = match(IOU, fg_thresh=0.7, bg_thresh_hi=0.3)
    assert m.tolist() == [0, IGNORE, IGNORE, BACKGROUND, BACKGROUND]


def test_fast_rcnn_rule_with_background_range():
    m = Matcher(fg_thresh=0.5, bg_thresh_hi=0.5, bg_thresh_lo=0.1)(IOU)
    # col1: 0.65 -> fg of gt1; col2: 0.5 >= 0.5 -> fg; col4: best 0.1 -> bg (lo inclusive)
    assert m.tolist() == [0, 1, 0, BACKGROUND, BACKGROUND]
    m = Matcher(fg_thresh=0.5, bg_thresh_hi=0.5, bg_thresh_lo=0.2)(IOU)
    assert m.tolist() == [0, 1, 0, BACKGROUND, IGNORE]


def test_low_quality_ties_all_positive():
    iou = torch.tensor([[0.4, 0.4, 0.1]])
    m = match(iou, fg_thresh=0.7, bg_thresh_hi=0.3, allow_low_quality=True)
    assert m.tolist() == [0, 0, BACKGROUND]


def test_low_quality_prediction_best_for_two_gts_goes_to_larger_iou():
    iou = torch.tensor([[0.5, 0.1], [0.6, 0.0]])
    m = match(iou, fg_thresh=0.7, bg_thresh_hi=0.3, allow_low_quality=True)
    assert m.tolist() == [1, BACKGROUND]


def test_gt_without_any_overlap_makes_no_positive():
    iou = torch.tensor([[0.0, 0.0]])
    m = match(iou, fg_thresh=0.7, bg_thresh_hi=0.3, allow_low_quality=True)
    assert m.tolist() == [BACKGROUND, BACKGROUND]


def test_no_ground_truth():
    iou = torch.zeros(0, 4)
    assert match(iou, fg_thresh=0.7, bg_thresh_hi=0.3).tolist() == [BACKGROUND] * 4
    assert match(iou, fg_thresh=0.5, bg_thresh_hi=0.5, bg_thresh_lo=0.1).tolist() == [IGNORE] * 4


def test_negative_columns_are_ignored_and_never_low_quality():
    iou = torch.tensor([[-1.0, 0.2, 0.1]])
    m = match(iou, fg_thresh=0.7, bg_thresh_hi=0.3, allow_low_quality=True)
    assert m.tolist() == [IGNORE, 0, BACKGROUND]


def test_no_predictions():
    assert match(torch.zeros(3, 0), fg_thresh=0.7, bg_thresh_hi=0.3, allow_low_quality=True).numel() == 0


def test_bad_thresholds_raise():
    with pytest.raises(ValueError):
        match(IOU, fg_thresh=0.3, bg_thresh_hi=0.7)


def test_pairwise_iou_hand_values() -> None:
    a = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    b = torch.tensor([[5.0, 0.0, 15.0, 10.0], [0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]])
    torch.testing.assert_close(pairwise_iou(a, b), torch.tensor([[50 / 150, 1.0, 0.0]]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_pairwise_iou_equals_torchvision_bit_for_bit(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(500, 2, generator=g) * 300
    boxes = torch.cat([xy, xy + torch.rand(500, 2, generator=g) * 80], 1).to(dtype)
    boxes[:5, 2:] = boxes[:5, :2]  # zero-area boxes
    boxes[5, 0] = float("nan")
    gt = boxes[::50].clone()
    assert torch.equal(pairwise_iou(gt, boxes).isnan(), box_iou(gt, boxes).isnan())
    torch.testing.assert_close(pairwise_iou(gt, boxes), box_iou(gt, boxes), rtol=0, atol=0, equal_nan=True)
    assert pairwise_iou(gt[:0], boxes).shape == (0, 500) and pairwise_iou(gt, boxes[:0]).shape == (10, 0)
