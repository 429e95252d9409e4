import pytest
import torch
from torchvision.ops import box_iou

from fasterrcnn.config import override, preset
from fasterrcnn.modeling.faster_rcnn import build_model

TINY = {
    "model.num_classes": 2,
    "model.backbone.width": 16,
    "model.rpn.conv_channels": 32,
    "model.anchors.sizes": [16, 32],
    "model.input.min_size_train": [96],
    "model.input.max_size_train": 128,
    "model.input.min_size_test": 96,
    "model.input.max_size_test": 128,
    "model.roi_head.representation_size": 64,
    "model.roi_head.batch_size_per_image": 32,
    # fewer test proposals than training ones (the preset keeps the paper's 6000 / 300 at test)
    "model.rpn.pre_nms_top_n_test": 1000,
    "model.rpn.post_nms_top_n_test": 150,
}


def _scene():
    """Two images: a bright square (class 1) and a green bar (class 2) on a dark background."""
    a = torch.full((3, 96, 96), 0.1)
    a[:, 20:52, 30:62] = 0.9
    b = torch.full((3, 96, 128), 0.1)
    b[1, 40:72, 10:74] = 0.9
    targets = [
        {"boxes": torch.tensor([[30.0, 20, 62, 52]]), "labels": torch.tensor([1])},
        {"boxes": torch.tensor([[10.0, 40, 74, 72]]), "labels": torch.tensor([2])},
    ]
    return [a, b], targets


def test_tiny_model_learns_on_cpu():
    torch.manual_seed(0)
    model = build_model(override(preset("tiny-shapes"), TINY).model)
    images, targets = _scene()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9)
    first = None
    for it in range(200):
        losses = model.loss(images, targets)
        total = sum(losses.values())
        first = first if first is not None else total.item()
        opt.zero_grad()
        total.backward()
        opt.step()
    assert total.item() < 0.25 * first
    dets = model.predict(images)
    assert model.training  # predict restores the mode it found
    for d, t in zip(dets, targets):
        top = d["scores"].argmax()
        assert d["labels"][top] == t["labels"][0]
        assert box_iou(d["boxes"][top : top + 1], t["boxes"]).item() > 0.7


def test_loss_dict_keys_stages_and_empty_images():
    model = build_model(override(preset("tiny-shapes"), TINY).model)
    images, targets = _scene()
    targets[1] = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    losses = model.loss(images, targets)
    assert set(losses) == {"rpn_cls", "rpn_reg", "roi_cls", "roi_reg"}
    assert all(torch.isfinite(v) for v in losses.values())
    assert set(model.loss(images, targets, stages=("rpn",))) == {"rpn_cls", "rpn_reg"}
    fixed = [torch.tensor([[0.0, 0, 40, 40]]), torch.tensor([[5.0, 5, 50, 30]])]
    assert set(model.loss(images, targets, proposals=fixed, stages=("roi",))) == {"roi_cls", "roi_reg"}
    with pytest.raises(ValueError):
        model.loss(images, targets, stages=("rpn", "mask"))


def test_predict_and_propose_in_original_coordinates():
    model = build_model(override(preset("tiny-shapes"), TINY).model)
    img = torch.rand(3, 48, 64)  # upscaled to 96 x 128 inside the model
    det = model.predict([img])[0]
    assert det["boxes"].shape[1] == 4
    if len(det["boxes"]):
        assert det["boxes"][:, 2].max() <= 64 and det["boxes"][:, 3].max() <= 48
    props = model.propose([img])[0]
    assert len(props["boxes"]) <= 150 and props["boxes"][:, 2].max() <= 64
    assert len(model.propose([img], training_settings=True)[0]["boxes"]) >= len(props["boxes"])


def test_bad_targets_are_named():
    model = build_model(override(preset("tiny-shapes"), TINY).model)
    images, targets = _scene()
    bad = [dict(targets[0]), dict(targets[1], labels=torch.tensor([0]), file_name="b.jpg")]
    with pytest.raises(ValueError, match=r"b\.jpg.*labels must be in 1\.\.2"):
        model.loss(images, bad)
    bad = [dict(targets[0], boxes=torch.tensor([[10.0, 10, 5, 20]])), targets[1]]
    with pytest.raises(ValueError, match="degenerate"):
        model.loss(images, bad)
    bad = [dict(targets[0], boxes=torch.tensor([[float("nan"), 10, 5, 20]])), targets[1]]
    with pytest.raises(ValueError, match="NaN"):
        model.loss(images, bad)
