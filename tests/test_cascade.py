import pytest
import torch

from fasterrcnn.config import ConfigError, override
from fasterrcnn.presets import preset
from fasterrcnn.modeling.box_coding import BoxCoder
from fasterrcnn.modeling.cascade import CascadeRoIHeads, RefineStage, most_likely_classes, refine_boxes
from fasterrcnn.modeling.builder import build_model
from fasterrcnn.modeling.matching import Matcher
from fasterrcnn.modeling.losses import FastRCNNLoss
from fasterrcnn.modeling.pooler import RoIPooler
from fasterrcnn.modeling.postprocess import DetectionSelector
from fasterrcnn.modeling.roi_heads import BoxHead, BoxPredictor, RoIHeads
from fasterrcnn.modeling.roi_sampling import RoISampling, label_rois
from fasterrcnn.modeling.sampling import Sampler

CODER = BoxCoder((10.0, 10.0, 5.0, 5.0))


def test_most_likely_classes_leave_background_out():
    logits = torch.tensor([[9.0, 1.0, 2.0], [0.0, 3.0, -1.0], [5.0, 5.0, 5.0]])
    assert most_likely_classes(logits).tolist() == [2, 1, 1]
    assert most_likely_classes(torch.zeros(0, 3)).tolist() == []


def test_refine_boxes_uses_each_rois_class_and_clips():
    rois = [torch.tensor([[10.0, 10, 30, 20]]), torch.tensor([[0.0, 0, 40, 40], [50, 50, 60, 60]])]
    deltas = torch.zeros(3, 3 * 4)
    deltas[0, 4:8] = torch.tensor([1.0, 0, 0, 0])  # class 1 of RoI 0: dx = 0.1 widths -> +2 px
    deltas[0, 8:12] = torch.tensor([-5.0, 0, 0, 0])  # class 2 of RoI 0: not asked for
    deltas[1, 8:12] = torch.tensor([-5.0, 0, 0, 0])  # class 2 of RoI 1: 0.5 widths left -> -20 px
    classes = torch.tensor([1, 2, 1])
    out = refine_boxes(deltas, rois, classes, [(100, 100), (100, 100)], coder=CODER)
    torch.testing.assert_close(out[0], torch.tensor([[12.0, 10, 32, 20]]))
    torch.testing.assert_close(out[1], torch.tensor([[0.0, 0, 20, 40], [50, 50, 60, 60]]))  # clipped
    unclipped = refine_boxes(deltas, rois, classes, None, coder=CODER)
    torch.testing.assert_close(unclipped[1][0], torch.tensor([-20.0, 0, 20, 40]))
    empty = refine_boxes(torch.zeros(0, 12), [torch.zeros(0, 4)], torch.zeros(0, dtype=torch.long),
                         [(10, 10)], coder=CODER)
    assert empty[0].shape == (0, 4)


def test_refined_boxes_labelled_at_a_higher_iou_foreground_first():
    gt = torch.tensor([[0.0, 0, 10, 10]])
    boxes = torch.tensor([[0.0, 0, 10, 8], [50, 50, 60, 60], [0, 0, 10, 6.5], [0, 0, 10, 10]])
    # IoU with the gt box: 0.8, 0, 0.65, 1.0; foreground at 0.7
    out_boxes, labels, targets = label_rois(boxes, gt, torch.tensor([4]), matcher=Matcher(0.7, 0.7, 0.0))
    assert labels.tolist() == [4, 4, 0, 0]
    torch.testing.assert_close(out_boxes, boxes[[0, 3, 1, 2]])
    torch.testing.assert_close(targets[:2], gt.expand(2, 4))
    torch.testing.assert_close(targets[2:], out_boxes[2:])  # background: the box itself
    _, labels, _ = label_rois(boxes, torch.zeros(0, 4), torch.zeros(0, dtype=torch.long),
                               matcher=Matcher(0.6, 0.6, 0.0))
    assert labels.tolist() == [0, 0, 0, 0]


def _cascade_heads(k=3, c=4, width=16):
    torch.manual_seed(0)
    stage = RefineStage(BoxHead(c * 49, width), BoxPredictor(width, k), matcher=Matcher(0.6, 0.6, 0.0),
                        coder=BoxCoder((20.0, 20.0, 10.0, 10.0)), loss_weight=0.5)
    return CascadeRoIHeads(RoIPooler("roi_align", 7, {"p4": 16}), BoxHead(c * 49, width), BoxPredictor(width, k),
                           CODER, sampling=RoISampling(Matcher(0.5, 0.5, 0.0), Sampler(16, 0.25)),
                           loss=FastRCNNLoss(), selector=DetectionSelector(), stages=[stage])


