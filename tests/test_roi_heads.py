import math

import pytest
import torch

from fasterrcnn.modeling.box_coding import BoxCoder
from fasterrcnn.modeling.matching import Matcher
from fasterrcnn.modeling.losses import FastRCNNLoss
from fasterrcnn.modeling.pooler import RoIPooler, scale_boxes_about_centre
from fasterrcnn.modeling.postprocess import DetectionSelector, class_boxes
from fasterrcnn.modeling.roi_heads import BoxHead, BoxPredictor, ConvFCBoxHead, RoIHeads
from fasterrcnn.modeling.roi_sampling import RoISampling, label_rois, sample_rois
from fasterrcnn.modeling.sampling import HardExampleMiner, Sampler

ROI_MATCHER = Matcher(0.5, 0.5, 0.0)


def _heads(k=3, c=4, pooler="roi_pool", miner=None, class_agnostic=False):
    return RoIHeads(
        RoIPooler(pooler, 7, {"p4": 16}),
        BoxHead(c * 49, 32),
        BoxPredictor(32, k, class_agnostic),
        BoxCoder((10, 10, 5, 5)),
        sampling=RoISampling(ROI_MATCHER, Sampler(16, 0.25), miner=miner),
        loss=FastRCNNLoss(),
        selector=DetectionSelector(),
    )


def detect(logits, deltas, rois, sizes, *, coder, **settings):
    """Detections per image: the head's candidates, then the selection."""
    return [DetectionSelector(**settings)(s, b) for s, b in class_boxes(logits, deltas, rois, sizes, coder=coder)]


def test_sample_rois_labels_and_targets():
    props = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 9], [50, 50, 60, 60], [0, 0, 20, 20]])
    gt = torch.tensor([[0.0, 0, 10, 10]])
    rois, labels, matched = sample_rois(props, gt, torch.tensor([3]), matcher=ROI_MATCHER, sampler=Sampler(4, 0.5))
    # fg: 0 (IoU 1), 1 (0.9); bg: 2 (0), 3 (0.25)
    assert labels.tolist()[:2] == [3, 3] and labels.tolist()[2:] == [0, 0]
    assert (matched[:2] == gt).all()
    torch.testing.assert_close(matched[2:], rois[2:])


def test_sample_rois_without_ground_truth():
    props = torch.tensor([[0.0, 0, 10, 10], [5, 5, 20, 20]])
    rois, labels, _ = sample_rois(props, torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), matcher=ROI_MATCHER, sampler=Sampler(8, 0.25))
    assert labels.tolist() == [0, 0] and len(rois) == 2


def test_shapes_loss_and_predict():
    for pooler in ("roi_pool", "roi_align"):
        heads = _heads(pooler=pooler)
        feats = {"p4": torch.randn(2, 4, 8, 8)}
        props = [torch.tensor([[0.0, 0, 40, 40], [10, 10, 100, 60]]), torch.zeros(0, 4)]
        logits, deltas = heads(feats, props)
        assert logits.shape == (2, 4) and deltas.shape == (2, 16)
        gts = [torch.tensor([[0.0, 0, 40, 44]]), torch.tensor([[8.0, 8, 64, 64]])]
        labels = [torch.tensor([2]), torch.tensor([1])]
        losses = heads.loss(feats, props, gts, labels, [(128, 128), (128, 128)])
        assert set(losses) == {"roi_cls", "roi_reg"} and all(torch.isfinite(v) for v in losses.values())
        sum(losses.values()).backward()
        dets = [heads.selector(s, b) for s, b in heads.class_boxes(feats, props, [(128, 128), (128, 128)])]
        assert len(dets) == 2 and dets[1]["boxes"].shape == (0, 4)


def test_detect_hand_case():
    # one RoI, class 2 of K=2 dominates; class 2 deltas shift right by 0.1 * width
    logits = torch.tensor([[0.0, 0.0, math.log(98.0)]])  # probs 0.01, 0.01, 0.98
    deltas = torch.zeros(1, 12)
    deltas[0, 8] = 1.0  # dx = 1 / 10 (weights 10)
    rois = [torch.tensor([[10.0, 10, 30, 50]])]
    out = detect(logits, deltas, rois, [(100, 100)], coder=BoxCoder((10, 10, 5, 5)), score_thresh=0.05, nms_thresh=0.3, detections_per_img=10)
    assert out[0]["labels"].tolist() == [2]
    torch.testing.assert_close(out[0]["scores"], torch.tensor([0.98]))
    torch.testing.assert_close(out[0]["boxes"], torch.tensor([[12.0, 10, 32, 50]]))


