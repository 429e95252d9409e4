import pytest
import torch
import torch.nn.functional as F

from fasterrcnn.modeling.anchors import AnchorGenerator
from fasterrcnn.modeling.box_coding import BoxCoder
from fasterrcnn.modeling.losses import box_balanced_weights
from fasterrcnn.modeling.matching import BACKGROUND, IGNORE, Matcher
from fasterrcnn.modeling.rpn import ProposalSettings, RegionProposalNetwork, RPNHead, label_anchors
from fasterrcnn.modeling.sampling import Sampler

RPN_MATCHER = Matcher(0.7, 0.3, 0.0, True)


def _rpn(channels=8, sizes=(32.0,), ratios=(0.5, 1.0, 2.0), stride=16, weighting="anchor"):
    gen = AnchorGenerator({"p4": sizes}, ratios, {"p4": stride})
    return RegionProposalNetwork(
        RPNHead(channels, channels, gen.num_anchors),
        gen,
        matcher=RPN_MATCHER,
        sampler=Sampler(256, 0.5),
        coder=BoxCoder(),
        train_settings=ProposalSettings(2000, 200, 0.7, 0.0),
        test_settings=ProposalSettings(1000, 50, 0.7, 0.0),
        positive_weighting=weighting,
    )


def test_head_shapes_and_channel_layout():
    head = RPNHead(4, 4, 3)
    x = torch.randn(2, 4, 5, 6)
    logits, deltas = head(x)
    assert logits.shape == (2, 5 * 6 * 3, 2) and deltas.shape == (2, 5 * 6 * 3, 4)
    # cls channels [bg a0..a2, fg a0..a2]: make only the fg channel of anchor 1 respond
    with torch.no_grad():
        head.cls_logits.weight.zero_()
        head.cls_logits.bias.zero_()
        head.cls_logits.bias[3 + 1] = 5.0
        head.bbox_pred.weight.zero_()
        head.bbox_pred.bias.zero_()
        head.bbox_pred.bias[4 * 2 + 3] = 7.0  # dh of anchor 2
    logits, deltas = head(x)
    a = torch.arange(logits.shape[1]) % 3
    assert (logits[:, a == 1, 1] == 5.0).all() and (logits[:, a != 1, 1] == 0).all()
    assert (logits[..., 0] == 0).all()
    assert (deltas[:, a == 2, 3] == 7.0).all() and (deltas[:, a != 2] == 0).all()


def test_head_conv_depth_stacks_3x3_convs_before_the_outputs():
    torch.manual_seed(0)
    deep = RPNHead(4, 6, 3, conv_depth=3)
    assert len(deep.extra_convs) == 2 and deep.extra_convs[0].weight.shape == (6, 6, 3, 3)
    x = torch.randn(2, 4, 5, 6)
    t = F.relu(deep.conv(x))
    for conv in deep.extra_convs:
        t = F.relu(conv(t))
    logits, _ = deep(x)
    torch.testing.assert_close(logits[..., 1], deep.cls_logits(t)[:, 3:].permute(0, 2, 3, 1).reshape(2, -1))
    # depth 1 keeps the paper's head: the same parameters (names and values) as before conv_depth
    torch.manual_seed(0)
    one = RPNHead(4, 6, 3)
    assert [k for k in one.state_dict()] == ["conv.weight", "conv.bias", "cls_logits.weight", "cls_logits.bias",
                                             "bbox_pred.weight", "bbox_pred.bias"]
    with pytest.raises(ValueError, match="conv_depth"):
        RPNHead(4, 6, 3, conv_depth=0)


def test_label_anchors_ignores_cross_boundary():
    anchors = torch.tensor([[0.0, 0, 32, 32], [-8, 0, 24, 32], [40, 40, 72, 72], [0, 0, 8, 8]])
    gt = torch.tensor([[-4.0, 0, 28, 32]])
    m = label_anchors(anchors, gt, (100, 100), matcher=RPN_MATCHER, straddle_thresh=0.0)
    # anchor 1 would be the best match but crosses the border: ignored; anchor 0 (IoU 0.78) fg
    assert m.tolist() == [0, IGNORE, BACKGROUND, BACKGROUND]
    m = label_anchors(anchors, gt, (100, 100), matcher=RPN_MATCHER, straddle_thresh=None)
    assert m.tolist() == [0, 0, BACKGROUND, BACKGROUND]


def test_label_anchors_without_ground_truth():
    anchors = torch.tensor([[0.0, 0, 32, 32], [-8, 0, 24, 32]])
    m = label_anchors(anchors, torch.zeros(0, 4), (64, 64), matcher=RPN_MATCHER, straddle_thresh=0.0)
    assert m.tolist() == [BACKGROUND, IGNORE]


