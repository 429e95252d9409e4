"""The command line end to end, on tiny runs of the built-in data."""

import json
import math

import pytest
from PIL import Image

from fasterrcnn.cli import main
from fasterrcnn.config import ConfigError
from fasterrcnn.data.export import export_voc
from fasterrcnn.data.shapes import ShapesDataset


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    code = main(["demo", "--out", str(out), "--iters", "2", "--train-images", "8", "--test-images", "4", "--no-progress"])
    assert code == 0
    return out


def test_demo_progress_flags():
    from fasterrcnn.cli.parser import build_parser

    parser = build_parser()
    assert parser.parse_args(["demo"]).quiet is False
    assert parser.parse_args(["demo", "--no-progress"]).quiet is True
    assert parser.parse_args(["demo", "--quiet"]).quiet is True  # the older spelling


def test_demo_writes_checkpoint_metrics_and_picture(demo_dir):
    for name in ("model_final.pt", "last.pt", "metrics.json", "detections.jpg", "detections.json", "log.jsonl"):
        assert (demo_dir / name).is_file(), name
    m = json.loads((demo_dir / "metrics.json").read_text())
    assert m["metric"] == "voc07" and 0.0 <= m["mAP"] <= 1.0
    assert set(m["AP"]) == {"ellipse", "rectangle", "triangle", "cross", "ring"}
    assert Image.open(demo_dir / "detections.jpg").size[0] > 300


