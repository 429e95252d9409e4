"""ONNX export: the exported graph, run by onnxruntime, gives model.predict's detections.

Random-init models with their classifiers sharpened (cls_score weights x30, a bias ramp) so that
real, distinct-scored detections come out; input sizes small for speed. Detections are matched
one to one (same label, score within 1e-4, box within 1e-2 px), so that the order of two
equal scores does not matter.
"""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from fasterrcnn.cli import main  # noqa: E402
from fasterrcnn.config import override  # noqa: E402
from fasterrcnn.engine.checkpoint import export_weights  # noqa: E402
from fasterrcnn.export.graph import ExportableDetector, ExportError  # noqa: E402
from fasterrcnn.export.onnx import OnnxDetector, describe, export_onnx  # noqa: E402
from fasterrcnn.modeling.builder import build_model  # noqa: E402
from fasterrcnn.presets import preset  # noqa: E402

BOX_TOL, SCORE_TOL = 1e-2, 1e-4
SIZES = ((200, 300), (331, 257))  # landscape and portrait, neither a multiple of 16


def sharpened_model(name: str, **overrides):
    cfg = override(preset(name), overrides)
    model = build_model(cfg.model).eval()
    with torch.no_grad():
        model.rpn.head.cls_logits.weight.mul_(30)
        model.roi_heads.predictor.cls_score.weight.mul_(30)
        k = cfg.model.num_classes
        model.roi_heads.predictor.cls_score.bias.copy_(torch.linspace(-1, 1, k + 1))
    return model, cfg


def images(dtype: torch.dtype = torch.uint8, per_size: int = 1) -> list[torch.Tensor]:
    """``per_size`` random images of each of SIZES, those of one size together."""
    g = torch.Generator().manual_seed(1)
    out = [torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g) for h, w in SIZES for _ in range(per_size)]
    return out if dtype == torch.uint8 else [x.float() / 255 for x in out]


def match(ref: dict, out: dict) -> tuple[float, float]:
    """(max box difference, max score difference) over a one-to-one matching of the detections
    (same label, score within SCORE_TOL, box within BOX_TOL); fails if any is left over."""
    assert len(ref["boxes"]) == len(out["boxes"]), (len(ref["boxes"]), len(out["boxes"]))
    used = torch.zeros(len(out["boxes"]), dtype=torch.bool)
    box_diff = score_diff = 0.0
    for box, label, score in zip(ref["boxes"], ref["labels"], ref["scores"]):
        ok = ~used & (out["labels"] == label) & ((out["scores"] - score).abs() <= SCORE_TOL)
        d = (out["boxes"] - box).abs().amax(dim=1).masked_fill(~ok, float("inf"))
        j = int(d.argmin())
        assert d[j] <= BOX_TOL, f"no ONNX detection matches {box.tolist()} label {int(label)} score {float(score)}"
        used[j] = True
        box_diff = max(box_diff, float(d[j]))
        score_diff = max(score_diff, float((out["scores"][j] - score).abs()))
    return box_diff, score_diff


def assert_same_detections(model, path, inputs) -> None:
    """The exported graph on ``inputs`` (same-size neighbours run as one batch) gives each image
    the detections ``model.predict`` gives it alone."""
    runner = OnnxDetector(path, threads=1)
    outputs = runner(inputs)
    assert len(outputs) == len(inputs)
    for image, out in zip(inputs, outputs):
        ref = model.predict([image.float() / 255 if image.dtype == torch.uint8 else image])[0]
        assert len(ref["boxes"]) > 5, "the sharpened model should detect something"
        match(ref, out)
        # ordered by score, the labels agree (ties aside: scores differ by far more than SCORE_TOL here)
        assert torch.equal(ref["labels"][ref["scores"].argsort(descending=True, stable=True)],
                           out["labels"][out["scores"].argsort(descending=True, stable=True)]) or \
            (ref["scores"].diff().abs() < SCORE_TOL).any()


def test_zf_voc07_matches_pytorch_on_two_sizes(tmp_path):
    # the paper's ZF net (RoI pooling, stride 16, 9 anchors, 20 classes); fc6/fc7 narrowed for speed
    model, _ = sharpened_model("zf-voc07", **{"model.input.min_size_test": 224, "model.input.max_size_test": 320,
                                              "model.roi_head.representation_size": 512})
    path = export_onnx(model, tmp_path / "zf.onnx", classes=[f"c{i}" for i in range(20)])
    assert_same_detections(model, path, images(per_size=2))