def test_detect_per_class_nms_and_cap():
    logits = torch.zeros(3, 3)
    logits[:, 1] = torch.tensor([3.0, 2.0, 1.0])
    logits[:, 2] = torch.tensor([2.5, 0.0, 0.0])
    rois = [torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 11], [50, 50, 60, 60]])]
    out = detect(logits, torch.zeros(3, 12), rois, [(100, 100)], coder=BoxCoder(), score_thresh=0.2, nms_thresh=0.5, detections_per_img=100)
    # softmax rows: roi0 (.030, .604, .366), roi1 (.106, .787, .106), roi2 (.212, .576, .212)
    # class 1: roi1 (.787) suppresses roi0 (IoU 10/11); class 2: roi0 (.366) and roi2 (.212)
    # survive: NMS of one class never suppresses another class
    got = sorted(zip(out[0]["labels"].tolist(), out[0]["boxes"][:, 3].tolist()))
    assert got == [(1, 11.0), (1, 60.0), (2, 10.0), (2, 60.0)]
    torch.testing.assert_close(out[0]["scores"][0], torch.tensor(0.7870), atol=1e-4, rtol=0)
    out = detect(logits, torch.zeros(3, 12), rois, [(100, 100)], coder=BoxCoder(), score_thresh=0.2, nms_thresh=0.5, detections_per_img=1)
    assert len(out[0]["boxes"]) == 1 and out[0]["labels"].item() == 1
    assert out[0]["boxes"][0, 3].item() == 11.0


def test_pooler_accepts_bfloat16_features():
    feats = torch.randn(1, 4, 8, 8).to(torch.bfloat16)
    out = RoIPooler("roi_pool", 7, {"p4": 16})({"p4": feats}, [torch.tensor([[0.0, 0, 64, 64]])])
    assert out.shape == (1, 4, 7, 7) and torch.isfinite(out.float()).all()


def test_roi_align_cell_centres():
    """Feature value = column index; a 1x1 RoIAlign with one sample reads the box centre x = 8 px.
    aligned: cell i sits at (i + 0.5) * 8 -> index 0.5; not aligned: at i * 8 -> index 1.0."""
    feats = torch.arange(6.0).repeat(6, 1)[None, None]  # [1, 1, 6, 6], value = column
    box = [torch.tensor([[0.0, 0, 16, 16]])]
    aligned = RoIPooler("roi_align", 1, {"p3": 8}, sampling_ratio=1, aligned=True)({"p3": feats}, box)
    plain = RoIPooler("roi_align", 1, {"p3": 8}, sampling_ratio=1, aligned=False)({"p3": feats}, box)
    assert aligned.item() == 0.5 and plain.item() == 1.0


def test_box_weighting_in_roi_loss():
    """"box" weighting changes the RoI loss only when the boxes have unequal foreground counts."""
    torch.manual_seed(0)
    paper, box = _heads(pooler="roi_align"), _heads(pooler="roi_align")
    box.loss_fn = FastRCNNLoss(positive_weighting="box")
    box.load_state_dict(paper.state_dict())
    feats = {"p4": torch.randn(1, 4, 8, 8)}
    gts = [torch.tensor([[4.0, 4, 100, 100], [100.0, 100, 116, 116]])]
    props = [torch.tensor([[4.0, 4, 100, 100], [6.0, 6, 100, 100], [4.0, 4, 98, 96],
                           [8.0, 8, 100, 100], [100.0, 100, 116, 116], [0.0, 0, 20, 20]])]
    labels = [torch.tensor([1, 2])]
    torch.manual_seed(1)
    a = paper.loss(feats, props, gts, labels, [(128, 128)])
    torch.manual_seed(1)
    b = box.loss(feats, props, gts, labels, [(128, 128)])
    assert not torch.allclose(a["roi_cls"], b["roi_cls"])
    one = [gts[0][:1]], [labels[0][:1]]
    torch.manual_seed(2)
    a = paper.loss(feats, props, *one, [(128, 128)])
    torch.manual_seed(2)
    b = box.loss(feats, props, *one, [(128, 128)])
    torch.testing.assert_close(a, b)


def test_giou_box_loss_in_roi_head_hand_case():
    heads = _heads(pooler="roi_align")
    heads.loss_fn = FastRCNNLoss(box_loss="giou")
    torch.nn.init.zeros_(heads.predictor.bbox_pred.weight)
    torch.nn.init.zeros_(heads.predictor.bbox_pred.bias)  # zero deltas: each box is its RoI
    feats = {"p4": torch.randn(1, 4, 8, 8)}
    gts, labels = [torch.tensor([[0.0, 0, 40, 40]])], [torch.tensor([2])]
    props = [torch.tensor([[0.0, 0, 40, 30]])]  # IoU 0.75 with the gt: foreground
    # sampled: the gt box itself (appended, loss 0) and the proposal (1 - 0.75), both foreground
    losses = heads.loss(feats, props, gts, labels, [(128, 128)])
    torch.testing.assert_close(losses["roi_reg"], torch.tensor((0.0 + 0.25) / 2))
    losses["roi_reg"].backward()
    assert heads.predictor.bbox_pred.weight.grad.abs().sum() > 0
    # the paper's loss on the same RoIs: 0 for the gt box; the proposal's targets are
    # dy = 10 * (20 - 15) / 30 and dh = 5 * log(40 / 30), both >= beta = 1, so |d| - 0.5 each
    heads.loss_fn = FastRCNNLoss(box_loss="smooth_l1")
    dy, dh = 10 * 5 / 30, 5 * math.log(40 / 30)
    expected = (0.0 + (dy - 0.5) + (dh - 0.5)) / 2
    torch.testing.assert_close(heads.loss(feats, props, gts, labels, [(128, 128)])["roi_reg"], torch.tensor(expected))


