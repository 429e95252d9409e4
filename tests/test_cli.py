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
    assert isinstance(results, list) and results  # --score-thresh 0.0: every kept box is listed
    assert {r["file_name"] for r in results} == {str(images / "img0.png"), str(images / "img1.png")}
    for r in results:
        assert set(r) >= {"image_id", "file_name", "category_id", "category", "bbox", "score"}
        assert len(r["bbox"]) == 4 and r["bbox"][2] >= 0 and r["bbox"][3] >= 0
        assert r["category"] in ds.classes and 1 <= r["category_id"] <= 5
    assert not any("broken" in r["file_name"] for r in results)
    assert "1 unreadable file(s) skipped" in capsys.readouterr().out


def test_detect_batches_images_of_one_size_and_gives_one_at_a_time_detections(demo_dir, tmp_path, monkeypatch):
    """--batch-size N runs up to N images of the same size per pass (mixed sizes apart): the
    detections of one image per pass, in file order."""
    import fasterrcnn.cli.detect as detect_module

    images = tmp_path / "images"
    images.mkdir()
    ds = ShapesDataset("test", 5)
    for i, size in enumerate(((320, 240), (200, 260), (320, 240), (320, 240), (200, 260))):
        Image.fromarray(ds[i][0].permute(1, 2, 0).numpy()).resize(size).save(images / f"img{i}.png")
    passes: list[list[tuple[int, ...]]] = []
    real_load = detect_module.load_for_inference

    class Spy:
        def __init__(self, predictor):
            self.predictor = predictor

        def predict(self, batch):
            passes.append([tuple(x.shape) for x in batch])
            return self.predictor.predict(batch)

    def load(args):
        predictor, cfg, classes = real_load(args)
        return Spy(predictor), cfg, classes

    monkeypatch.setattr(detect_module, "load_for_inference", load)
    found = {}
    for batch in (1, 3):
        out = tmp_path / f"out{batch}"
        assert main(["detect", "--checkpoint", str(demo_dir / "model_final.pt"), str(images), "--out", str(out),
                     "--score-thresh", "0.0", "--batch-size", str(batch), "--no-tta"]) == 0
        found[batch] = json.loads((out / "detections.json").read_text())
    big, small = (3, 240, 320), (3, 260, 200)
    assert passes[:5] == [[big], [small], [big], [big], [small]]  # --batch-size 1: file order
    assert sorted(passes[5:]) == sorted([[big, big, big], [small, small]])  # --batch-size 3
    assert found[1] and found[1] == found[3]  # file order, identical numbers


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

    from fasterrcnn.cli.common import inference_predictor
    from fasterrcnn.config import override
    from fasterrcnn.engine.checkpoint import load_model

    out = tmp_path / "tta"
    assert main(["eval", "--checkpoint", str(demo_dir / "model_final.pt"), "--data", "shapes:test:2",
                 "--tta-sizes", "256,288", "--tta-flip", "--box-vote", "0.6", "--out", str(out),
                 "--no-progress"]) == 0
    assert 0.0 <= json.loads((out / "metrics.json").read_text())["mAP"] <= 1.0
    model, cfg, _ = load_model(demo_dir / "model_final.pt")
    selector = model.roi_heads.selector
    size, aug = cfg.model.input, cfg.model.test_aug

    def views(**flags):  # the predictor the flags build; each call starts from the checkpoint
        predictor = inference_predictor(model, cfg, argparse.Namespace(**flags))
        assert predictor.model is model and model.roi_heads.selector is selector  # model untouched
        return predictor

    zoomed = [(z, False) for z in aug.zoom_sizes]  # the checkpoint's zoomed views, kept
    p = views(tta_flip=True, box_vote=0.6)
    assert [(v.min_size, v.hflip) for v in p.views] == [
        (size.min_size_test, False), (size.min_size_test, True)] + zoomed
    assert p.selector.vote_iou == 0.6 and p.fusion == aug.score_fusion
    # every switch does one thing: --no-tta removes the views, box voting is --box-vote's
    p = views(no_tta=True)
    assert p.views == () and p.selector == selector
    p = views(no_tta=True, box_vote=0.6, score_thresh=0.3, max_detections=7)
    assert p.views == () and (p.selector.vote_iou, p.selector.score_thresh, p.selector.detections_per_img) == (
        0.6, 0.3, 7)
    assert [(v.min_size, v.hflip) for v in views(tta_sizes="300").views] == [(300, False)] + zoomed
    assert [(v.transpose, v.vflip, v.hflip) for v in views(tta_sizes="300", tta_vflip=True, tta_transpose=True,
                                                          tta_zoom="none").views] == [
        (False, False, False), (False, True, False), (True, False, False), (True, True, False)]
    with pytest.raises(ConfigError, match="--no-tta cannot"):
        views(no_tta=True, tta_transpose=True)
    # zoomed views: replace the checkpoint's, take their own range, removed by "none"
    p = views(tta_sizes="300", tta_zoom="400,480", tta_zoom_max_box=24.0)
    assert [(v.min_size, v.max_box) for v in p.views] == [(300, math.inf), (400, 24.0), (480, 24.0)]
    assert [v.max_box for v in views(tta_sizes="300", tta_zoom_max_box=40.0).views] == [math.inf] + [40.0] * len(zoomed)
    assert [(v.min_size, v.max_box) for v in views(tta_sizes="300", tta_zoom="none").views] == [(300, math.inf)]
    plain = override(cfg, {"model.test_aug.min_sizes": [], "model.test_aug.hflip": False,
                           "model.test_aug.vflip": False, "model.test_aug.transpose": False,
                           "model.test_aug.zoom_sizes": []})
    p = inference_predictor(model, plain, argparse.Namespace(tta_zoom="400"))  # the test scale first
    assert [(v.min_size, v.max_box) for v in p.views] == [(size.min_size_test, math.inf), (400, aug.zoom_max_box)]
    with pytest.raises(ConfigError, match="--no-tta cannot"):
        views(no_tta=True, tta_zoom="400")
    with pytest.raises(ConfigError, match="--tta-zoom expects integers"):
        views(tta_zoom="big")
    with pytest.raises(ConfigError, match="--tta-zoom-max-box must be > 0"):
        views(tta_zoom_max_box=0.0)
    with pytest.raises(ConfigError, match="--box-vote"):
        views(box_vote=2.0)
    assert main(["eval", "--checkpoint", str(demo_dir / "model_final.pt"), "--data", "shapes:test:2",
                 "--tta-sizes", "256,big", "--out", str(out), "--no-progress"]) != 0
    assert "--tta-sizes expects integers" in capsys.readouterr().err


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


