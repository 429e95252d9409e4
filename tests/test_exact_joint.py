"""Non-approximate joint training (paper §3.2, ``train.schedule="exact-joint"``): the proposals
carry the gradient of the RPN's box deltas, the RoI losses reach them through RoIAlign's
derivative w.r.t. the box coordinates; the loss values are those of the approximate scheme."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fasterrcnn.config import ConfigError, override
from fasterrcnn.engine import train
from fasterrcnn.engine.checkpoint import load_checkpoint
from fasterrcnn.modeling.box_coding import BoxCoder
from fasterrcnn.modeling.builder import build_model
from fasterrcnn.modeling.pooler import RoIPooler
from fasterrcnn.modeling.proposals import select_proposals
from fasterrcnn.presets import preset

from test_engine_trainer import ToyDataset, real_config
from test_faster_rcnn import TINY, _scene

SMALL = {  # TINY shrunk further: a training step in well under a second
    **TINY,
    "model.backbone.width": 8,
    "model.rpn.conv_channels": 16,
    "model.rpn.pre_nms_top_n_train": 300,
    "model.rpn.post_nms_top_n_train": 64,
    "model.roi_head.representation_size": 32,
}


def _model(seed: int = 0):
    torch.manual_seed(seed)
    return build_model(override(preset("tiny-shapes"), SMALL).model)


def _roi_grads(exact: bool, seed: int = 0) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    model = _model(seed)
    images, targets = _scene()
    torch.manual_seed(1)  # the same RoI sample in both schemes
    losses = model.loss(images, targets, stages=("roi",), exact=exact)
    sum(losses.values()).backward()
    grads = {n: p.grad.clone() if p.grad is not None else torch.zeros_like(p) for n, p in model.named_parameters()}
    return {k: v.item() for k, v in losses.items()}, grads


def test_exact_step_same_losses_but_rpn_regression_gets_roi_gradient():
    approx_losses, approx = _roi_grads(exact=False)
    exact_losses, exact = _roi_grads(exact=True)
    assert approx_losses.keys() == exact_losses.keys() == {"roi_cls", "roi_reg"}
    for k in approx_losses:  # same proposals, RoIs and pooled values (up to summation order)
        assert exact_losses[k] == pytest.approx(approx_losses[k], rel=1e-5, abs=1e-7)
    # approximate: the RoI losses leave the RPN's outputs untouched (proposals are constants)
    for name in ("rpn.head.bbox_pred.weight", "rpn.head.bbox_pred.bias", "rpn.head.cls_logits.weight"):
        assert torch.count_nonzero(approx[name]) == 0, name
    # exact: the regression branch is trained through the proposals' coordinates, the objectness
    # branch is not (scores only rank; selection is discrete)
    assert exact["rpn.head.bbox_pred.weight"].abs().sum() > 0
    assert torch.count_nonzero(exact["rpn.head.cls_logits.weight"]) == 0
    # the head's own gradients are those of the approximate step (same forward values)
    for name in ("roi_heads.predictor.cls_score.weight", "roi_heads.box_head.fc6.weight"):
        torch.testing.assert_close(exact[name], approx[name], rtol=1e-4, atol=1e-7)


def test_full_exact_loss_equals_approximate_loss_and_default_is_unchanged():
    images, targets = _scene()
    values = []
    for kwargs in ({}, {"exact": False}, {"exact": True}):
        model = _model()
        torch.manual_seed(3)
        values.append({k: v.item() for k, v in model.loss(images, targets, **kwargs).items()})
    assert values[0] == values[1]  # the default path, bit for bit
    assert values[2].keys() == values[0].keys()
    for k in values[0]:
        assert values[2][k] == pytest.approx(values[0][k], rel=1e-5, abs=1e-7)


def test_proposals_require_grad_only_when_differentiable():
    model = _model()
    images, _ = _scene()
    batch = model.transform(images, training=True)
    out = model.rpn(model.features(batch.tensor), batch.padded_size)
    plain, plain_scores = model.rpn.propose(out, batch.image_sizes, training=True)
    diff, diff_scores = model.rpn.propose(out, batch.image_sizes, training=True, differentiable=True)
    for p, d, ps, ds in zip(plain, diff, plain_scores, diff_scores):
        assert not p.requires_grad and d.requires_grad
        assert not ds.requires_grad
        assert torch.equal(p, d.detach())  # exactly the same boxes
        assert torch.equal(ps, ds)


@pytest.mark.parametrize("top_n_first", [False, True])
def test_select_proposals_gradient_is_the_decoded_anchors(top_n_first):
    """The gradient of a kept box is that of decoding its own anchor (two levels, score
    threshold): d(sum of x2 of proposal 0)/d(deltas) is nonzero only on that proposal's anchor."""
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(40, 2, generator=g) * 60
    anchors = torch.cat((xy, xy + 8 + torch.rand(40, 2, generator=g) * 20), dim=1)
    scores = torch.randn(1, 40, generator=g)
    deltas = (0.1 * torch.randn(1, 40, 4, generator=g)).requires_grad_()
    kw = dict(coder=BoxCoder((1.0, 1.0, 1.0, 1.0)), level_counts=[25, 15], pre_nms_top_n=10, post_nms_top_n=8,
              nms_thresh=0.7, min_size=0.0, top_n_first=top_n_first, score_thresh=0.2)
    (plain,), _ = select_proposals(anchors, scores, deltas, [(100, 100)], **kw)
    (diff,), _ = select_proposals(anchors, scores, deltas, [(100, 100)], differentiable=True, **kw)
    assert torch.equal(plain, diff.detach()) and len(plain) > 1
    (grad,) = torch.autograd.grad(diff[0, 2], deltas)
    rows = grad[0].abs().sum(dim=1).nonzero().flatten()
    assert len(rows) == 1  # one anchor, found among all levels
    a = rows.item()
    box = BoxCoder((1.0, 1.0, 1.0, 1.0)).decode(deltas[0, a : a + 1].detach(), anchors[a : a + 1])
    torch.testing.assert_close(box.clamp(0, 100)[0], plain[0])