def test_label_rois_keeps_every_labelled_proposal_foreground_first():
    props = torch.tensor([[50.0, 50, 60, 60], [0, 0, 10, 10], [0, 0, 20, 20], [0, 0, 10, 9]])
    gt = torch.tensor([[0.0, 0, 10, 10]])
    rois, labels, matched = label_rois(props, gt, torch.tensor([2]), matcher=Matcher(0.5, 0.5, 0.1))
    # IoU with gt: 0, 1, 0.25, 0.9 -> fg 1, 3; bg 2 (0.25 in [0.1, 0.5)); 0 ignored (< 0.1)
    assert labels.tolist() == [2, 2, 0]
    torch.testing.assert_close(rois, props[[1, 3, 2]])
    torch.testing.assert_close(matched[:2], gt.expand(2, 4))


def test_hard_mining_trains_on_the_highest_loss_rois():
    torch.manual_seed(0)
    heads = _heads(k=2, c=4, pooler="roi_align", miner=HardExampleMiner(3, 0.7))
    feats = {"p4": torch.randn(1, 4, 8, 8)}
    gts, labels = [torch.tensor([[0.0, 0, 40, 40]])], [torch.tensor([1])]
    props = [torch.tensor([[0.0, 0, 40, 40], [60, 60, 120, 120], [0, 60, 50, 120], [70, 0, 120, 50],
                           [1, 1, 40, 40]])]
    with_gt = [torch.cat([gts[0], props[0]])]
    assert len(label_rois(with_gt[0], gts[0], labels[0], matcher=ROI_MATCHER)[0]) == 6

    def mine(bias):  # a classifier that ignores the features: its bias sets every RoI's loss
        with torch.no_grad():
            heads.predictor.cls_score.weight.zero_()
            heads.predictor.cls_score.bias.copy_(torch.tensor(bias))
        return heads.sample(feats, props, gts, labels)[0]  # the gt box joins the proposals

    # it says background: the three foreground RoIs (the gt box, its copy and a near-copy) are
    # the hard ones; NMS keeps one of them, two (equally easy) backgrounds fill the batch
    rois, labs, matched = mine([4.0, 0.0, 0.0])
    assert labs.tolist() == [1, 0, 0]
    torch.testing.assert_close(matched[0], gts[0][0])
    # it says class 1: the three background RoIs (no two overlap) are the hard ones
    rois, labs, _ = mine([-4.0, 4.0, 0.0])
    assert labs.tolist() == [0, 0, 0]
    assert sorted(map(tuple, rois.tolist())) == sorted(map(tuple, props[0][1:4].tolist()))
    losses = heads.loss(feats, props, gts, labels, [(128, 128)])
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert heads.predictor.cls_score.weight.grad is not None


def test_context_pooling_concatenates_the_enlarged_box():
    boxes = torch.tensor([[10.0, 20.0, 30.0, 60.0]])
    torch.testing.assert_close(
        scale_boxes_about_centre(boxes, 1.5), torch.tensor([[5.0, 10.0, 35.0, 70.0]])
    )
    torch.manual_seed(0)
    feats = {"p3": torch.randn(1, 3, 12, 12)}
    plain = RoIPooler("roi_align", 7, {"p3": 8}, aligned=False)
    foveal = RoIPooler("roi_align", 7, {"p3": 8}, aligned=False, context_scales=(1.5, 2.0))
    assert foveal.num_regions == 3 and plain.num_regions == 1
    out = foveal(feats, [boxes])
    assert out.shape == (1, 9, 7, 7)
    torch.testing.assert_close(out[:, :3], plain(feats, [boxes]))
    torch.testing.assert_close(out[:, 3:6], plain(feats, [torch.tensor([[5.0, 10.0, 35.0, 70.0]])]))
    torch.testing.assert_close(out[:, 6:], plain(feats, [torch.tensor([[0.0, 0.0, 40.0, 80.0]])]))
    with pytest.raises(ValueError, match="context_scales"):
        RoIPooler("roi_align", 7, {"p3": 8}, context_scales=(0.0,))


