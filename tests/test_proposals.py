import math

import torch

from fasterrcnn.modeling.box_coding import BoxCoder
from fasterrcnn.modeling.proposals import _top_valid_anchors, add_gt_boxes, first_kept, select_proposals

ANCHORS = torch.tensor(
    [
        [0.0, 0, 20, 20],  # 0
        [1.0, 1, 21, 21],  # 1: overlaps 0 heavily
        [50.0, 50, 80, 80],  # 2
        [90.0, 90, 92, 92],  # 3: tiny
        [-30.0, -30, 10, 10],  # 4: crosses the border -> clipped to [0, 0, 10, 10]
    ]
)


def _select(scores, deltas=None, **kw):
    args = dict(pre_nms_top_n=100, post_nms_top_n=100, nms_thresh=0.7, min_size=4.0)
    args.update(kw)
    if deltas is None:
        deltas = torch.zeros(1, len(ANCHORS), 4)
    return select_proposals(ANCHORS, scores, deltas, [(100, 100)], coder=BoxCoder(), **args)


def test_nms_clip_and_min_size():
    boxes, scores = _select(torch.tensor([[5.0, 4.0, 3.0, 9.0, 1.0]]))
    # anchor 3 is 2x2 < min_size; anchor 1 suppressed by anchor 0 (IoU 0.82 > 0.7)
    torch.testing.assert_close(boxes[0], torch.tensor([[0.0, 0, 20, 20], [50, 50, 80, 80], [0, 0, 10, 10]]))
    torch.testing.assert_close(scores[0], torch.tensor([5.0, 3.0, 1.0]))


def test_top_n_limits():
    s = torch.tensor([[5.0, 4.0, 3.0, 9.0, 1.0]])
    boxes, _ = _select(s, pre_nms_top_n=2)  # anchors 0, 1 survive the top-2, 1 is suppressed
    assert len(boxes[0]) == 1
    boxes, _ = _select(s, post_nms_top_n=2)
    assert len(boxes[0]) == 2


def test_inf_and_nan_never_reach_the_output():
    s = torch.tensor([[math.inf, math.nan, -math.inf, 1.0, 2.0]])
    d = torch.zeros(1, 5, 4)
    d[0, 4] = torch.tensor([math.nan, 0, 0, 0])
    boxes, scores = _select(s, d, min_size=0.0)
    assert torch.isfinite(boxes[0]).all()
    assert not torch.isnan(scores[0]).any()
    # non-finite scores (+inf, NaN, -inf: anchors 0-2) and the NaN box (anchor 4) are dropped
    torch.testing.assert_close(boxes[0], ANCHORS[3:4])
    torch.testing.assert_close(scores[0], torch.tensor([1.0]))


def test_empty_when_everything_filtered():
    boxes, scores = _select(torch.zeros(1, 5), min_size=1000.0)
    assert boxes[0].shape == (0, 4) and scores[0].shape == (0,)


def test_add_gt_boxes():
    props = [torch.tensor([[0.0, 0, 10, 10]])]
    gts = [torch.tensor([[0.0, 0, 10, 20]])]
    merged = add_gt_boxes(props, gts)
    torch.testing.assert_close(merged[0], torch.tensor([[0.0, 0, 10, 10], [0.0, 0, 10, 20]]))


def _select_by_decoding_everything(anchors, scores, deltas, size, coder, pre_nms_top_n, min_size):
    """The reference order of the paper's proposal layer: decode and clip every anchor, drop the
    invalid (non-finite, small) boxes, then keep the top-N by score."""
    from torchvision.ops import clip_boxes_to_image, remove_small_boxes

    boxes = clip_boxes_to_image(coder.decode(deltas, anchors), size)
    keep = (torch.isfinite(scores) & torch.isfinite(boxes).all(dim=1)).nonzero(as_tuple=True)[0]
    keep = keep[remove_small_boxes(boxes[keep], min_size)]
    s, top = scores[keep].topk(min(pre_nms_top_n, len(keep)))
    return boxes[keep][top], s


