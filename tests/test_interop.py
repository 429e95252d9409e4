"""Tests of importing torchvision's detectors (fasterrcnn/interop.py): the same detections as
torchvision's model with the same weights, on images of several sizes.

torchvision's models are built with random weights (no download). So that the comparison checks
real detections, the weights are made to behave like trained ones: BatchNorm statistics are
measured on images, the classifier's biases favour some classes, and the test images have
structure (blobs on a gradient) so that scores are not tied across positions. In
``fasterrcnn_resnet50_fpn_v2`` every BatchNorm (body, pyramid, box head) then gets random
statistics and affine around the measured ones, so that none is an identity.
"""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from fasterrcnn.config import Config, override
from fasterrcnn.engine.checkpoint import load_model
from fasterrcnn.interop import (
    TorchvisionImportError, coco_classes, convert_state, import_torchvision,
)
from fasterrcnn.modeling.builder import build_model
from fasterrcnn.presets import preset


def _image(h: int, w: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    y, x = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    img = torch.stack((x, y, 0.5 * (x + y)))
    for _ in range(6):  # coloured blobs
        cy, cx, r = torch.rand(3, generator=g)
        blob = torch.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (0.02 + 0.05 * r))
        img = img + blob * torch.rand(3, 1, 1, generator=g)
    img = img + 0.3 * torch.rand(img.shape, generator=g)  # texture: no two places look alike
    return (img / img.max()).clamp(0, 1)


def _torchvision_model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    tv = getattr(torchvision.models.detection, name)(weights=None, weights_backbone=None)
    with torch.no_grad():
        tv.backbone.train()  # BatchNorm statistics of real-looking inputs
        for k in range(3):
            tv.backbone(torch.stack([_image(224, 288, 100 + 2 * k), _image(224, 288, 101 + 2 * k)]))
        if name.endswith("_v2"):  # no BatchNorm of the body or the pyramid an identity
            _perturb_batchnorms(tv.backbone)
        tv.eval()
        feats = list(tv.backbone(_image(224, 288, 99)[None]).values())
        for block, f in zip(tv.backbone.fpn.layer_blocks, feats):  # pyramid levels of std ~0.5
            for p in block[-1].parameters():  # the conv, or the BatchNorm after it (v2)
                p.mul_(0.5 / f.std())
        for m in tv.modules():
            if isinstance(m, torchvision.ops.misc.FrozenBatchNorm2d):  # trained-like statistics
                m.running_var.uniform_(0.5, 2.0)
                m.running_mean.uniform_(-0.1, 0.1)
        # scores that vary with the features (random heads give nearly tied scores everywhere)
        for block in tv.rpn.head.conv:  # one conv block (two in v2)
            block[0].weight.normal_(0, 0.05)
        tv.rpn.head.cls_logits.weight.normal_(0, 0.1)
        tv.rpn.head.cls_logits.bias.normal_(0, 1)
        if name.endswith("_v2"):
            _shape_v2_batchnorms(tv)
        tv.roi_heads.box_predictor.cls_score.weight.normal_(0, 2.0)
        tv.roi_heads.box_predictor.cls_score.bias.copy_(torch.linspace(-2, 3, 91))
    return tv


def _shape_v2_batchnorms(tv: nn.Module) -> None:
    """v2's box head BatchNorm layers made non-trivial (statistics measured on RoIs of an image,
    then perturbed), and the head's output brought to a small scale (RMS 0.04), so that the
    sharpened classifier gives spread scores, not 1.0 everywhere."""
    g = torch.Generator().manual_seed(7)
    xy = torch.rand(128, 2, generator=g) * torch.tensor([240.0, 180.0])
    boxes = torch.cat((xy, xy + 16 + torch.rand(128, 2, generator=g) * 150), dim=1)  # random RoIs
    image = tv.transform.normalize(_image(224, 288, 98))[None]
    pooled = tv.roi_heads.box_roi_pool(tv.backbone(image), [boxes], [(224, 288)])
    head = tv.roi_heads.box_head
    for m in head.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None  # the running statistics become this batch's
    head.train()
    head(pooled)
    head.eval()
    _perturb_batchnorms(head)
    last_fc = head[-2]  # Linear, then ReLU: scaling it scales the head's output
    scale = 0.04 / head(pooled).pow(2).mean().sqrt()
    last_fc.weight.mul_(scale)
    last_fc.bias.mul_(scale)


