import pytest
import torch
from torchvision.ops import box_iou

from fasterrcnn.config import ConfigError, override, preset
from fasterrcnn.modeling.faster_rcnn import InferenceView, build_model, inference_views, zoom_views
from fasterrcnn.modeling.transform import hflip_boxes

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
    plain = build_model(override(preset("tiny-shapes"), {**TINY, "model.channels_last": False}).model)
    fast = build_model(override(preset("tiny-shapes"), {**TINY, "model.channels_last": True}).model)
    fast.load_state_dict(plain.state_dict())
    conv = next(p for p in fast.backbone.parameters() if p.dim() == 4)
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    assert fast.rpn.head.conv.weight.is_contiguous(memory_format=torch.channels_last)
    images, targets = _scene()
    batch = torch.stack([images[0], images[0]])
    assert fast.features(batch).is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(fast.features(batch), plain.features(batch), rtol=1e-4, atol=1e-3)
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
    for a, b in zip(plain.predict(images, proposals=fixed), fast.predict(images, proposals=fixed)):
        assert len(a["boxes"]) == len(b["boxes"]) > 0
        torch.testing.assert_close(b["boxes"], a["boxes"], rtol=1e-4, atol=1e-3)
        torch.testing.assert_close(b["scores"], a["scores"], rtol=1e-3, atol=1e-3)


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


def test_inference_views_and_hflip_boxes():
    views = inference_views((288, 336), True, 336, 560)
    assert [(v.min_size, v.max_size, v.hflip) for v in views] == [
        (288, 480, False), (288, 480, True), (336, 560, False), (336, 560, True)
    ]
    assert [(v.min_size, v.max_size, v.hflip) for v in inference_views((), False, 600, 1000)] == [(600, 1000, False)]
    boxes = torch.tensor([[10.0, 5, 30, 25]])
    torch.testing.assert_close(hflip_boxes(boxes, 100), torch.tensor([[70.0, 5, 90, 25]]))
    torch.testing.assert_close(hflip_boxes(hflip_boxes(boxes, 100), 100), boxes)


def _det_close(a, b):
    for k in ("boxes", "labels", "scores"):
        torch.testing.assert_close(a[k], b[k])


def _tiny_model_image_plain():
    """A seeded tiny model, a random image and its plain (one-view) prediction, which has boxes."""
    torch.manual_seed(0)
    model = build_model(override(preset("tiny-shapes"), TINY).model)
    img = torch.rand(3, 48, 64)
    plain = model.predict([img])[0]
    assert len(plain["boxes"]) > 0
    return model, img, plain


def test_test_time_views():
    model, img, plain = _tiny_model_image_plain()
    # one explicit view at the test scale is the plain prediction
    model.views = (InferenceView(96, 128),)
    _det_close(model.predict([img])[0], plain)
    # a mirrored view is the mirror image of the plain prediction of the mirrored image
    model.views = (InferenceView(96, 128, hflip=True),)
    flipped = model.predict([img])[0]
    model.views = ()
    mirror = model.predict([img.flip(-1)])[0]
    _det_close(flipped, dict(mirror, boxes=hflip_boxes(mirror["boxes"], 64)))
    # the same view twice: every candidate doubled, NMS removes the copies (with voting too)
    model.views = (InferenceView(96, 128), InferenceView(96, 128))
    _det_close(model.predict([img])[0], plain)
    model.roi_heads.vote_iou = 0.7
    _det_close(model.predict([img])[0], plain)
    # given proposals bypass the views
    props = [torch.tensor([[4.0, 4, 30, 30], [20, 10, 60, 40]])]
    model.views, model.roi_heads.vote_iou = (), 0.0
    fixed = model.predict([img], proposals=props)[0]
    model.views = (InferenceView(96, 128, hflip=True), InferenceView(120, 160))
    _det_close(model.predict([img], proposals=props)[0], fixed)


def test_oriented_views_invert_their_orientation():
    """A transposed / upside-down view is the oriented prediction of the oriented image."""
    torch.manual_seed(0)
    model = build_model(override(preset("tiny-shapes"), TINY).model)
    img = torch.rand(3, 48, 64)
    for view in (InferenceView(96, 128, transpose=True), InferenceView(96, 128, vflip=True),
                 InferenceView(96, 128, hflip=True, vflip=True, transpose=True)):
        o = view.orientation
        model.views = (view,)
        got = model.predict([img])[0]
        model.views = ()
        ref = model.predict([o.image(img)])[0]
        assert len(ref["boxes"]) > 0
        _det_close(got, dict(ref, boxes=o.inverse_boxes(ref["boxes"], (48, 64))))
    views = inference_views((96,), True, 96, 128, vflip=True, transpose=True)
    assert [(v.transpose, v.vflip, v.hflip) for v in views] == [
        (t, v, h) for t in (False, True) for v in (False, True) for h in (False, True)
    ]