def test_tiny_shapes_float_input_roialign_context_channels_last(tmp_path):
    # RoIAlign with context boxes, stride 8, anchor offset 0, channels-last memory; float input
    model, _ = sharpened_model("tiny-shapes", **{"model.input.min_size_test": 160, "model.input.max_size_test": 240})
    path = export_onnx(model, tmp_path / "tiny.onnx", input_dtype="float32")
    assert_same_detections(model, path, images(torch.float32, per_size=2))


def test_fpn_model_matches_pytorch_on_two_sizes(tmp_path):
    # five levels, torchvision-style anchors, top-N-first proposals, RoIAlign (not aligned) from
    # the level each box's size picks, floor rounding and padding to 32
    from fasterrcnn.presets import PRESETS

    if "resnet50-fpn" not in PRESETS:
        pytest.skip("no FPN preset in this version")
    model, _ = sharpened_model("resnet50-fpn", **{"model.input.min_size_test": 160, "model.input.max_size_test": 240,
                                                  "model.num_classes": 5})
    with torch.no_grad():  # random ResNet features have a std of ~40: bring them to ~1
        for conv in model.backbone.fpn.layer_blocks.modules():
            if isinstance(conv, torch.nn.Conv2d):
                conv.weight.div_(40)
    path = export_onnx(model, tmp_path / "fpn.onnx")
    assert_same_detections(model, path, images(per_size=2))


def test_graph_inputs_outputs_and_metadata(tmp_path):
    model, _ = sharpened_model("tiny-shapes", **{"model.input.min_size_test": 96, "model.input.max_size_test": 128})
    path = export_onnx(model, tmp_path / "m.onnx", classes=["a", "b", "c", "d", "e"])
    info = describe(path)
    assert info["inputs"] == {"images": ["batch", 3, "height", "width"]}
    assert info["outputs"] == {"boxes": ["detections", 4], "labels": ["detections"], "scores": ["detections"],
                               "image_index": ["detections"]}
    assert info["opset"] == 17 and json.loads(info["metadata"]["classes"]) == ["a", "b", "c", "d", "e"]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].type == "tensor(uint8)"
    batch = torch.stack(images(per_size=3)[:3])  # three images of one size
    boxes, labels, scores, image = session.run(None, {"images": batch.numpy()})
    assert boxes.dtype.name == "float32" and labels.dtype.name == "int64" and scores.dtype.name == "float32"
    assert image.dtype.name == "int64" and boxes.shape == (len(labels), 4) == (len(image), 4)
    assert set(image.tolist()) == {0, 1, 2} and (image[:-1] <= image[1:]).all()  # grouped by image
    for i in range(3):  # best first within each image, and each image's own detections
        assert (scores[image == i][:-1] >= scores[image == i][1:]).all()
        alone = session.run(None, {"images": batch[i:i + 1].numpy()})
        assert (alone[3] == 0).all() and len(alone[0]) == (image == i).sum()
        assert abs(alone[0] - boxes[image == i]).max() <= BOX_TOL and abs(alone[2] - scores[image == i]).max() <= SCORE_TOL


def test_no_detections_is_an_empty_result_not_an_error(tmp_path):
    import dataclasses

    model, _ = sharpened_model("tiny-shapes", **{"model.input.min_size_test": 96, "model.input.max_size_test": 128})
    strict = dataclasses.replace(model.roi_heads.selector, score_thresh=0.999)
    path = export_onnx(model, tmp_path / "m.onnx", selector=strict)
    out = OnnxDetector(path)([images()[0], torch.zeros(3, 40, 50, dtype=torch.uint8)])
    for det in out:
        assert det["boxes"].shape == (0, 4) and det["labels"].shape == (0,) and det["scores"].shape == (0,)