def _perturb_batchnorms(tv: nn.Module) -> None:
    """Every BatchNorm2d: random positive variances and random means, weights and biases around
    the measured statistics and the affine (so that a layer left out or misplaced shows)."""
    for m in tv.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_var.mul_(torch.empty_like(m.running_var).uniform_(0.5, 2.0))
            m.running_mean.add_(0.2 * m.running_var.sqrt() * torch.randn_like(m.running_mean))
            m.weight.mul_(torch.empty_like(m.weight).uniform_(0.7, 1.4))
            m.bias.add_(0.1 * torch.randn_like(m.bias))


# fasterrcnn_resnet50_fpn_v2 is compared at a smaller input and with fewer proposals than its
# preset's (the same in both libraries): its four-conv box head costs seconds per 1000 RoIs on
# two CPU cores. The preset's 800/1333 input and 1000 proposals are resnet50-fpn's, compared at
# full size above, and test_v2_preset_is_resnet50_fpn_with_the_v2_layers checks they are the same.
V2_TEST_SETTINGS = {"model.input.min_size_test": 320, "model.input.max_size_test": 533,
                    "model.rpn.post_nms_top_n_test": 300}


def _with_test_settings(tv: nn.Module, model: nn.Module, cfg: Config, settings: dict) -> nn.Module:
    """``settings`` (V2_TEST_SETTINGS) applied to ``tv`` in place and to a copy of ``model``."""
    tv.transform.min_size = (settings["model.input.min_size_test"],)
    tv.transform.max_size = settings["model.input.max_size_test"]
    tv.rpn._post_nms_top_n["testing"] = settings["model.rpn.post_nms_top_n_test"]
    smaller = build_model(override(cfg, settings).model, load_backbone_weights=False)
    smaller.load_state_dict(model.state_dict())
    return smaller.eval()


def _match(ours: dict, theirs: dict) -> tuple[float, float]:
    """(max box difference, max score difference) after pairing each of torchvision's detections
    with a distinct one of ours of the same label within 1e-4 in score (nearest box first):
    scores tied to 1e-6 may come out in either order, so the order alone cannot pair them."""
    assert len(theirs["boxes"]) == len(ours["boxes"]) > 0
    assert theirs["boxes"].dtype == ours["boxes"].dtype
    dist = (theirs["boxes"][:, None, :] - ours["boxes"][None, :, :]).abs().amax(dim=-1)
    same = (theirs["labels"][:, None] == ours["labels"][None, :]) & (
        (theirs["scores"][:, None] - ours["scores"][None, :]).abs() < 1e-4)
    dist = torch.where(same, dist, torch.full_like(dist, float("inf")))
    box = score = 0.0
    taken = torch.zeros(len(ours["boxes"]), dtype=torch.bool)
    for i in theirs["scores"].argsort(descending=True).tolist():
        j = int(dist[i].masked_fill(taken, float("inf")).argmin())
        assert torch.isfinite(dist[i, j]), "a torchvision detection has no counterpart"
        taken[j] = True
        box = max(box, float(dist[i, j]))
        score = max(score, float((theirs["scores"][i] - ours["scores"][j]).abs()))
    return box, score