def test_decoding_only_the_best_anchors_gives_the_same_boxes():
    g = torch.Generator().manual_seed(0)
    coder = BoxCoder()
    for trial in range(6):
        n = 3000
        xy = torch.rand(n, 2, generator=g) * 200 - 20
        wh = torch.rand(n, 2, generator=g) * 60 + 1  # many anchors below min_size after clipping
        anchors = torch.cat((xy, xy + wh), dim=1)
        scores = torch.randn(n, generator=g)
        deltas = torch.randn(n, 4, generator=g) * 0.5
        bad = torch.randperm(n, generator=g)[:300]
        scores[bad[:100]] = float("nan")
        scores[bad[100:150]] = float("inf")
        scores[bad[150:200]] = float("-inf")
        deltas[bad[200:], 1] = float("nan")
        if trial % 2:  # most of the best-scored boxes tiny: the search must look further down
            scores[wh.min(dim=1).values < 8] += 10.0
        top_n = (50, 400, 2000)[trial % 3]
        ref_boxes, ref_scores = _select_by_decoding_everything(
            anchors, scores, deltas, (160, 180), coder, top_n, 8.0)
        boxes, s, _ = _top_valid_anchors(anchors, scores, deltas, (160, 180), coder=coder, top_n=top_n,
                                    min_size=8.0)
        assert len(boxes) == min(top_n, len(ref_boxes))
        torch.testing.assert_close(boxes, ref_boxes, rtol=0, atol=0)
        torch.testing.assert_close(s, ref_scores, rtol=0, atol=0)
        assert torch.isfinite(boxes).all() and torch.isfinite(s).all()


def test_no_valid_box_at_all():
    boxes, scores = _select(torch.full((1, len(ANCHORS)), float("nan")))
    assert boxes[0].shape == (0, 4) and scores[0].shape == (0,)


def test_first_kept_equals_nms_over_all_boxes():
    """NMS on a growing prefix of the ranked boxes keeps exactly what NMS over all keeps first:
    random scenes, many equal scores, fewer kept boxes than asked (the prefix grows to all)."""
    from torchvision.ops import nms

    g = torch.Generator().manual_seed(0)
    for trial in range(40):
        n = int(torch.randint(1, 3000, (1,), generator=g))
        xy = torch.rand(n, 2, generator=g) * 300
        boxes = torch.cat([xy, xy + torch.rand(n, 2, generator=g) * 60 + 1], dim=1)
        scores = torch.rand(n, generator=g)
        if trial % 2:
            scores = (scores * 10).round() / 10  # ties everywhere
        scores, order = scores.sort(descending=True, stable=True)
        boxes = boxes[order]
        for count in (1, 30, 300, 5000):
            for thresh in (0.3, 0.7):
                assert torch.equal(first_kept(boxes, scores, thresh, count), nms(boxes, scores, thresh)[:count])
    # one big box over many small ones: the best 2 * count boxes keep one, the prefix must grow
    boxes = torch.cat([torch.tensor([[0.0, 0.0, 100.0, 100.0]]).repeat(50, 1),
                       torch.tensor([[200.0, 200.0, 210.0, 210.0]])])
    scores = torch.linspace(1.0, 0.5, 51)
    assert first_kept(boxes, scores, 0.5, 2).tolist() == [0, 50]
    assert first_kept(boxes[:0], scores[:0], 0.5, 3).numel() == 0


def test_retain_freed_memory_sets_glibc_malloc_or_stays_off(monkeypatch):
    from fasterrcnn.cli import common

    calls = []

    class FakeLibc:
        def mallopt(self, param, value):
            calls.append((param, value))
            return 1

    monkeypatch.setattr(common.ctypes, "CDLL", lambda name: FakeLibc())
    assert common.retain_freed_memory() is True
    assert calls == [(-3, 32 << 20), (-1, 2**31 - 1)]  # M_MMAP_THRESHOLD, M_TRIM_THRESHOLD
    monkeypatch.setenv("FASTERRCNN_MALLOC", "system")
    assert common.retain_freed_memory() is False and len(calls) == 2
    monkeypatch.delenv("FASTERRCNN_MALLOC")

    def no_libc(name):
        raise OSError("no C library by that name")

    monkeypatch.setattr(common.ctypes, "CDLL", no_libc)
    assert common.retain_freed_memory() is False