def test_detect_folder_writes_pictures_and_coco_results(demo_dir, tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    ds = ShapesDataset("test", 2)
    for i in range(2):
        Image.fromarray(ds[i][0].permute(1, 2, 0).numpy()).save(images / f"img{i}.png")
    (images / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    out = tmp_path / "out"
    code = main(["detect", "--checkpoint", str(demo_dir / "model_final.pt"), str(images), "--out", str(out),
                 "--score-thresh", "0.0"])
    assert code == 0
    assert (out / "img0.jpg").is_file() and (out / "img1.jpg").is_file()
    results = json.loads((out / "detections.json").read_text())
    assert isinstance(results, list)
    for r in results:
        assert set(r) >= {"image_id", "file_name", "category_id", "category", "bbox", "score"}
        assert len(r["bbox"]) == 4 and r["bbox"][2] >= 0 and r["bbox"][3] >= 0
        assert r["category"] in ds.classes and 1 <= r["category_id"] <= 5
    assert not any("broken" in r["file_name"] for r in results)
    assert "1 unreadable file(s) skipped" in capsys.readouterr().out


@pytest.mark.parametrize("metric", ["voc", "coco"])
def test_eval_metrics(demo_dir, tmp_path, metric):
    out = tmp_path / metric
    assert main(["eval", "--checkpoint", str(demo_dir / "model_final.pt"), "--data", "shapes:test:4",
                 "--metric", metric, "--out", str(out), "--no-progress"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["metric"] == metric
    keys = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100") if metric == "coco" else ("mAP", "AP")
    assert all(k in m for k in keys)
    assert (out / "detections.json").is_file()


def test_eval_with_test_time_augmentation(demo_dir, tmp_path, capsys):
    import argparse

    from fasterrcnn.cli.common import apply_test_time_options
    from fasterrcnn.engine.checkpoint import load_model

    out = tmp_path / "tta"
    assert main(["eval", "--checkpoint", str(demo_dir / "model_final.pt"), "--data", "shapes:test:2",
                 "--tta-sizes", "256,288", "--tta-flip", "--box-vote", "0.6", "--out", str(out),
                 "--no-progress"]) == 0
    assert 0.0 <= json.loads((out / "metrics.json").read_text())["mAP"] <= 1.0
    model, cfg, _ = load_model(demo_dir / "model_final.pt")
    size = cfg.model.input
    zoomed = [(v.min_size, v.hflip) for v in model.views if v.max_box < math.inf]  # the checkpoint's, kept
    assert zoomed == [(z, False) for z in cfg.model.test_aug.zoom_sizes]
    apply_test_time_options(model, cfg, argparse.Namespace(tta_sizes=None, tta_flip=True, box_vote=0.6))
    assert [(v.min_size, v.hflip) for v in model.views] == [
        (size.min_size_test, False), (size.min_size_test, True)] + zoomed
    assert model.roi_heads.vote_iou == 0.6
    apply_test_time_options(model, cfg, argparse.Namespace(no_tta=True, tta_sizes=None, tta_flip=False))
    assert model.views == () and model.roi_heads.vote_iou == 0.0
    apply_test_time_options(model, cfg, argparse.Namespace(tta_sizes="300", tta_flip=False, box_vote=None))
    assert [(v.min_size, v.hflip) for v in model.views] == [(300, False)]
    apply_test_time_options(model, cfg, argparse.Namespace(tta_sizes="300", tta_vflip=True, tta_transpose=True))
    assert [(v.transpose, v.vflip, v.hflip) for v in model.views] == [
        (False, False, False), (False, True, False), (True, False, False), (True, True, False)]
    with pytest.raises(ConfigError, match="--no-tta cannot"):
        apply_test_time_options(model, cfg, argparse.Namespace(no_tta=True, tta_transpose=True))
    # zoomed views: added to the views there are, kept when those are replaced, removed by "none"
    apply_test_time_options(model, cfg, argparse.Namespace(tta_zoom="400,480", tta_zoom_max_box=24.0))
    assert [(v.min_size, v.max_box) for v in model.views][-2:] == [(400, 24.0), (480, 24.0)]
    apply_test_time_options(model, cfg, argparse.Namespace(tta_sizes="300"))
    assert [(v.min_size, v.max_box) for v in model.views] == [(300, math.inf), (400, 24.0), (480, 24.0)]
    apply_test_time_options(model, cfg, argparse.Namespace(tta_zoom_max_box=40.0))
    assert [v.max_box for v in model.views] == [math.inf, 40.0, 40.0]
    apply_test_time_options(model, cfg, argparse.Namespace(tta_zoom="none"))
    assert [(v.min_size, v.max_box) for v in model.views] == [(300, math.inf)]
    apply_test_time_options(model, cfg, argparse.Namespace(no_tta=True))
    apply_test_time_options(model, cfg, argparse.Namespace(tta_zoom="400"))  # the test scale first
    assert [(v.min_size, v.max_box) for v in model.views] == [
        (size.min_size_test, math.inf), (400, cfg.model.test_aug.zoom_max_box)]
    with pytest.raises(ConfigError, match="--no-tta cannot"):
        apply_test_time_options(model, cfg, argparse.Namespace(no_tta=True, tta_zoom="400"))
    with pytest.raises(ConfigError, match="--tta-zoom expects integers"):
        apply_test_time_options(model, cfg, argparse.Namespace(tta_zoom="big"))
    with pytest.raises(ConfigError, match="--tta-zoom-max-box must be > 0"):
        apply_test_time_options(model, cfg, argparse.Namespace(tta_zoom_max_box=0.0))
    assert main(["eval", "--checkpoint", str(demo_dir / "model_final.pt"), "--data", "shapes:test:2",
                 "--tta-sizes", "256,big", "--out", str(out), "--no-progress"]) != 0
    assert "--tta-sizes expects integers" in capsys.readouterr().err


def test_eval_with_masked_padding_does_not_depend_on_the_batch_size(demo_dir, tmp_path):
    import argparse

    from fasterrcnn.cli.common import apply_test_time_options
    from fasterrcnn.engine.checkpoint import load_model

    dets = {}
    for bs in (1, 3):
        out = tmp_path / f"bs{bs}"
        assert main(["eval", "--checkpoint", str(demo_dir / "model_final.pt"), "--data", "shapes:test:3",
                     "--mask-padding", "--no-tta", "--batch-size", str(bs), "--out", str(out),
                     "--no-progress"]) == 0
        dets[bs] = json.loads((out / "detections.json").read_text())
    assert len(dets[1]) == len(dets[3]) > 0
    for a, b in zip(sorted(dets[1], key=lambda d: (d["image_id"], -d["score"])),
                    sorted(dets[3], key=lambda d: (d["image_id"], -d["score"]))):
        assert a["image_id"] == b["image_id"] and a["category_id"] == b["category_id"]
        assert a["bbox"] == pytest.approx(b["bbox"], abs=1e-3) and a["score"] == pytest.approx(b["score"], abs=1e-5)
    model, cfg, _ = load_model(demo_dir / "model_final.pt")
    apply_test_time_options(model, cfg, argparse.Namespace(mask_padding=False))
    assert model.mask_padding is False
    apply_test_time_options(model, cfg, argparse.Namespace(mask_padding=True))
    assert model.mask_padding is True


def test_eval_proposal_recall(demo_dir, tmp_path):
    out = tmp_path / "recall"
    assert main(["eval", "--checkpoint", str(demo_dir / "model_final.pt"), "--data", "shapes:test:3",
                 "--proposals", "10,50", "--out", str(out), "--no-progress"]) == 0
    r = json.loads((out / "recall.json").read_text())
    assert set(r["recall"]) == {"10", "50"}
    assert all(len(v) == 10 for v in r["recall"].values())
    assert (out / "recall_iou.png").is_file()


def test_train_on_voc_copy_with_validation(tmp_path):
    voc = tmp_path / "VOC"
    export_voc(ShapesDataset("train", 6), voc, split="trainval", image_format="png")
    export_voc(ShapesDataset("test", 3), voc, split="test", image_format="png")
    out = tmp_path / "run"
    code = main(["train", "--data", f"voc:{voc}:trainval", "--val-data", f"voc:{voc}:test", "--out", str(out),
                 "--iters", "2", "--workers", "0", "--no-progress"])
    assert code == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["metric"] == "voc07" and set(m["AP"]) == set(ShapesDataset.classes)


def test_errors_are_one_line_not_tracebacks(tmp_path, capsys):
    assert main(["train", "--data", "nosuchformat:x", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "Traceback" not in err
    assert main(["eval", "--checkpoint", str(tmp_path / "missing.pt"), "--data", "shapes:test:2",
                 "--out", str(tmp_path / "e")]) == 2
    assert "missing.pt" in capsys.readouterr().err
    assert main(["train", "--data", "shapes:train:4", "--out", str(tmp_path / "r"), "--set", "train.nope=1"]) == 2
    assert "train.nope" in capsys.readouterr().err


def test_check_data_exit_codes(tmp_path, capsys):
    voc = tmp_path / "VOC"
    export_voc(ShapesDataset("train", 3), voc, split="trainval", image_format="png")
    assert main(["check-data", f"voc:{voc}:trainval"]) == 0
    # break one image file and one box
    img = sorted((voc / "JPEGImages").iterdir())[0]
    img.write_bytes(b"garbage")
    xml = sorted((voc / "Annotations").iterdir())[1]
    text = xml.read_text()
    start = text.index("<xmax>") + len("<xmax>")
    end = text.index("</xmax>")
    xml.write_text(text[:start] + "99999" + text[end:])
    capsys.readouterr()
    assert main(["check-data", f"voc:{voc}:trainval"]) == 1
    report = capsys.readouterr().out
    assert img.name in report and xml.name in report
    # training refuses bad data by default, and skips it on request
    assert main(["train", "--data", f"voc:{voc}:trainval", "--out", str(tmp_path / "r"), "--iters", "1",
                 "--workers", "0", "--no-progress"]) == 2
    assert main(["train", "--data", f"voc:{voc}:trainval", "--out", str(tmp_path / "r2"), "--iters", "1",
                 "--workers", "0", "--no-progress", "--on-bad-data", "skip"]) == 0


def test_presets_lists_names(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    assert "vgg16-voc07" in out and "zf-voc07" in out and "tiny-shapes" in out


def test_train_on_random_crops_of_large_images(tmp_path):
    from fasterrcnn.data.shapes import ShapesSpec

    voc = tmp_path / "VOC"
    export_voc(ShapesDataset("train", 2, spec=ShapesSpec(min_side=300, max_side=320)), voc, split="trainval",
               image_format="png")
    out = tmp_path / "run"
    assert main(["train", "--data", f"voc:{voc}:trainval", "--out", str(out), "--iters", "2", "--workers", "0",
                 "--no-progress", "--crop", "128", "--dihedral", "--threads", "1",
                 "--val-data", f"voc:{voc}:trainval", "--tile", "160", "--tile-overlap", "32"]) == 0
    assert (out / "model_final.pt").is_file()
    assert json.loads((out / "metrics.json").read_text())["metric"] == "voc07"
