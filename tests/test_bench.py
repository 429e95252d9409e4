"""fasterrcnn bench: the staged pass computes what predict/loss compute, the torchvision twin
builds and runs for every kind of preset, and the command end to end (no timing assertions)."""

import json

import pytest
import torch

from fasterrcnn.cli import main
from fasterrcnn.config import ConfigError, override
from fasterrcnn.engine.bench import (
    StageTimer, TrainStep, parse_size, resolve_dtype, stage_medians, staged_loss, staged_predict, summarize,
    synthetic_batch, table5,
)
from fasterrcnn.engine.torchvision_twin import SamePooler, build_twin, timed_twin, twin_loss, twin_predict
from fasterrcnn.modeling.builder import build_model
from fasterrcnn.presets import preset

CPU = torch.device("cpu")
SIZE = (64, 96)
SMALL = {  # small heads and few proposals: the same code paths, fast
    "model.roi_head.representation_size": 64,
    "model.rpn.pre_nms_top_n_train": 300,
    "model.rpn.post_nms_top_n_train": 100,
    "model.rpn.pre_nms_top_n_test": 300,
    "model.rpn.post_nms_top_n_test": 50,
    "model.roi_head.batch_size_per_image": 32,
    "model.roi_head.score_thresh": 0.001,  # random weights: every class near 1 / (K + 1)
}
# one preset of each kind: the paper's (VGG, RoI pooling), stride 8 with RoIAlign and context
# boxes in channels-last memory, MobileNetV2, a multi-level FPN, a C4 backbone with a res5 head
KINDS = ("vgg16-voc07", "tiny-shapes", "mobilenetv2-trees", "mobilenetv3-320-fpn", "resnet50-c4")


C4_FEWER = {  # res5 runs on every RoI: a handful keeps the C4 tests fast
    "model.rpn.post_nms_top_n_test": 8,
    "model.rpn.post_nms_top_n_train": 8,
    "model.roi_head.batch_size_per_image": 8,
}


def _model(name: str):
    cfg = override(preset(name), {**SMALL, **(C4_FEWER if name.endswith("-c4") else {})})
    model = build_model(cfg.model, load_backbone_weights=False)
    t = model.transform
    t.min_size_test, t.max_size_test = min(SIZE), max(SIZE)
    t.min_size_train, t.max_size_train = (min(SIZE),), max(SIZE)
    return model