def test_detections_per_image_cap_holds_per_image_in_a_batch(tmp_path):
    import dataclasses

    model, _ = sharpened_model("tiny-shapes", **{"model.input.min_size_test": 96, "model.input.max_size_test": 128})
    capped = dataclasses.replace(model.roi_heads.selector, detections_per_img=4)
    path = export_onnx(model, tmp_path / "m.onnx", selector=capped)
    model.roi_heads.selector = capped
    inputs = images(per_size=3)
    outputs = OnnxDetector(path, threads=1, batch_size=3)(inputs)
    for image, out in zip(inputs, outputs):
        ref = model.predict([image.float() / 255])[0]
        assert len(ref["boxes"]) == len(out["boxes"]) == 4
        match(ref, out)


def test_a_file_of_the_single_image_form_still_runs(tmp_path):
    # earlier versions wrote graphs taking one image [3, H, W] with three outputs
    model, _ = sharpened_model("tiny-shapes", **{"model.input.min_size_test": 96, "model.input.max_size_test": 128})

    class SingleImage(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.graph = ExportableDetector(model)

        def forward(self, image):
            return self.graph(image[None])[:3]

    path = tmp_path / "single.onnx"
    with torch.no_grad():
        torch.onnx.export(SingleImage().eval(), (images()[0],), str(path), dynamo=False, opset_version=17,
                          input_names=["image"], output_names=["boxes", "labels", "scores"],
                          dynamic_axes={"image": {1: "h", 2: "w"}, "boxes": {0: "d"}, "labels": {0: "d"},
                                        "scores": {0: "d"}})
    runner = OnnxDetector(path)
    assert not runner.batched
    assert_same_detections(model, path, images(per_size=2))


def test_cascade_is_refused(tmp_path):
    cfg = override(preset("tiny-shapes"), {"model.roi_head.cascade_ious": [0.6]})
    with pytest.raises(ExportError, match="cascade"):
        export_onnx(build_model(cfg.model), tmp_path / "m.onnx")


def test_export_command_and_detect_onnx_agree_with_detect_checkpoint(tmp_path, capsys):
    from PIL import Image

    model, cfg = sharpened_model("tiny-shapes", **{"model.input.min_size_test": 128, "model.input.max_size_test": 192})
    classes = ("ellipse", "rectangle", "triangle", "cross", "ring")
    ckpt = export_weights(tmp_path / "model_final.pt", model=model, cfg=cfg, classes=classes)
    onnx_path = tmp_path / "model.onnx"
    assert main(["export", "--checkpoint", str(ckpt), "--format", "onnx", "--out", str(onnx_path)]) == 0
    assert "input images uint8 ['batch', 3, 'height', 'width']" in capsys.readouterr().out
    folder = tmp_path / "images"
    folder.mkdir()
    for i, image in enumerate(images()):
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / f"img{i}.png")
    results = {}
    for name, source in (("onnx", ["--onnx", str(onnx_path)]), ("torch", ["--checkpoint", str(ckpt), "--no-tta"])):
        out = tmp_path / name
        assert main(["detect", str(folder), "--out", str(out), "--score-thresh", "0.3", *source]) == 0
        results[name] = json.loads((out / "detections.json").read_text())
        assert (out / "img0.jpg").is_file()
    assert len(results["onnx"]) == len(results["torch"]) > 0
    key = lambda r: (r["file_name"], r["category"], round(r["score"], 3), [round(v, 1) for v in r["bbox"]])  # noqa: E731
    assert sorted(map(key, results["onnx"])) == sorted(map(key, results["torch"]))
    assert all(r["score"] > 0.3 and r["category"] in classes for r in results["onnx"])


def test_detect_onnx_flag_errors(tmp_path, capsys):
    assert main(["detect", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "--checkpoint" in capsys.readouterr().err
    model, cfg = sharpened_model("tiny-shapes", **{"model.input.min_size_test": 96, "model.input.max_size_test": 128})
    path = export_onnx(model, tmp_path / "m.onnx")
    assert main(["detect", str(tmp_path), "--out", str(tmp_path / "o"), "--onnx", str(path), "--tile", "256"]) == 2
    assert "--tile" in capsys.readouterr().err
    (tmp_path / "bad.onnx").write_bytes(b"not onnx")
    assert main(["detect", str(tmp_path), "--out", str(tmp_path / "o"), "--onnx", str(tmp_path / "bad.onnx")]) == 2
    assert "onnxruntime cannot load it" in capsys.readouterr().err
