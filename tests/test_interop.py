"""Tests of importing torchvision's detectors (fasterrcnn/interop.py): the same detections as
torchvision's model with the same weights, on images of several sizes.

torchvision's models are built with random weights (no download). So that the comparison checks
real detections, the weights are made to behave like trained ones: BatchNorm statistics are
measured on images, the classifier's biases favour some classes, and the test images have
structure (blobs on a gradient) so that scores are not tied across positions.
"""

from __future__ import annotations

import pytest
import torch
import torchvision

from fasterrcnn.engine.checkpoint import load_model
from fasterrcnn.interop import (
    TorchvisionImportError, coco_classes, convert_state, import_torchvision,
)


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
        tv.eval()
        feats = list(tv.backbone(_image(224, 288, 99)[None]).values())
        for block, f in zip(tv.backbone.fpn.layer_blocks, feats):  # pyramid levels of std ~0.5
            block[0].weight.mul_(0.5 / f.std())
            block[0].bias.mul_(0.5 / f.std())
        for m in tv.modules():
            if isinstance(m, torchvision.ops.misc.FrozenBatchNorm2d):  # trained-like statistics
                m.running_var.uniform_(0.5, 2.0)
                m.running_mean.uniform_(-0.1, 0.1)
        # scores that vary with the features (random heads give nearly tied scores everywhere)
        tv.rpn.head.conv[0][0].weight.normal_(0, 0.05)
        tv.rpn.head.cls_logits.weight.normal_(0, 0.1)
        tv.rpn.head.cls_logits.bias.normal_(0, 1)
        tv.roi_heads.box_predictor.cls_score.weight.normal_(0, 2.0)
        tv.roi_heads.box_predictor.cls_score.bias.copy_(torch.linspace(-2, 3, 91))
    return tv


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
@pytest.mark.parametrize("name, dtype", [
    ("fasterrcnn_resnet50_fpn", torch.float32),
    ("fasterrcnn_mobilenet_v3_large_fpn", torch.float64),
    ("fasterrcnn_mobilenet_v3_large_320_fpn", torch.float64),
])
def test_imported_detector_gives_torchvisions_detections(name, dtype, tmp_path):
    tv = _torchvision_model(name)
    path = tmp_path / "tv.pth"
    torch.save(tv.state_dict(), path)
    out = import_torchvision(name, tmp_path / "ours.pt", path)
    model, cfg, classes = load_model(out)
    assert classes == coco_classes() and len(classes) == 90 and classes[0] == "person"
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


def test_import_errors_name_the_problem(tmp_path):
    with pytest.raises(TorchvisionImportError, match="unknown torchvision detector"):
        import_torchvision("fasterrcnn_resnet9000", tmp_path / "x.pt", tmp_path / "nope.pth")
    junk = tmp_path / "junk.pth"
    torch.save({"a": torch.zeros(1)}, junk)
    with pytest.raises(TorchvisionImportError, match="not a torchvision Faster R-CNN"):
        import_torchvision("fasterrcnn_resnet50_fpn", tmp_path / "x.pt", junk)


def _mobilenet_320_state(tmp_path):
    tv = torchvision.models.detection.fasterrcnn_mobilenet_v3_large_320_fpn(weights=None, weights_backbone=None)
    path = tmp_path / "mnv3_320.pth"
    torch.save(tv.state_dict(), path)
    return tv, path


def test_import_command_and_fine_tuning_from_it(tmp_path, capsys):
    from fasterrcnn.cli import main

    tv, path = _mobilenet_320_state(tmp_path)
    ckpt = tmp_path / "coco.pt"
    assert main(["import", "torchvision:fasterrcnn_mobilenet_v3_large_320_fpn", "--from-state-dict", str(path),
                 "--out", str(ckpt)]) == 0
    assert f"wrote {ckpt}" in capsys.readouterr().out
    # fine-tuning on the built-in data's 5 classes: 0 iterations writes the starting weights,
    # which are the checkpoint's except the class-specific predictor (fresh, 5 + 1 classes)
    out = tmp_path / "ft"
    assert main(["train", "--init", str(ckpt), "--data", "shapes:train:4", "--out", str(out), "--iters", "0",
                 "--no-progress", "--set", "train.num_workers=0"]) == 0
    start = torch.load(ckpt, weights_only=True)["model"]
    model, cfg, classes = load_model(out / "model_final.pt")
    assert classes == ("ellipse", "rectangle", "triangle", "cross", "ring") and cfg.model.num_classes == 5
    assert cfg.model.backbone.name == "mobilenet_v3_large_fpn" and cfg.model.input.min_size_test == 320
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
    _, path = _mobilenet_320_state(tmp_path)
    assert main(["import", "torchvision:fasterrcnn_resnet50_fpn", "--from-state-dict", str(path),
                 "--out", str(tmp_path / "x.pt")]) == 2
    err = capsys.readouterr().err
    assert "not the weights of torchvision's fasterrcnn_resnet50_fpn" in err and "Traceback" not in err
    assert not (tmp_path / "x.pt").exists()