def test_sampled_rois_keep_graph_and_gt_rows_have_none():
    model = _model()
    props = [torch.tensor([[30.0, 20, 60, 50], [0, 0, 40, 40], [50, 50, 90, 90]], requires_grad=True)]
    gt = [torch.tensor([[30.0, 20, 62, 52]])]
    labels = [torch.tensor([1])]
    sampling = model.roi_heads.sampling
    (rois, lab, matched), = sampling(props, gt, labels, keep_graph=True)
    assert rois.requires_grad and not matched.requires_grad
    rois.sum().backward()
    assert props[0].grad.abs().sum() > 0  # the proposals' rows reach their source
    (plain, _, _), = sampling(props, gt, labels)
    assert not plain.requires_grad


def test_pooler_warps_boxes_with_gradient_and_roi_pool_refuses_them():
    feats = {"p4": torch.randn(1, 3, 12, 12)}
    boxes = [torch.tensor([[10.0, 12, 100, 90], [40, 20, 150, 170]], requires_grad=True)]
    pooler = RoIPooler("roi_align", 7, {"p4": 16}, 2, aligned=False)
    out = pooler(feats, boxes)
    torch.testing.assert_close(out, pooler(feats, [boxes[0].detach()]), rtol=1e-5, atol=1e-6)
    out.sum().backward()
    assert boxes[0].grad.abs().sum() > 0
    with pytest.raises(ValueError, match="roi_pool"):
        RoIPooler("roi_pool", 7, {"p4": 16})(feats, boxes)
    RoIPooler("roi_pool", 7, {"p4": 16})(feats, [boxes[0].detach()])  # constants: fine


def _exact_cfg(**kw):
    return override(real_config(max_iter=2, checkpoint_period=2, **kw), {"train.schedule": "exact-joint"})


def test_roi_pool_preset_with_exact_joint_is_a_config_error(tmp_path: Path):
    cfg = override(_exact_cfg(), {"model.roi_head.pooler": "roi_pool"})
    with pytest.raises(ConfigError, match="roi_align"):
        train(cfg, ToyDataset(4), out_dir=tmp_path, classes=ToyDataset.classes, progress=False)
    with pytest.raises(ConfigError, match="roi_align"):
        train(override(preset("vgg16-voc07"), {"train.schedule": "exact-joint"}), ToyDataset(4), out_dir=tmp_path,
              classes=tuple(f"c{i}" for i in range(20)), progress=False)


def test_c4_preset_with_adaptive_sampling_trains_the_rpn_deltas_through_res5():
    """resnet50-c4 pools with roi_align's adaptive sampling ratio (0) and runs res5 as its box
    head: the exact step reaches the RPN's regression branch through both."""
    from test_presets import SMALL as PRESET_SMALL

    cfg = override(preset("resnet50-c4"), PRESET_SMALL)
    assert cfg.model.roi_head.sampling_ratio == 0
    images, targets = _scene()
    grads = {}
    for exact in (False, True):
        torch.manual_seed(0)
        model = build_model(cfg.model)
        with torch.no_grad():  # proposals = the anchors: random deltas push many of them off
            model.rpn.head.bbox_pred.weight.zero_()  # the image, where clipping leaves them empty
            model.rpn.head.bbox_pred.bias.zero_()  # (adaptive sampling: no sample, no gradient)
        model.train()
        torch.manual_seed(1)
        losses = model.loss(images, targets, stages=("roi",), exact=exact)
        sum(losses.values()).backward()
        grads[exact] = model.rpn.head.bbox_pred.weight.grad
    assert grads[False] is None or torch.count_nonzero(grads[False]) == 0
    assert grads[True] is not None and grads[True].abs().sum() > 0


def test_engine_train_exact_joint_two_iterations_writes_a_checkpoint(tmp_path: Path):
    cfg = _exact_cfg()
    out = train(cfg, ToyDataset(4), out_dir=tmp_path, classes=ToyDataset.classes, progress=False)
    assert out["iteration"] == 2 and out["skipped_steps"] == 0
    ckpt = load_checkpoint(tmp_path / "last.pt")
    assert ckpt["iteration"] == 2
    assert (tmp_path / "model_final.pt").exists()


def test_exact_loss_refuses_given_proposals():
    model = _model()
    images, targets = _scene()
    with pytest.raises(ValueError, match="proposals"):
        model.loss(images, targets, proposals=[t["boxes"] for t in targets], exact=True)
