"""The exported ONNX graph against PyTorch: parity of batches (max box and score differences) and
the CPU latency of onnxruntime and ``model.predict`` per image.

Parity: the sharpened random-init models of ``tests/test_onnx_export.py`` (zf-voc07, tiny-shapes,
resnet50-fpn at small sizes), two images of each of two sizes run by onnxruntime as batches of
two, each image's detections matched one to one with ``model.predict`` of that image alone.
Latency: ``--preset`` (default zf-voc07) at ``--size`` with sharpened random weights, ``--images``
images, onnxruntime at batch 1 and ``--batch`` against PyTorch at the same batches, the two
alternating, medians of ``--iters``.

Usage::

    python benchmarks/onnx_check.py parity
    python benchmarks/onnx_check.py latency --threads 1 --size 600x1000
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import tempfile
import time
from pathlib import Path

import torch

_TESTS = Path(__file__).resolve().parents[1] / "tests" / "test_onnx_export.py"
PARITY_MODELS = {
    "zf-voc07": {"model.input.min_size_test": 224, "model.input.max_size_test": 320,
                 "model.roi_head.representation_size": 512},
    "tiny-shapes": {"model.input.min_size_test": 160, "model.input.max_size_test": 240},
    "resnet50-fpn": {"model.input.min_size_test": 160, "model.input.max_size_test": 240, "model.num_classes": 5},
}


def _helpers():
    """tests/test_onnx_export.py as a module (its sharpened models, images and matching)."""
    spec = importlib.util.spec_from_file_location("test_onnx_export", _TESTS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def parity(out_dir: Path) -> None:
    from fasterrcnn.export.onnx import OnnxDetector, export_onnx

    t = _helpers()
    for name, overrides in PARITY_MODELS.items():
        model, _ = t.sharpened_model(name, **overrides)
        if name == "resnet50-fpn":  # as the test: random ResNet features brought to a std of ~1
            with torch.no_grad():
                for conv in model.backbone.fpn.layer_blocks.modules():
                    if isinstance(conv, torch.nn.Conv2d):
                        conv.weight.div_(40)
        path = export_onnx(model, out_dir / f"{name}.onnx")
        inputs = t.images(per_size=2)
        box = score = 0.0
        count = 0
        for image, out in zip(inputs, OnnxDetector(path, threads=1)(inputs)):
            ref = model.predict([image.float() / 255])[0]
            b, s = t.match(ref, out)
            box, score, count = max(box, b), max(score, s), count + len(ref["boxes"])
        print(f"{name}: {count} detections on {len(inputs)} images (2 sizes, batches of 2): "
              f"max box difference {box:.1e} px, max score difference {score:.1e}")


def latency(out_dir: Path, preset: str, size: tuple[int, int], images: int, batch: int, iters: int,
            threads: int) -> None:
    from fasterrcnn.export.onnx import OnnxDetector, export_onnx
    from fasterrcnn.modeling.fold import fold_batchnorm

    torch.set_num_threads(threads)
    model, _ = _helpers().sharpened_model(preset)
    model = fold_batchnorm(model)
    path = export_onnx(model, out_dir / "model.onnx")
    g = torch.Generator().manual_seed(0)
    inputs = [torch.randint(0, 256, (3, *size), dtype=torch.uint8, generator=g) for _ in range(images)]
    for bs in sorted({1, batch}):
        runner = OnnxDetector(path, threads=threads, batch_size=bs)

        def torch_predict() -> None:
            with torch.no_grad():
                for k in range(0, images, bs):
                    model.predict([x.float() / 255 for x in inputs[k:k + bs]])

        runs = {"onnxruntime": lambda: runner(inputs), "PyTorch": torch_predict}
        times: dict[str, list[float]] = {k: [] for k in runs}
        for f in runs.values():
            f()
        for _ in range(iters):
            for key, f in runs.items():
                start = time.perf_counter()
                f()
                times[key].append(time.perf_counter() - start)
        per_image = {k: 1000 * statistics.median(v) / images for k, v in times.items()}
        print(f"{preset} {size[0]}x{size[1]}, {threads} thread(s), batch {bs}: "
              + ", ".join(f"{k} {v:.0f} ms per image" for k, v in per_image.items()))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("what", choices=("parity", "latency"))
    p.add_argument("--preset", default="zf-voc07")
    p.add_argument("--size", default="600x1000", help="HxW of the latency images")
    p.add_argument("--images", type=int, default=4)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        if args.what == "parity":
            parity(Path(tmp))
        else:
            h, w = (int(v) for v in args.size.lower().split("x"))
            latency(Path(tmp), args.preset, (h, w), args.images, args.batch, args.iters, args.threads)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