def _same_detections(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert set(x) == set(y)
        for k in x:
            assert torch.equal(x[k], y[k]), k


@pytest.mark.parametrize("name", ["tiny-shapes", "mobilenetv3-320-fpn", "resnet50-c4"])
def test_staged_predict_gives_the_detections_of_predict(name):
    model = _model(name)
    images, _ = synthetic_batch(2, SIZE, model.num_classes, 3, CPU)
    timer = StageTimer(CPU)
    staged = staged_predict(model, images, timer)
    _same_detections(staged, model.predict(images))
    assert sum(len(d["boxes"]) for d in staged) > 0  # something reached the final selection
    assert {"transform", "backbone", "rpn_head", "proposals", "region", "region.roi_pool",
            "region.box_head"} <= set(timer.seconds)
    _same_detections(staged_predict(model, images, StageTimer(CPU, enabled=False)), staged)


@pytest.mark.parametrize("name", ["tiny-shapes", "mobilenetv3-320-fpn"])
def test_staged_loss_gives_the_losses_of_loss(name):
    model = _model(name).train()
    images, targets = synthetic_batch(2, SIZE, model.num_classes, 3, CPU)
    torch.manual_seed(7)
    timer = StageTimer(CPU)
    staged = staged_loss(model, images, targets, timer)
    torch.manual_seed(7)
    plain = model.loss(images, targets)
    assert list(staged) == list(plain)
    for k in plain:
        assert torch.equal(staged[k], plain[k]), k
    assert {"transform", "backbone", "rpn_head", "rpn_loss", "proposals", "roi_sampling", "roi_head",
            "roi_head.roi_pool"} <= set(timer.seconds)


def test_train_step_times_backward_and_optimizer_and_keeps_the_weights():
    model = _model("tiny-shapes").train()
    images, targets = synthetic_batch(1, SIZE, model.num_classes, 2, CPU)
    before = {k: v.clone() for k, v in model.state_dict().items() if v.is_floating_point()}
    step = TrainStep(model, lambda im, tg, t: staged_loss(model, im, tg, t), CPU, None)
    timer = StageTimer(CPU)
    total = step(images, targets, timer)
    assert total > 0 and {"backward", "optimizer"} <= set(timer.seconds)
    assert any(p.grad is not None for p in model.parameters())
    for k, v in model.state_dict().items():  # lr 0: the update is computed, the weights stay
        if k in before and "running" not in k:
            assert torch.equal(v, before[k]), k


@pytest.mark.parametrize("name", KINDS)
def test_twin_builds_and_runs_predict_and_a_training_step(name):
    model = _model(name)
    twin = build_twin(model)
    assert isinstance(twin.roi_heads.box_roi_pool, SamePooler)
    assert twin.roi_heads.box_roi_pool.pooler is model.roi_heads.pooler
    assert twin.rpn.anchor_generator.num_anchors_per_location() == [model.rpn.anchor_generator.num_anchors] * len(
        model.rpn.anchor_generator.levels)
    assert twin.rpn._post_nms_top_n["testing"] == model.rpn.test_settings.post_nms_top_n
    assert twin.rpn.nms_thresh == model.rpn.test_settings.nms_thresh
    assert twin.roi_heads.detections_per_img == model.roi_heads.selector.detections_per_img
    assert twin.backbone.body is not model.backbone  # a copy with the same weights
    for (k, a), (_, b) in zip(model.backbone.state_dict().items(), twin.backbone.body.state_dict().items()):
        assert torch.equal(a, b), k
    images, targets = synthetic_batch(1, SIZE, model.num_classes, 2, CPU)
    det = twin_predict(twin, images)
    assert set(det[0]) == {"boxes", "labels", "scores"}
    assert not twin.training
    twin.train()
    timer = StageTimer(CPU)
    with timed_twin(twin, timer.start, timer.stop):
        losses = twin_loss(twin, images, targets)
    torch.stack(list(losses.values())).sum().backward()
    assert {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg"} == set(losses)
    assert {"backbone", "rpn", "rpn.anchor_labelling", "roi_heads", "roi_heads.sampling",
            "roi_heads.roi_pool"} <= set(timer.seconds)
    assert "select_training_samples" not in vars(twin.roi_heads)  # the timing wrappers are gone


def test_summary_statistics_and_stage_tables():
    s = summarize([3.0, 1.0, 2.0, 5.0, 4.0])
    assert s == {"median": 3.0, "min": 1.0, "max": 5.0, "q1": 2.0, "q3": 4.0, "n": 5}
    assert summarize([2.0])["median"] == 2.0
    runs = [{"a": 1.0, "b": 2.0, "b.x": 1.5}, {"a": 3.0, "b": 2.0, "b.x": 0.5}, {"a": 2.0, "b": 4.0}]
    med = stage_medians(runs)
    assert med["a"] == 2.0 and med["b"] == 2.0 and med["b.x"] == 0.5
    assert med["total"] == 5.0  # the median of the runs' sums 3, 5, 6 (parts "b.x" not added)
    groups = {"conv": ("a",), "rest": ("b", "c"), "absent": ("z",)}
    assert table5(med, groups) == {"conv": 2.0, "rest": 2.0, "total": 5.0}


def test_flags_parsed_with_clear_errors():
    assert parse_size("600x1000") == (600, 1000)
    assert parse_size("300X500") == (300, 500)
    for bad in ("600", "600x", "ax1", "0x10", "-5x10"):
        with pytest.raises(ConfigError, match="--size"):
            parse_size(bad)
    assert resolve_dtype("fp32", CPU) is None and resolve_dtype("bf16", CPU) == torch.bfloat16
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
        resolve_dtype("fp16", CPU)


def test_cli_end_to_end_writes_the_documented_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    code = main(["bench", "--preset", "tiny-shapes", "--size", "64x96", "--iters", "1", "--warmup", "0",
                 "--batch", "2", "--compare", "torchvision", "--stages", "--json", str(out)])
    assert code == 0
    text = capsys.readouterr().out
    assert "inference latency, batch 1" in text and "weights are random" in text and "ratio" in text
    r = json.loads(out.read_text())
    for key in ("preset", "checkpoint", "weights", "note", "device", "device_name", "dtype", "size", "batch",
                "train_batch", "iters", "warmup", "gt_boxes", "proposals", "threads", "torch", "torchvision",
                "memory", "results", "ratio"):
        assert key in r, key
    assert r["size"] == [64, 96] and r["weights"] == "random" and r["dtype"] == "fp32"
    assert r["folded_batchnorms"] == 6  # the tiny net's six conv-BN pairs, folded for inference
    assert set(r["results"]) == {"fasterrcnn", "torchvision"}
    for res in r["results"].values():
        for key in ("infer_latency_s", "infer_batch_s", "infer_throughput_img_s", "train_step_s",
                    "train_throughput_img_s", "peak_memory_mb", "param_memory_mb", "detections_per_image",
                    "stages", "table5"):
            assert key in res, key
        assert set(res["infer_latency_s"]) == {"median", "min", "max", "q1", "q3", "n"}
        assert set(res["peak_memory_mb"]) == {"infer", "infer_batch", "train"}
        assert {"conv", "proposal", "region_wise", "total"} <= set(res["table5"]["infer"])
        assert {"conv", "proposal", "region_wise", "backward", "total"} <= set(res["table5"]["train"])
    assert {"infer_speedup", "infer_throughput", "train_throughput"} <= set(r["ratio"])
    assert r["ratio"]["memory_infer"] is None  # CPU peak RSS is process-wide: no per-model ratio


def test_cli_inference_only_without_comparison(tmp_path):
    out = tmp_path / "b.json"
    assert main(["bench", "--preset", "tiny-shapes", "--size", "64x96", "--iters", "1", "--warmup", "0",
                 "--batch", "1", "--no-train", "--proposals", "20", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert list(r["results"]) == ["fasterrcnn"] and "ratio" not in r and r["train_batch"] is None
    assert r["proposals"] == 20 and "train_step_s" not in r["results"]["fasterrcnn"]
    assert main(["bench", "--preset", "tiny-shapes", "--size", "64x96", "--iters", "1", "--warmup", "0",
                 "--batch", "1", "--no-train", "--no-fold", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["folded_batchnorms"] == 0


def test_cli_times_a_checkpoint(tmp_path):
    from fasterrcnn.engine.checkpoint import export_weights

    cfg = preset("tiny-shapes")
    model = build_model(cfg.model, load_backbone_weights=False)
    ckpt = export_weights(tmp_path / "model.pt", model=model, cfg=cfg, classes=[f"c{i}" for i in range(5)])
    out = tmp_path / "b.json"
    assert main(["bench", "--checkpoint", str(ckpt), "--size", "64x96", "--iters", "1", "--warmup", "0",
                 "--batch", "1", "--no-train", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["weights"] == "checkpoint" and r["note"] is None and r["checkpoint"] == str(ckpt)


@pytest.mark.parametrize("argv, message", [
    (["--preset", "tiny-shapes", "--device", "cpu", "--dtype", "fp16"], "fp16 needs a CUDA device"),
    (["--preset", "tiny-shapes", "--size", "600by1000"], "--size expects HxW"),
    (["--preset", "tiny-shapes", "--iters", "0"], "--iters must be at least 1"),
    (["--preset", "no-such-preset"], "unknown preset"),
    ([], "give --preset NAME or --checkpoint FILE"),
])
def test_cli_bad_flags_exit_2_with_a_clear_error(argv, message, capsys):
    assert main(["bench", "--size", "64x96", *argv] if "--size" not in argv else ["bench", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_cli_unknown_dtype_is_an_argparse_error():
    with pytest.raises(SystemExit) as exc:
        main(["bench", "--preset", "tiny-shapes", "--dtype", "fp64"])
    assert exc.value.code == 2