# MobileNetV3 with random weights scores many places within float32 rounding of each other
# (its squeeze-excitation and hard-swish layers flatten the deep features), and such near ties can
# rank either way in two float32 pipelines; in float64 they do not, so it is compared in float64
# (the same code paths: nothing in the pipeline drops to float32 unless the input is 16-bit).
@pytest.mark.parametrize("name, dtype, settings", [
    ("fasterrcnn_resnet50_fpn", torch.float32, None),
    ("fasterrcnn_mobilenet_v3_large_fpn", torch.float64, None),
    ("fasterrcnn_mobilenet_v3_large_320_fpn", torch.float64, None),
    ("fasterrcnn_resnet50_fpn_v2", torch.float32, V2_TEST_SETTINGS),
])
def test_imported_detector_gives_torchvisions_detections(name, dtype, settings, tmp_path):
    tv = _torchvision_model(name)
    path = tmp_path / "tv.pth"
    torch.save(tv.state_dict(), path)
    out = import_torchvision(name, tmp_path / "ours.pt", path)
    model, cfg, classes = load_model(out)
    assert classes == coco_classes() and len(classes) == 90 and classes[0] == "person"
    if settings is not None:
        model = _with_test_settings(tv, model, cfg, settings)
    tv, model = tv.to(dtype), model.to(dtype)
    for k, (h, w) in enumerate(((240, 320), (333, 517), (400, 300))):
        img = _image(h, w, k).to(dtype)
        with torch.no_grad():
            theirs = tv([img])[0]
        box, score = _match(model.predict([img])[0], theirs)
        assert box < 1e-2 and score < 1e-4, (name, (h, w), box, score)


def test_convert_state_maps_names_and_the_objectness_logit():
    tv = torchvision.models.detection.fasterrcnn_mobilenet_v3_large_320_fpn(weights=None, weights_backbone=None)
    state = convert_state(tv.state_dict())
    a = tv.rpn.head.cls_logits.weight.shape[0]
    assert state["rpn.head.cls_logits.weight"].shape[0] == 2 * a
    assert torch.equal(state["rpn.head.cls_logits.weight"][:a], torch.zeros_like(tv.rpn.head.cls_logits.weight))
    assert torch.equal(state["rpn.head.cls_logits.weight"][a:], tv.rpn.head.cls_logits.weight)
    assert torch.equal(state["rpn.head.conv.weight"], tv.rpn.head.conv[0][0].weight)
    assert torch.equal(state["roi_heads.predictor.bbox_pred.bias"], tv.roi_heads.box_predictor.bbox_pred.bias)
    assert not any(k.endswith("num_batches_tracked") for k in state if k.startswith("backbone.body"))


def test_convert_state_of_v2_uses_every_tensor_once():
    theirs = torchvision.models.detection.fasterrcnn_resnet50_fpn_v2(weights=None, weights_backbone=None).state_dict()
    state = convert_state(theirs)
    ours = build_model(preset("resnet50-fpn-v2").model, load_backbone_weights=False).state_dict()
    assert set(state) == set(ours)
    assert [k for k in ours if state[k].shape != ours[k].shape] == []
    # no two torchvision tensors land on one of ours: only the frozen body's 53 counters are dropped
    counters = [k for k in theirs if k.startswith("backbone.body.") and k.endswith(".num_batches_tracked")]
    assert len(counters) == 53 and len(state) == len(theirs) - len(counters)
    pairs = {  # ours <- torchvision's
        "rpn.head.conv.weight": "rpn.head.conv.0.0.weight",
        "rpn.head.extra_convs.0.bias": "rpn.head.conv.1.0.bias",
        "roi_heads.box_head.convs.0.0.weight": "roi_heads.box_head.0.0.weight",
        "roi_heads.box_head.convs.3.1.running_var": "roi_heads.box_head.3.1.running_var",
        "roi_heads.box_head.convs.3.1.num_batches_tracked": "roi_heads.box_head.3.1.num_batches_tracked",
        "roi_heads.box_head.fcs.0.weight": "roi_heads.box_head.5.weight",
        "backbone.fpn.layer_blocks.3.1.bias": "backbone.fpn.layer_blocks.3.1.bias",
        "roi_heads.predictor.bbox_pred.weight": "roi_heads.box_predictor.bbox_pred.weight",
    }
    assert all(state[k] is theirs[t] for k, t in pairs.items())
    assert "backbone.fpn.inner_blocks.0.0.bias" not in state  # the pyramid's convs have no bias