def test_cascade_loss_has_every_stage_and_reaches_its_weights():
    heads = _cascade_heads()
    feats = {"p4": torch.randn(2, 4, 8, 8, requires_grad=True)}
    props = [torch.tensor([[0.0, 0, 40, 40], [10, 10, 100, 60]]), torch.zeros(0, 4)]
    gts = [torch.tensor([[0.0, 0, 40, 44]]), torch.zeros(0, 4)]
    labels = [torch.tensor([2]), torch.zeros(0, dtype=torch.long)]
    losses = heads.loss(feats, props, gts, labels, [(128, 128), (128, 128)])
    assert set(losses) == {"roi_cls", "roi_reg", "roi2_cls", "roi2_reg"}
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    stage = heads.stages[0]
    assert stage.box_head.fc6.weight.grad.abs().sum() > 0
    assert stage.predictor.bbox_pred.weight.grad.abs().sum() > 0  # the gt box is foreground at 0.6
    # the second stage's gradient also reaches the shared features
    assert feats["p4"].grad.abs().sum() > 0


def test_cascade_scores_average_the_stages_and_boxes_come_from_the_last():
    heads = _cascade_heads(k=2)
    for pred, cls_bias, box_bias in (
        (heads.predictor, [0.0, 2.0, 0.0], [0, 0, 0, 0, 1.0, 0, 0, 0, 0, 0, 0, 0]),
        (heads.stages[0].predictor, [0.0, 0.0, 1.0], [0, 0, 0, 0, 0, 0, 0, 0, 2.0, 0, 0, 0]),
    ):
        torch.nn.init.zeros_(pred.cls_score.weight)
        torch.nn.init.zeros_(pred.bbox_pred.weight)
        with torch.no_grad():
            pred.cls_score.bias.copy_(torch.tensor(cls_bias))
            pred.bbox_pred.bias.copy_(torch.tensor(box_bias))
    feats = {"p4": torch.randn(1, 4, 8, 8)}
    (scores, boxes), = heads.class_boxes(feats, [torch.tensor([[10.0, 10, 30, 20]])], [(100, 100)])
    p1 = torch.softmax(torch.tensor([0.0, 2.0, 0.0]), 0)
    p2 = torch.softmax(torch.tensor([0.0, 0.0, 1.0]), 0)
    torch.testing.assert_close(scores, ((p1 + p2) / 2)[1:][None])
    # stage 1 moves the RoI by dx = 1 / 10 of its width (class 1, its most likely): x + 2 px;
    # stage 2 decodes class 2 from that box with its own weights: dx = 2 / 20 -> + 2 px more
    torch.testing.assert_close(boxes[0, 1], torch.tensor([14.0, 10, 34, 20]))
    torch.testing.assert_close(boxes[0, 0], torch.tensor([12.0, 10, 32, 20]))  # class 1: no move


def test_cascade_config_builds_stages():
    tiny = {"model.backbone.width": 8, "model.roi_head.representation_size": 16}
    model = build_model(override(preset("tiny-shapes"), {**tiny, "model.roi_head.cascade_ious": [0.6, 0.7]}).model)
    assert len(model.roi_heads.stages) == 2
    assert model.roi_heads.stages[0].coder.weights == (20.0, 20.0, 10.0, 10.0)
    assert model.roi_heads.stages[1].coder.weights == (30.0, 30.0, 15.0, 15.0)
    assert [s.loss_weight for s in model.roi_heads.stages] == [0.5, 0.25]
    assert model.roi_heads.stages[1].box_head.fc6.in_features == model.roi_heads.box_head.fc6.in_features
    plain = build_model(override(preset("tiny-shapes"), tiny).model).roi_heads
    assert type(plain) is RoIHeads and not hasattr(plain, "stages")
    assert isinstance(model.roi_heads, CascadeRoIHeads)
    with pytest.raises(ConfigError, match="cascade_ious"):
        override(preset("tiny-shapes"), {"model.roi_head.cascade_ious": [1.2]})