def test_loss_and_proposals_end_to_end():
    rpn = _rpn()
    feats = {"p4": torch.randn(2, 8, 6, 8)}
    out = rpn(feats)
    assert out.anchors.shape == (6 * 8 * 3, 4)
    sizes = [(96, 128), (80, 100)]
    gts = [torch.tensor([[10.0, 10, 50, 40], [60, 20, 100, 90]]), torch.zeros(0, 4)]
    losses = rpn.loss(out, sizes, gts)
    assert set(losses) == {"rpn_cls", "rpn_reg"}
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert rpn.head.conv.weight.grad is not None
    boxes, scores = rpn.propose(out, sizes, training=False)
    assert len(boxes) == 2 and all(0 < len(b) <= 50 for b in boxes)
    assert all(((s >= 0) & (s <= 1)).all() for s in scores)
    for b, (h, w) in zip(boxes, sizes):
        assert (b[:, 2] <= w).all() and (b[:, 3] <= h).all() and (b[:, :2] >= 0).all()
    boxes_train, _ = rpn.propose(out, sizes, training=True)
    assert all(len(bt) >= len(b) for bt, b in zip(boxes_train, boxes))


def test_box_weighting_counts_each_box_once():
    """With one positive anchor on a small box and many on a big one, "box" weighting gives the
    small box's anchor half the positive weight; with a single box it equals the paper's loss."""
    torch.manual_seed(0)
    sizes = [(128, 128)]
    feats = {"p4": torch.randn(1, 8, 8, 8)}
    big_and_small = [torch.tensor([[8.0, 8, 120, 120], [40.0, 40, 72, 72]])]
    paper, box = _rpn(sizes=(32.0, 64.0, 128.0)), _rpn(sizes=(32.0, 64.0, 128.0), weighting="box")
    for layer in (paper.head.conv, paper.head.cls_logits):  # logits far from 0: unequal losses
        torch.nn.init.normal_(layer.weight, std=0.5)
    box.load_state_dict(paper.state_dict())
    out = paper(feats)
    matched = label_anchors(out.anchors, big_and_small[0], sizes[0], matcher=RPN_MATCHER,
                            straddle_thresh=0.0)
    counts = torch.bincount(matched[matched >= 0], minlength=2)
    assert counts[0] != counts[1]  # unequal numbers of positives, so the weighting matters
    torch.manual_seed(1)
    a = paper.loss(out, sizes, big_and_small)
    torch.manual_seed(1)
    b = box.loss(out, sizes, big_and_small)
    # same sampled anchors (all positives, same negatives): only the positives' terms change
    pos = (matched >= 0).nonzero()[:, 0]
    ce = F.cross_entropy(out.objectness_logits[0, pos], torch.ones(len(pos), dtype=torch.int64),
                         reduction="none")
    w = box_balanced_weights(matched[pos])
    num = len(pos) + min(256 - len(pos), int((matched == BACKGROUND).sum()))  # sampled anchors
    torch.testing.assert_close(b["rpn_cls"], a["rpn_cls"] + ((w - 1) * ce).sum() / num)
    assert not torch.allclose(a["rpn_cls"], b["rpn_cls"])
    one_box = [big_and_small[0][:1]]
    torch.manual_seed(2)
    a = paper.loss(out, sizes, one_box)
    torch.manual_seed(2)
    b = box.loss(out, sizes, one_box)
    torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="positive_weighting"):
        _rpn(weighting="gt")


def test_label_anchors_matches_only_inside_anchors_as_if_matching_all():
    """Matching the inside anchors alone gives what matching every anchor with the outside ones
    masked (IoU -1: ignored, never a low-quality best) gives."""
    from torchvision.ops import box_iou

    g = torch.Generator().manual_seed(0)
    for trial in range(5):
        xy = torch.rand(2000, 2, generator=g) * 140 - 20
        anchors = torch.cat((xy, xy + torch.rand(2000, 2, generator=g) * 60 + 4), dim=1)
        n_gt = (0, 1, 3, 8, 8)[trial]
        gxy = torch.rand(n_gt, 2, generator=g) * 80
        gt = torch.cat((gxy, gxy + torch.rand(n_gt, 2, generator=g) * 40 + 2), dim=1)
        if trial == 4:
            gt[1] = gt[0]  # two identical gt boxes: ties in the low-quality matches
        inside = (anchors[:, :2] >= 0).all(dim=1) & (anchors[:, 2] <= 120) & (anchors[:, 3] <= 100)
        iou = box_iou(gt, anchors) if n_gt else torch.zeros(0, len(anchors))
        iou[:, ~inside] = -1.0
        expected = RPN_MATCHER(iou)
        expected[~inside] = IGNORE
        got = label_anchors(anchors, gt, (100, 120), matcher=RPN_MATCHER, straddle_thresh=0.0)
        assert torch.equal(got, expected)
        assert (got[~inside] == IGNORE).all()