def test_eval_reads_images_like_train_and_detect(demo_dir, tmp_path, capsys, monkeypatch):
    """eval takes --exif, --high-bit-depth, --max-image-pixels and --unannotated-images."""
    import numpy as np

    import fasterrcnn.engine.inference as inference
    from fasterrcnn.data.images import ImageReader

    ds = ShapesDataset("test", 1)
    image, ann = ds[0][0].permute(1, 2, 0).numpy(), ds.annotation(0)
    folder = tmp_path / "photos"
    folder.mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6  # viewers turn the stored grid 90 degrees clockwise: back to `image`
    Image.fromarray(np.ascontiguousarray(np.rot90(image))).save(folder / "turned.jpg", exif=exif, quality=95)
    objects = "".join(
        f"<object><name>{ds.classes[label - 1]}</name><difficult>0</difficult><bndbox><xmin>{x0 + 1:g}</xmin>"
        f"<ymin>{y0 + 1:g}</ymin><xmax>{x1:g}</xmax><ymax>{y1:g}</ymax></bndbox></object>"
        for (x0, y0, x1, y1), label in zip(ann.boxes.tolist(), ann.labels.tolist())
    )
    (folder / "turned.xml").write_text(
        f"<annotation><filename>turned.jpg</filename><size><width>{ann.width}</width>"
        f"<height>{ann.height}</height><depth>3</depth></size>{objects}</annotation>"
    )
    Image.fromarray(image).save(folder / "unlabelled.png")  # no XML names it

    def evaluate(*flags, out="e"):
        return main(["eval", "--checkpoint", str(demo_dir / "model_final.pt"), "--data", f"voc:{folder}",
                     "--out", str(tmp_path / out), "--no-progress", *flags])

    # as viewers show it, the photo fits its annotation; the image without an XML is left out
    assert evaluate() == 0
    dets = json.loads((tmp_path / "e" / "detections.json").read_text())
    assert dets and {d["file_name"] for d in dets} == {str(folder / "turned.jpg")}
    # on the stored grid it does not, and the error says why
    capsys.readouterr()
    assert evaluate("--exif", "ignore") == 2
    err = capsys.readouterr().err
    assert f"turned.jpg: image is {ann.height}x{ann.width} (WxH)" in err and "EXIF" in err
    assert evaluate("--max-image-pixels", "1000") == 2
    assert "turned.jpg" in capsys.readouterr().err
    assert evaluate("--unannotated-images", "error") == 2
    assert "unlabelled.png: no annotation file" in capsys.readouterr().err

    seen = []
    monkeypatch.setattr(inference, "evaluate_model", lambda model, dataset, *a, **k: seen.append(dataset) or {})
    monkeypatch.setattr("fasterrcnn.cli.evaluate.print_metrics", lambda result: None)
    assert evaluate("--high-bit-depth", "minmax", "--max-image-pixels", "123456", "--unannotated-images",
                    "negative", out="f") == 0
    assert seen[0].image_reader == ImageReader(exif="apply", high_bit="minmax", max_pixels=123456)
    assert [p.name for p in seen[0].image_files] == ["turned.jpg", "unlabelled.png"]
