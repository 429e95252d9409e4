import math

import torch
from torchvision.ops import box_iou

from fasterrcnn.modeling.box_coding import BoxCoder
from fasterrcnn.modeling.postprocess import (
    box_sizes, box_voting, class_boxes, detect, select_detections, view_agreement_scores,
)


def test_class_boxes_drop_background_and_clip():
    logits = torch.tensor([[0.0, 0.0, 0.0]])  # K = 2, uniform
    deltas = torch.zeros(1, 12)
    rois = [torch.tensor([[-5.0, 10, 30, 120]])]
    [(scores, boxes)] = class_boxes(logits, deltas, rois, [(100, 80)], coder=BoxCoder())
    torch.testing.assert_close(scores, torch.full((1, 2), 1 / 3))
    torch.testing.assert_close(boxes, torch.tensor([[[0.0, 10, 30, 100], [0.0, 10, 30, 100]]]))


def test_box_voting_hand_case():
    kept = torch.tensor([[0.0, 0, 10, 10]])
    cands = torch.tensor([
        [0.0, 0, 10, 10],   # the kept box itself, score 0.6
        [2.0, 0, 12, 10],   # IoU 80 / 120 = 0.667 with it, same class, score 0.2
        [4.0, 0, 14, 10],   # IoU 60 / 140 = 0.43: below 0.5, not a voter
        [1.0, 0, 11, 10],   # overlaps, but another class
    ])
    scores = torch.tensor([0.6, 0.2, 0.9, 0.9])
    labels = torch.tensor([1, 1, 1, 2])
    voted = box_voting(kept, torch.tensor([1]), cands, scores, labels, 0.5)
    # (0.6 * [0, 0, 10, 10] + 0.2 * [2, 0, 12, 10]) / 0.8
    torch.testing.assert_close(voted, torch.tensor([[0.5, 0.0, 10.5, 10.0]]))
    assert box_voting(torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64), cands, scores, labels, 0.5).shape == (0, 4)


def test_box_voting_draws_two_kept_boxes_together():
    # A and B survive NMS at 0.4 (IoU 4 / 16 = 0.25); C overlaps each at 7 / 13 = 0.54, so with
    # vote_iou 0.5 it votes for both, and the voted pair overlaps at IoU 0.505: the hazard the
    # config comment on vote_iou warns about (why the demo preset does not vote).
    scores = torch.tensor([[0.9], [0.8], [0.7]])
    boxes = torch.tensor([[[0.0, 0, 10, 10]], [[6.0, 0, 16, 10]], [[3.0, 0, 13, 10]]])
    out = select_detections(scores, boxes, score_thresh=0.05, nms_thresh=0.4, detections_per_img=10,
                            vote_iou=0.5)
    # A' = (0.9 A + 0.7 C) / 1.6, B' = (0.8 B + 0.7 C) / 1.5
    torch.testing.assert_close(out["boxes"], torch.tensor([[1.3125, 0, 11.3125, 10], [4.6, 0, 14.6, 10]]))
    assert math.isclose(float(box_iou(out["boxes"][:1], out["boxes"][1:])), 6.7125 / 13.2875, rel_tol=1e-5)
    plain = select_detections(scores, boxes, score_thresh=0.05, nms_thresh=0.4, detections_per_img=10)
    assert float(box_iou(plain["boxes"][:1], plain["boxes"][1:])) == 0.25


def test_select_detections_votes_only_when_asked():
    scores = torch.tensor([[0.6, 0.0], [0.2, 0.0]])  # two candidates of class 1, K = 2
    boxes = torch.tensor([[[0.0, 0, 10, 10], [0, 0, 1, 1]], [[2.0, 0, 12, 10], [0, 0, 1, 1]]])
    plain = select_detections(scores, boxes, score_thresh=0.05, nms_thresh=0.5, detections_per_img=10)
    assert plain["labels"].tolist() == [1]  # the second is suppressed (IoU 0.667)
    torch.testing.assert_close(plain["boxes"], torch.tensor([[0.0, 0, 10, 10]]))
    voted = select_detections(scores, boxes, score_thresh=0.05, nms_thresh=0.5, detections_per_img=10,
                              vote_iou=0.5)
    torch.testing.assert_close(voted["boxes"], torch.tensor([[0.5, 0.0, 10.5, 10.0]]))
    torch.testing.assert_close(voted["scores"], plain["scores"])  # voting moves boxes, not scores
    # a candidate under the score threshold does not vote
    high = select_detections(scores, boxes, score_thresh=0.3, nms_thresh=0.5, detections_per_img=10,
                             vote_iou=0.5)
    torch.testing.assert_close(high["boxes"], torch.tensor([[0.0, 0, 10, 10]]))


