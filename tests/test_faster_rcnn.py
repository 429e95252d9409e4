import pytest
import torch
from torchvision.ops import box_iou

from fasterrcnn.config import override
from fasterrcnn.presets import preset
from fasterrcnn.modeling.builder import build_model, build_predictor
from fasterrcnn.modeling.faster_rcnn import FasterRCNN
from helpers import favour_class

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
    # one plain view at test time (the preset pools three scales and mirrors)
    "model.test_aug.min_sizes": [],
    "model.test_aug.hflip": False,
    "model.test_aug.vflip": False,
    "model.test_aug.transpose": False,
    "model.test_aug.zoom_sizes": [],
    "model.roi_head.vote_iou": 0.0,
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


def test_channels_last_model_computes_the_same_losses_gradients_and_detections():
    # Same weights, NHWC convolutions: the numbers agree up to float rounding. Proposals are
    # given to the RoI head, so that rounding cannot reorder the RPN's NMS and change the RoIs.
    torch.manual_seed(0)
    plain = build_model(override(preset("tiny-shapes"), {**TINY, "model.channels_last": "never"}).model)
    fast = build_model(override(preset("tiny-shapes"), {**TINY, "model.channels_last": "always"}).model)
    fast.load_state_dict(plain.state_dict())
    conv = next(p for p in fast.backbone.parameters() if p.dim() == 4)
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    assert fast.rpn.head.conv.weight.is_contiguous(memory_format=torch.channels_last)
    images, targets = _scene()
    batch = torch.stack([images[0], images[0]])
    assert list(fast.features(batch)) == ["p3"]
    assert fast.features(batch)["p3"].is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(fast.features(batch)["p3"], plain.features(batch)["p3"], rtol=1e-4, atol=1e-3)
    fixed = [torch.tensor([[28.0, 18, 60, 50], [0, 0, 40, 40]]), torch.tensor([[12.0, 38, 70, 70]])]
    for model in (plain, fast):
        torch.manual_seed(1)  # the same RPN and RoI samples
        losses = model.loss(images, targets, proposals=fixed)
        sum(losses.values()).backward()
        model.saved = {k: v.detach() for k, v in losses.items()}
    for k in plain.saved:
        torch.testing.assert_close(fast.saved[k], plain.saved[k], rtol=1e-4, atol=1e-5)
    for (name, p), q in zip(plain.named_parameters(), fast.parameters()):
        if p.grad is not None:
            torch.testing.assert_close(q.grad, p.grad, rtol=1e-3, atol=1e-4, msg=name)
    def detect(model):  # the head's detections on the fixed proposals (both images at scale 1)
        model.eval()
        with torch.no_grad():
            batch = model.transform(images, training=False)
            assert batch.image_sizes == batch.original_sizes
            out = model.roi_heads.class_boxes(model.features(batch.tensor), fixed, batch.image_sizes)
        return [model.roi_heads.selector(s, b) for s, b in out]

    for a, b in zip(detect(plain), detect(fast)):
        assert len(a["boxes"]) == len(b["boxes"]) > 0
        torch.testing.assert_close(b["boxes"], a["boxes"], rtol=1e-4, atol=1e-3)
        torch.testing.assert_close(b["scores"], a["scores"], rtol=1e-3, atol=1e-3)


def test_channels_last_for_inference_only_leaves_weights_and_training_in_nchw():
    torch.manual_seed(0)
    plain = build_model(override(preset("tiny-shapes"), {**TINY, "model.channels_last": "never"}).model)
    mixed = build_model(override(preset("tiny-shapes"), {**TINY, "model.channels_last": "inference"}).model)
    mixed.load_state_dict(plain.state_dict())
    assert all(p.is_contiguous() for p in mixed.parameters())
    images, _ = _scene()
    batch = torch.stack([images[0], images[0]])
    mixed.eval()
    out = mixed.features(batch)["p3"]
    assert out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous()
    plain.eval()
    torch.testing.assert_close(out, plain.features(batch)["p3"], rtol=1e-4, atol=1e-3)
    for a, b in zip(plain.predict(images), mixed.predict(images)):
        assert len(a["boxes"]) == len(b["boxes"]) > 0
        torch.testing.assert_close(b["boxes"], a["boxes"], rtol=1e-4, atol=1e-2)
        torch.testing.assert_close(b["scores"], a["scores"], rtol=1e-3, atol=1e-4)
    mixed.train()
    assert mixed.features(batch)["p3"].is_contiguous()  # training: NCHW
    with pytest.raises(ValueError, match="channels_last"):
        FasterRCNN(plain.backbone, plain.rpn, plain.roi_heads, plain.transform, num_classes=5, channels_last="yes")


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
    torch.manual_seed(0)
    model = build_model(override(preset("tiny-shapes"), TINY).model)
    favour_class(model, 2)
    img = torch.rand(3, 48, 64)  # upscaled to 96 x 128 inside the model
    det = model.predict([img])[0]
    assert len(det["boxes"]) > 0 and (det["labels"] == 2).all()
    assert det["boxes"][:, 2].max() <= 64 and det["boxes"][:, 3].max() <= 48
    # the same boxes as the model's input-scale candidates, halved back to the image's pixels
    scores, boxes = model.candidates([img])[0]
    assert scores.shape[1] == 2 and boxes.shape[1:] == (2, 4) and boxes[..., 2].max() <= 64
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