def test_agreement_fusion_rescores_the_same_detections():
    torch.manual_seed(0)
    cfg = override(preset("tiny-shapes"), {**TINY, "model.test_aug.hflip": True,
                                           "model.test_aug.score_fusion": "agreement"})
    model = build_model(cfg.model)
    assert model.score_fusion == "agreement" and len(model.views) == 2
    img = torch.rand(3, 48, 64)
    agreed = model.predict([img])[0]
    model.score_fusion = "max"
    best = model.predict([img])[0]
    assert len(best["boxes"]) > 0
    key = lambda d: sorted(zip(d["labels"].tolist(), d["boxes"].round(decimals=3).tolist()))  # noqa: E731
    assert key(agreed) == key(best) and not torch.equal(agreed["scores"], best["scores"])
    assert torch.all(agreed["scores"][:-1] >= agreed["scores"][1:])
    model.views, model.score_fusion = (InferenceView(96, 128),), "agreement"  # one view: as "max"
    model2 = build_model(cfg.model)
    model2.load_state_dict(model.state_dict())
    model2.views, model2.score_fusion = (InferenceView(96, 128),), "max"
    _det_close(model.predict([img])[0], model2.predict([img])[0])
    with pytest.raises(ConfigError, match="score_fusion"):
        override(preset("tiny-shapes"), {"model.test_aug.score_fusion": "mean"})


def test_test_aug_config_builds_views():
    cfg = override(preset("tiny-shapes"), {**TINY, "model.test_aug.min_sizes": ["80", 96],
                                            "model.test_aug.hflip": "true", "model.roi_head.vote_iou": 0.6})
    model = build_model(cfg.model)
    assert [(v.min_size, v.max_size, v.hflip) for v in model.views] == [
        (80, 107, False), (80, 107, True), (96, 128, False), (96, 128, True)
    ]
    assert model.roi_heads.vote_iou == 0.6
    assert build_model(override(preset("tiny-shapes"), TINY).model).views == ()
    cfg = override(preset("tiny-shapes"), {**TINY, "model.test_aug.transpose": True})
    assert [(v.min_size, v.transpose) for v in build_model(cfg.model).views] == [(96, False), (96, True)]


def test_head_options_build_and_train_a_step():
    # hard example mining, context pooling and the /4 shortcut, all at once: the model builds
    # with the right fc6 width, its loss is finite and reaches every new parameter
    cfg = override(preset("tiny-shapes"), {
        **TINY, "model.roi_head.hard_mining": True, "model.roi_head.context_scales": [1.5],
        "model.backbone.fine_channels": 8,
    })
    torch.manual_seed(0)
    model = build_model(cfg.model)
    assert model.backbone.out_channels == 32 + 8
    assert model.roi_heads.box_head.fc6.in_features == 40 * 2 * 49
    assert model.roi_heads.miner is not None and model.roi_heads.miner.num_samples == 32
    images, targets = _scene()
    losses = model.loss(images, targets)
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert model.backbone.shortcut[0][0].weight.grad.abs().sum() > 0
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
    assert len(gpu.views) == 8 and gpu.score_fusion == "agreement"
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
    a_all = cpu.predict(images)
    b_all = gpu.predict([im.cuda() for im in images])
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


def test_zoomed_views_count_only_inside_their_range():
    model, img, plain = _tiny_model_image_plain()
    for fusion in ("max", "agreement"):
        model.score_fusion = fusion
        # a zoomed view whose range holds no box adds nothing: the plain prediction, exactly
        model.views = (InferenceView(96, 128), InferenceView(192, 256, max_box=1e-3))
        _det_close(model.predict([img])[0], plain)
        # with an unbounded range it is an ordinary second scale
        model.views = (InferenceView(96, 128), InferenceView(192, 256, max_box=float("inf")))
        unbounded = model.predict([img])[0]
        model.views = (InferenceView(96, 128), InferenceView(192, 256))
        _det_close(unbounded, model.predict([img])[0])
    # a range between: every detection the zoomed view adds is smaller than its max_box
    model.score_fusion = "max"
    model.views = (InferenceView(96, 128), InferenceView(192, 256, max_box=20.0))
    zoomed = model.predict([img])[0]
    plain_keys = {(lbl, tuple(b)) for lbl, b in zip(plain["labels"].tolist(), plain["boxes"].round(decimals=3).tolist())}
    for lbl, b in zip(zoomed["labels"].tolist(), zoomed["boxes"].round(decimals=3).tolist()):
        if (lbl, tuple(b)) not in plain_keys:
            assert ((b[2] - b[0]) * (b[3] - b[1])) ** 0.5 < 20.0 + 1e-3


def test_zoom_config_builds_views():
    assert zoom_views((432, 576), 32.0, 336, 560) == (
        InferenceView(432, 720, max_box=32.0), InferenceView(576, 960, max_box=32.0))
    # zoomed views alone come after the plain view at the test scale
    cfg = override(preset("tiny-shapes"), {**TINY, "model.test_aug.zoom_sizes": [144],
                                            "model.test_aug.zoom_max_box": 24})
    assert build_model(cfg.model).views == (InferenceView(96, 128), InferenceView(144, 192, max_box=24.0))
    cfg = override(cfg, {"model.test_aug.hflip": True})
    assert [(v.min_size, v.hflip, v.max_box) for v in build_model(cfg.model).views] == [
        (96, False, float("inf")), (96, True, float("inf")), (144, False, 24.0)]
    with pytest.raises(ConfigError, match="zoom_sizes must be positive"):
        override(preset("tiny-shapes"), {"model.test_aug.zoom_sizes": [0]})
    with pytest.raises(ConfigError, match="zoom_max_box must be > 0"):
        override(preset("tiny-shapes"), {"model.test_aug.zoom_max_box": -4})