def test_v2_preset_is_resnet50_fpn_with_the_v2_layers():
    v1, v2 = preset("resnet50-fpn"), preset("resnet50-fpn-v2")
    assert v2 == override(v1, {"model.backbone.fpn_norm": "bn", "model.rpn.conv_depth": 2,
                               "model.roi_head.conv_layers": [256, 256, 256, 256], "model.roi_head.fc_layers": 1})


def test_import_errors_name_the_problem(tmp_path):
    with pytest.raises(TorchvisionImportError, match="unknown torchvision detector"):
        import_torchvision("fasterrcnn_resnet9000", tmp_path / "x.pt", tmp_path / "nope.pth")
    junk = tmp_path / "junk.pth"
    torch.save({"a": torch.zeros(1)}, junk)
    with pytest.raises(TorchvisionImportError, match="not a torchvision Faster R-CNN"):
        import_torchvision("fasterrcnn_resnet50_fpn", tmp_path / "x.pt", junk)


def _random_state(tmp_path, name="fasterrcnn_mobilenet_v3_large_320_fpn"):
    tv = getattr(torchvision.models.detection, name)(weights=None, weights_backbone=None)
    path = tmp_path / f"{name}.pth"
    torch.save(tv.state_dict(), path)
    return tv, path


@pytest.mark.parametrize("name, backbone, min_size", [
    ("fasterrcnn_mobilenet_v3_large_320_fpn", "mobilenet_v3_large_fpn", 320),
    ("fasterrcnn_resnet50_fpn_v2", "resnet50_fpn", 800),
])
def test_import_command_and_fine_tuning_from_it(name, backbone, min_size, tmp_path, capsys):
    from fasterrcnn.cli import main

    tv, path = _random_state(tmp_path, name)
    ckpt = tmp_path / "coco.pt"
    assert main(["import", f"torchvision:{name}", "--from-state-dict", str(path), "--out", str(ckpt)]) == 0
    assert f"wrote {ckpt}" in capsys.readouterr().out
    # fine-tuning on the built-in data's 5 classes: 0 iterations writes the starting weights,
    # which are the checkpoint's except the class-specific predictor (fresh, 5 + 1 classes)
    out = tmp_path / "ft"
    assert main(["train", "--init", str(ckpt), "--data", "shapes:train:4", "--out", str(out), "--iters", "0",
                 "--no-progress", "--set", "train.num_workers=0"]) == 0
    start = torch.load(ckpt, weights_only=True)["model"]
    model, cfg, classes = load_model(out / "model_final.pt")
    assert classes == ("ellipse", "rectangle", "triangle", "cross", "ring") and cfg.model.num_classes == 5
    assert cfg.model.backbone.name == backbone and cfg.model.input.min_size_test == min_size
    state = model.state_dict()
    fresh = {k for k in state if k.startswith("roi_heads.predictor.")}
    assert all(torch.equal(state[k], start[k]) for k in state if k not in fresh)
    assert state["roi_heads.predictor.cls_score.weight"].shape == (6, 1024)
    # --init takes the model from the checkpoint: a preset as well is refused
    assert main(["train", "--init", str(ckpt), "--preset", "resnet50-fpn", "--data", "shapes:train:4",
                 "--out", str(tmp_path / "x"), "--iters", "0", "--no-progress"]) == 2
    assert "leave out --preset" in capsys.readouterr().err


def test_import_command_errors(tmp_path, capsys):
    from fasterrcnn.cli import main

    assert main(["import", "detectron2:faster_rcnn_R_50_FPN_1x", "--out", str(tmp_path / "x.pt")]) == 2
    assert "import expects torchvision:NAME" in capsys.readouterr().err
    _, path = _random_state(tmp_path)
    assert main(["import", "torchvision:fasterrcnn_resnet50_fpn", "--from-state-dict", str(path),
                 "--out", str(tmp_path / "x.pt")]) == 2
    err = capsys.readouterr().err
    assert "not the weights of torchvision's fasterrcnn_resnet50_fpn" in err and "Traceback" not in err
    assert not (tmp_path / "x.pt").exists()
