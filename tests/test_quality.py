import math

import pytest
import torch
import torch.nn.functional as F

from fasterrcnn.config import ConfigError, override, preset
from fasterrcnn.modeling.box_coding import BoxCoder
from fasterrcnn.modeling.faster_rcnn import build_model
from fasterrcnn.modeling.matching import Matcher
from fasterrcnn.modeling.quality import IoUPredictor, paired_iou, quality_loss, quality_targets, rescore
from fasterrcnn.modeling.roi_heads import BoxHead, BoxPredictor, RoIHeads, RoIPooler
from fasterrcnn.modeling.sampling import Sampler

CODER = BoxCoder((10.0, 10.0, 5.0, 5.0))


def test_paired_iou_hand_values():
    a = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10], [5, 5, 5, 9]])
    b = torch.tensor([[0.0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30], [5, 5, 5, 9]])
    torch.testing.assert_close(paired_iou(a, b), torch.tensor([1.0, 1 / 3, 0.0, 0.0]))


def test_quality_targets_take_the_best_gt_and_its_class():
    rois = [torch.tensor([[0.0, 0, 10, 10], [5, 0, 15, 10], [40, 40, 50, 50]]), torch.tensor([[0.0, 0, 8, 8]])]
    gts = [torch.tensor([[0.0, 0, 10, 10], [30, 30, 50, 50]]), torch.zeros(0, 4)]
    labels = [torch.tensor([2, 3]), torch.zeros(0, dtype=torch.long)]
    deltas = torch.zeros(4, 4 * 4)
    deltas[1, 8:12] = torch.tensor([-5.0, 0, 0, 0])  # RoI 1, class 2: half a width left -> onto the gt
    deltas[1, 4:8] = torch.tensor([5.0, 0, 0, 0])  # class 1: not its gt's class, unused
    idx, cls, tgt = quality_targets(rois, deltas, gts, labels, coder=CODER, min_iou=0.3)
    # RoI 0: IoU 1 with gt 0 (class 2); RoI 1: 1/3 with gt 0, regressed onto it -> 1.0;
    # RoI 2: IoU 0.25 with gt 1 < 0.3 -> no target; image 1 has no gt
    assert idx.tolist() == [0, 1] and cls.tolist() == [2, 2]
    torch.testing.assert_close(tgt, torch.tensor([1.0, 1.0]))
    idx, cls, tgt = quality_targets(rois, torch.zeros(4, 16), gts, labels, coder=CODER, min_iou=0.2)
    assert idx.tolist() == [0, 1, 2] and cls.tolist() == [2, 2, 3]
    torch.testing.assert_close(tgt, torch.tensor([1.0, 1 / 3, 0.25]))
    idx, _, tgt = quality_targets([torch.zeros(0, 4)], torch.zeros(0, 16), [torch.zeros(0, 4)],
                                  [torch.zeros(0, dtype=torch.long)], coder=CODER, min_iou=0.1)
    assert idx.shape == (0,) and tgt.shape == (0,)


def test_quality_loss_and_rescore_hand_values():
    logits = torch.tensor([[0.0, 1.0, -1.0], [0.0, 0.0, 2.0]], requires_grad=True)
    loss = quality_loss(logits, torch.tensor([0, 1]), torch.tensor([1, 2]), torch.tensor([0.5, 1.0]))
    expected = (F.binary_cross_entropy_with_logits(torch.tensor(1.0), torch.tensor(0.5))
                + F.binary_cross_entropy_with_logits(torch.tensor(2.0), torch.tensor(1.0))) / 2
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert logits.grad[:, 0].abs().sum() == 0 and logits.grad[0, 1] != 0
    empty = quality_loss(logits, torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long), torch.zeros(0))
    assert empty.item() == 0.0 and empty.requires_grad
    scores = torch.tensor([[0.64, 0.09]])
    q = torch.tensor([[5.0, 0.0, math.log(3.0)]])  # sigmoid: 0.5 and 0.75
    torch.testing.assert_close(rescore(scores, q, 0.5), torch.tensor([[math.sqrt(0.32), math.sqrt(0.0675)]]))
    torch.testing.assert_close(rescore(scores, q, 0.0), scores)


def _quality_heads(k=2, c=4, width=16):
    torch.manual_seed(0)
    return RoIHeads(RoIPooler("roi_align", 7, 16), BoxHead(c * 49, width), BoxPredictor(width, k),
                    matcher=Matcher(0.5, 0.5, 0.0), sampler=Sampler(16, 0.25), coder=CODER,
                    quality=IoUPredictor(width, k), quality_weight=0.5, quality_min_iou=0.1)


def test_heads_train_and_rescore_with_the_iou_branch():
    heads = _quality_heads()
    feats = torch.randn(1, 4, 8, 8)
    props = [torch.tensor([[0.0, 0, 40, 40], [20, 0, 60, 40]])]
    losses = heads.loss(feats, props, [torch.tensor([[0.0, 0, 40, 44]])], [torch.tensor([2])])
    assert set(losses) == {"roi_cls", "roi_reg", "roi_iou"}
    sum(losses.values()).backward()
    assert heads.quality.iou_pred.weight.grad.abs().sum() > 0
    torch.nn.init.zeros_(heads.quality.iou_pred.weight)
    with torch.no_grad():
        heads.quality.iou_pred.bias.copy_(torch.tensor([0.0, 0.0, math.log(3.0)]))
    (scores, _), = heads.class_boxes(feats, props, [(64, 64)])
    heads.quality = None
    (plain, _), = heads.class_boxes(feats, props, [(64, 64)])
    torch.testing.assert_close(scores, (plain * torch.tensor([0.5, 0.75])).sqrt())


def test_iou_quality_config():
    tiny = {"model.backbone.width": 8, "model.roi_head.representation_size": 16}
    model = build_model(override(preset("tiny-shapes"), {**tiny, "model.roi_head.iou_quality": 0.4}).model)
    assert model.roi_heads.quality is not None and model.roi_heads.quality_weight == 0.4
    assert model.roi_heads.quality.iou_pred.out_features == 6
    assert build_model(override(preset("tiny-shapes"), tiny).model).roi_heads.quality is None
    with pytest.raises(ConfigError, match="cannot be combined"):
        override(preset("tiny-shapes"), {"model.roi_head.iou_quality": 0.5, "model.roi_head.cascade_ious": [0.6]})
    with pytest.raises(ConfigError, match="iou_quality"):
        override(preset("tiny-shapes"), {"model.roi_head.iou_quality": 1.5})