def test_detect_is_class_boxes_then_select():
    torch.manual_seed(0)
    logits, deltas = torch.randn(30, 4), torch.randn(30, 16) * 0.2
    xy = torch.rand(30, 2) * 60
    rois = [torch.cat([xy, xy + 10 + torch.rand(30, 2) * 30], 1)]
    kw = dict(score_thresh=0.05, nms_thresh=0.4, detections_per_img=5)
    [out] = detect(logits, deltas, rois, [(90, 90)], coder=BoxCoder(), **kw, vote_iou=0.6)
    [(s, b)] = class_boxes(logits, deltas, rois, [(90, 90)], coder=BoxCoder())
    ref = select_detections(s, b, **kw, vote_iou=0.6)
    assert len(out["boxes"]) == 5
    for k in ("boxes", "labels", "scores"):
        torch.testing.assert_close(out[k], ref[k])


def test_view_agreement_scores_hand_computed():
    a, b, a2 = [0.0, 0, 10, 10], [20.0, 20, 30, 30], [1.0, 0, 11, 10]  # IoU(a, a2) = 90 / 110
    dets = {"boxes": torch.tensor([b, a]), "labels": torch.tensor([2, 1]), "scores": torch.tensor([0.8, 0.7])}
    scores = torch.tensor([[0.7, 0.0], [0.0, 0.8], [0.6, 0.3]])  # [M, K]: rows from views 0, 0, 1
    boxes = torch.tensor([[a, a], [b, b], [a2, a2]])  # [M, K, 4]
    views = torch.tensor([0, 0, 1])
    out = view_agreement_scores(dets, scores, boxes, views, 2, score_thresh=0.05)
    # a: sqrt(0.7 * (0.7 + 0.6) / 2); b: view 1 has only a class-1 box near a -> sqrt(0.8 * 0.4)
    torch.testing.assert_close(out["scores"], torch.tensor([math.sqrt(0.7 * 0.65), math.sqrt(0.32)]))
    assert out["labels"].tolist() == [1, 2] and out["boxes"].tolist() == [a, b]  # re-ranked
    # below the score threshold a candidate gives no support
    low = view_agreement_scores(dets, scores, boxes, views, 2, score_thresh=0.65)
    torch.testing.assert_close(low["scores"], torch.tensor([math.sqrt(0.32), math.sqrt(0.7 * 0.35)]))
    # one view, or nothing detected: unchanged
    assert view_agreement_scores(dets, scores, boxes, views, 1, score_thresh=0.05) is dets
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64), "scores": torch.zeros(0)}
    assert view_agreement_scores(empty, scores, boxes, views, 2, score_thresh=0.05) is empty


def test_box_sizes():
    boxes = torch.tensor([[0.0, 0, 10, 10], [2, 3, 6, 12], [5, 5, 3, 3]])
    torch.testing.assert_close(box_sizes(boxes), torch.tensor([10.0, 6.0, 0.0]))
    assert box_sizes(torch.zeros(2, 3, 4)).shape == (2, 3)


def test_view_agreement_scores_over_the_views_whose_range_holds_the_box():
    a, b, a2 = [0.0, 0, 10, 10], [20.0, 20, 40, 40], [1.0, 0, 11, 10]  # sizes 10, 20, 10
    dets = {"boxes": torch.tensor([b, a]), "labels": torch.tensor([2, 1]), "scores": torch.tensor([0.8, 0.7])}
    scores = torch.tensor([[0.7, 0.0], [0.0, 0.8], [0.6, 0.3]])  # rows from views 0, 0, 1
    boxes = torch.tensor([[a, a], [b, b], [a2, a2]])
    views = torch.tensor([0, 0, 1])
    # view 1 holds boxes under 15 px: a is supported by both views, b by view 0 alone
    out = view_agreement_scores(dets, scores, boxes, views, 2, score_thresh=0.05,
                                view_max_box=torch.tensor([math.inf, 15.0]))
    torch.testing.assert_close(out["scores"], torch.tensor([0.8, math.sqrt(0.7 * 0.65)]))
    assert out["labels"].tolist() == [2, 1]
    # a range holding every box: the plain mean over the views
    wide = view_agreement_scores(dets, scores, boxes, views, 2, score_thresh=0.05,
                                 view_max_box=torch.tensor([math.inf, math.inf]))
    plain = view_agreement_scores(dets, scores, boxes, views, 2, score_thresh=0.05)
    torch.testing.assert_close(wide["scores"], plain["scores"])
    torch.testing.assert_close(plain["scores"], torch.tensor([math.sqrt(0.7 * 0.65), math.sqrt(0.4 * 0.8)]))