def test_class_agnostic_predictor_repeats_one_box_per_class():
    torch.manual_seed(0)
    pred = BoxPredictor(8, 3, class_agnostic=True)
    assert pred.bbox_pred.weight.shape == (4, 8)
    x = torch.randn(5, 8)
    logits, deltas = pred(x)
    assert logits.shape == (5, 4) and deltas.shape == (5, 16)
    per_class = deltas.view(5, 4, 4)
    for c in range(4):  # the same 4 deltas for background and every class
        torch.testing.assert_close(per_class[:, c], pred.bbox_pred(x))


def test_class_agnostic_regression_trains_one_regressor_from_every_class():
    torch.manual_seed(0)
    heads = _heads(k=3, c=4, pooler="roi_align", class_agnostic=True)
    feats = {"p4": torch.randn(1, 4, 8, 8)}
    props = [torch.tensor([[0.0, 0, 40, 40], [60, 60, 120, 110]])]
    gts = [torch.tensor([[2.0, 0, 40, 44], [60.0, 64, 118, 110]])]
    losses = heads.loss(feats, props, gts, [torch.tensor([1, 3])], [(128, 128)])
    assert losses["roi_reg"] > 0
    losses["roi_reg"].backward()
    grad = heads.predictor.bbox_pred.weight.grad
    assert grad is not None and grad.abs().sum() > 0 and grad.shape == (4, 32)
    # detection decodes the shared deltas for every class: same box whatever the class
    scores, boxes = heads.class_boxes(feats, props, [(128, 128)])[0]
    assert boxes.shape == (2, 3, 4)
    torch.testing.assert_close(boxes[:, 0], boxes[:, 2])


def test_class_agnostic_config_builds_the_smaller_head():
    from fasterrcnn.config import override
    from fasterrcnn.presets import preset
    from fasterrcnn.modeling.builder import build_model

    cfg = override(preset("tiny-shapes"), {"model.roi_head.class_agnostic_reg": True,
                                           "model.roi_head.cascade_ious": [0.6]})
    model = build_model(cfg.model)
    assert model.roi_heads.predictor.bbox_pred.out_features == 4
    assert model.roi_heads.stages[0].predictor.bbox_pred.out_features == 4
    default = build_model(preset("tiny-shapes").model)
    assert default.roi_heads.predictor.bbox_pred.out_features == 4 * 6


def test_conv_fc_head_layers_and_shapes():
    head = ConvFCBoxHead(8, 7, (16, 16), 32, num_fc=1)
    assert [type(m).__name__ for m in head.convs[0]] == ["Conv2d", "BatchNorm2d"]
    assert head.convs[0][0].bias is None and head.convs[1][0].weight.shape == (16, 16, 3, 3)
    assert len(head.fcs) == 1 and head.fcs[0].in_features == 16 * 49 and head.out_features == 32
    x = torch.randn(5, 8, 7, 7)
    head.eval()
    manual = x
    for conv, bn in head.convs:
        manual = torch.relu(bn(conv(manual)))
    torch.testing.assert_close(head(x), torch.relu(head.fcs[0](manual.flatten(1))))
    assert (head(x) >= 0).all() and head(x).shape == (5, 32)
    two = ConvFCBoxHead(8, 7, (), 32, num_fc=2)  # no convs: fc layers on the flattened pool
    assert len(two.convs) == 0 and two.fcs[0].in_features == 8 * 49 and two.fcs[1].in_features == 32


def test_conv_fc_config_builds_its_head_and_the_default_stays_fc6_fc7():
    from fasterrcnn.config import ConfigError, override
    from fasterrcnn.presets import preset
    from fasterrcnn.modeling.builder import build_model

    cfg = override(preset("tiny-shapes"), {"model.roi_head.conv_layers": [16, 24], "model.roi_head.fc_layers": 1,
                                           "model.roi_head.cascade_ious": [0.6]})
    model = build_model(cfg.model)
    head = model.roi_heads.box_head
    assert isinstance(head, ConvFCBoxHead) and isinstance(model.roi_heads.stages[0].box_head, ConvFCBoxHead)
    # tiny-shapes pools a context box too: the first conv sees both regions' channels
    assert head.convs[0][0].in_channels == 2 * model.backbone.out_channels and head.convs[1][0].out_channels == 24
    assert head.fcs[0].in_features == 24 * 49 and model.roi_heads.predictor.cls_score.in_features == 256
    assert isinstance(build_model(preset("tiny-shapes").model).roi_heads.box_head, BoxHead)
    with pytest.raises(ConfigError, match="res5 head takes no"):
        build_model(override(preset("resnet50-c4"), {"model.roi_head.conv_layers": [256]}).model)