def test_head_options_build_and_train_a_step():
    # hard example mining and context pooling at once: the model builds with the right fc6
    # width, its loss is finite and reaches every parameter of the head
    cfg = override(preset("tiny-shapes"), {
        **TINY, "model.roi_head.hard_mining": True, "model.roi_head.context_scales": [1.5],
    })
    torch.manual_seed(0)
    model = build_model(cfg.model)
    assert model.roi_heads.box_head.fc6.in_features == 32 * 2 * 49
    miner = model.roi_heads.sampling.miner
    assert miner is not None and miner.num_samples == 32
    images, targets = _scene()
    losses = model.loss(images, targets)
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.roi_heads.parameters())
    model.eval()
    assert len(model.predict(images)) == 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu_losses_gradients_and_eight_view_detections():
    # The demo preset's parts on CUDA (channels-last convolutions, RoIAlign with context, the
    # eight orientations with agreement fusion) against the same weights on the CPU, where
    # RoIAlign runs as a sparse product: the same numbers up to float rounding. Given proposals
    # keep the RoIs the same on both devices. TF32 is off: it rounds convolution inputs to 10
    # mantissa bits, which is a precision setting, not what this test checks.
    torch.backends.cudnn.allow_tf32, tf32 = False, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32, tf32_mm = False, torch.backends.cuda.matmul.allow_tf32
    try:
        _cuda_matches_cpu()
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32, tf32_mm


def _relative_error(got: torch.Tensor, ref: torch.Tensor) -> float:
    return float((got.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-12))


def _cuda_matches_cpu() -> None:
    torch.manual_seed(0)
    cfg = override(preset("tiny-shapes"), {**TINY, "model.test_aug.hflip": True,
                                           "model.test_aug.vflip": True, "model.test_aug.transpose": True,
                                           "model.test_aug.min_sizes": [96]})
    cpu = build_model(cfg.model)
    images, targets = _scene()
    opt = torch.optim.SGD(cpu.parameters(), lr=0.01, momentum=0.9)
    for _ in range(30):  # a few steps, so that the detections are not all near the threshold
        opt.zero_grad()
        sum(cpu.loss(images, targets).values()).backward()
        opt.step()
    gpu = build_model(cfg.model).cuda()
    gpu.load_state_dict(cpu.state_dict())
    cpu_tta, gpu_tta = build_predictor(cpu, cfg.model), build_predictor(gpu, cfg.model)
    assert len(gpu_tta.views) == 8 and gpu_tta.fusion == "agreement"
    fixed = [torch.tensor([[28.0, 18, 60, 50], [0, 0, 40, 40]]), torch.tensor([[12.0, 38, 70, 70]])]
    cpu.zero_grad()
    for model, dev in ((cpu, "cpu"), (gpu, "cuda")):
        torch.manual_seed(1)
        losses = model.loss([im.to(dev) for im in images],
                            [{k: v.to(dev) for k, v in t.items()} for t in targets],
                            proposals=[p.to(dev) for p in fixed], stages=("roi",))
        sum(losses.values()).backward()
        model.saved = {k: v.detach().cpu() for k, v in losses.items()}
    for k in cpu.saved:
        torch.testing.assert_close(gpu.saved[k], cpu.saved[k], rtol=1e-3, atol=1e-4)
    for (name, p), q in zip(cpu.named_parameters(), gpu.parameters()):
        if p.grad is not None:  # float32 sums in another order: far under 1e-3 of the norm
            assert _relative_error(q.grad.cpu(), p.grad) < 1e-3, (name, _relative_error(q.grad.cpu(), p.grad))
    a_all = cpu_tta(images)
    b_all = gpu_tta([im.cuda() for im in images])
    for a, b in zip(a_all, b_all):
        assert b["boxes"].is_cuda and len(a["boxes"]) > 0
        keep = a["scores"] > 0.1  # rounding can reorder near-threshold candidates only
        ious = box_iou(a["boxes"][keep], b["boxes"].cpu())
        best = ious.max(dim=1)
        assert (best.values > 0.99).all()
        assert torch.equal(b["labels"].cpu()[best.indices], a["labels"][keep])
        torch.testing.assert_close(b["scores"].cpu()[best.indices], a["scores"][keep], rtol=1e-3, atol=1e-3)
    # a whole training step on CUDA, RPN included, gives finite losses and gradients
    gpu.zero_grad()
    losses = gpu.loss([im.cuda() for im in images], [{k: v.cuda() for k, v in t.items()} for t in targets])
    sum(losses.values()).backward()
    assert all(torch.isfinite(v) for v in losses.values())
    assert all(torch.isfinite(p.grad).all() for p in gpu.parameters() if p.grad is not None)
