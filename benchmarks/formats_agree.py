"""Train on a VOC-format copy and on a COCO-format copy of the built-in data; the numbers agree.

The built-in shapes data (``shapes:train:N``, ``shapes:test:M``) is exported twice with lossless
PNG images: as a PASCAL VOC devkit folder (:func:`~fasterrcnn.data.export.export_voc`) and as COCO
instances JSON + image folders (:func:`~fasterrcnn.data.export.export_coco`). Shapes boxes are
whole pixels, so both copies hold exactly the same pixels, boxes and labels (checked here).

Then, all through the command line (:func:`fasterrcnn.cli.main`), for each copy:

* ``fasterrcnn train --preset tiny-shapes --deterministic --workers 0 --classes <shapes order>``
  (the same class order for both, so labels are identical; the preset's ``lr_steps`` and
  ``warmup_iters`` scaled by ``iters / max_iter`` as in ``benchmarks/schedules.py``);
* ``fasterrcnn eval --metric voc07``, ``--metric voc`` and ``--metric coco`` on its test copy.

Checks and report: the two ``model_final.pt`` hold bit-identical weights; the two copies' metrics
agree (largest absolute difference over every number of every metric); the COCO numbers are
compared with pycocotools run directly (``COCO(gt) + loadRes(dets) + COCOeval(bbox)``) on the COCO
copy's annotation file and (a) the ``detections.json`` that ``eval --metric coco`` wrote, (b) the
same detections at full precision (model re-run). (b) must match exactly. (a) can differ slightly:
``detections.json`` rounds boxes to 0.01 px, which moves a detection whose IoU lies within ~1e-4 of
a COCO threshold across it; such detections are listed (:func:`rounding_flips`).

Usage (about 5 minutes on a 2-core CPU)::

    python benchmarks/formats_agree.py --iters 300 --threads 1 --results-md benchmarks/RESULTS.md

Keep ``--threads`` at most the number of idle cores: with 2 threads on 2 cores while another
process keeps one of them busy, a training iteration took 10x longer (3.8 s instead of 0.37 s).

Prints a table, writes ``OUT/results.json`` and with ``--results-md`` adds (or, on a re-run,
replaces) the section :data:`SECTION` of that markdown file, leaving the other sections alone.
Exit code 1 when anything disagrees.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import json
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from machine_info import machine
from fasterrcnn.cli import main as cli
from fasterrcnn.presets import preset
from fasterrcnn.data.coco import COCODataset
from fasterrcnn.data.export import export_coco, export_voc
from fasterrcnn.data.shapes import SHAPES_CLASSES, ShapesDataset
from fasterrcnn.data.voc import VOCDataset
from fasterrcnn.engine.inference import flatten_metrics
from fasterrcnn.evaluation.coco import STAT_NAMES

SECTION = "## VOC copy vs COCO copy of the built-in data"
METRICS = ("voc07", "voc", "coco")
FORMATS = ("voc", "coco")
TOLERANCE = 1e-9


# --------------------------------------------------------------------------- data


def export_copies(root: Path, n_train: int, n_test: int) -> dict[str, str]:
    """Write the VOC and COCO copies of shapes train/test under ``root`` (PNG); returns the data
    specs ``{"voc:train", "voc:test", "coco:train", "coco:test"}`` and ``"coco:test_json"``."""
    voc, coco = root / "VOC", root / "COCO"
    export_voc(ShapesDataset("train", n_train), voc, split="trainval", image_format="png")
    export_voc(ShapesDataset("test", n_test), voc, split="test", image_format="png")
    for split, n in (("train", n_train), ("test", n_test)):
        export_coco(ShapesDataset(split, n), coco / f"{split}.json", coco / split, image_format="png")
    return {
        "voc:train": f"voc:{voc}:trainval",
        "voc:test": f"voc:{voc}:test",
        "coco:train": f"coco:{coco / 'train.json'}:{coco / 'train'}",
        "coco:test": f"coco:{coco / 'test.json'}:{coco / 'test'}",
        "coco:test_json": str(coco / "test.json"),
    }


def exports_exact(root: Path, n_train: int, n_test: int) -> bool:
    """True when both copies give the original's pixels, boxes and labels for every image."""
    for split, n, voc_split in (("train", n_train, "trainval"), ("test", n_test, "test")):
        original = ShapesDataset(split, n)
        copies = (
            VOCDataset(root / "VOC", voc_split, SHAPES_CLASSES),
            COCODataset(root / "COCO" / f"{split}.json", root / "COCO" / split, SHAPES_CLASSES),
        )
        if any(len(c) != n for c in copies):
            return False
        for i in range(n):
            image, target = original[i]
            for c in copies:
                image_c, target_c = c[i]
                if not (torch.equal(image_c, image) and torch.equal(target_c["boxes"], target["boxes"])
                        and torch.equal(target_c["labels"], target["labels"])):
                    return False
    return True


# --------------------------------------------------------------------------- runs


def _cli(argv: Sequence[str]) -> None:
    code = cli(list(argv))
    if code != 0:
        raise SystemExit(f"fasterrcnn {' '.join(argv)} failed with exit code {code}")


def train_args(spec: str, out: Path, iters: int, threads: int) -> list[str]:
    """The ``fasterrcnn train`` arguments used for both copies (only ``--data``/``--out`` differ)."""
    t = preset("tiny-shapes").train
    scale = iters / t.max_iter
    steps = ",".join(str(max(1, round(s * scale))) for s in t.lr_steps)
    return ["train", "--data", spec, "--out", str(out), "--preset", "tiny-shapes", "--iters", str(iters),
            "--set", f"train.lr_steps=[{steps}]",
            "--set", f"train.warmup_iters={max(1, round(t.warmup_iters * scale))}",
            "--classes", ",".join(SHAPES_CLASSES), "--deterministic", "--workers", "0",
            "--threads", str(threads), "--no-progress"]


def weights_identical(a: Path, b: Path) -> tuple[bool, list[str]]:
    """(all tensors equal, names of the tensors that differ) of two ``model_final.pt``."""
    sa = torch.load(a, map_location="cpu", weights_only=True)
    sb = torch.load(b, map_location="cpu", weights_only=True)
    if sa["model"].keys() != sb["model"].keys() or tuple(sa["classes"]) != tuple(sb["classes"]):
        return False, ["<keys or classes>"]
    differ = [k for k in sa["model"] if not torch.equal(sa["model"][k], sb["model"][k])]
    return not differ, differ


def pycocotools_direct(gt_json: str, results: Path | list[dict[str, Any]]) -> dict[str, float | None]:
    """COCOeval (bbox) stats of detections (a results file or list) against an annotation file,
    with nothing of this package involved."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    dets = json.loads(Path(results).read_text()) if isinstance(results, Path) else results
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(gt_json)
        ev = COCOeval(gt, gt.loadRes(dets), iouType="bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {name: (None if v == -1 else float(v)) for name, v in zip(STAT_NAMES, ev.stats)}


def full_precision_results(checkpoint: Path, spec: str, threads: int) -> tuple[list[dict], Any]:
    """The detections ``eval`` scores, in the COCO results format without the rounding that
    ``detections.json`` applies (boxes to 0.01 px, scores to 5 decimals); and the dataset."""
    from fasterrcnn.engine.checkpoint import load_model
    from fasterrcnn.engine.inference import category_ids, run_inference
    from fasterrcnn.data.spec import parse_data_spec
    from fasterrcnn.evaluation.coco import to_coco_results

    torch.set_num_threads(threads)
    model, _, classes = load_model(checkpoint)
    dataset = parse_data_spec(spec, classes=classes)
    dets = run_inference(model, dataset)
    ids = [dataset.annotation(i).image_id for i in range(len(dataset))]
    return to_coco_results(dets, ids, category_ids(dataset), bbox_decimals=None, score_decimals=None), dataset


def _iou_xywh(a: Sequence[float], b: Sequence[float]) -> float:
    iw = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def rounding_flips(results: list[dict], gt_json: str, decimals: int = 2) -> list[str]:
    """Detections whose IoU with a same-class gt box crosses one of COCO's thresholds
    (0.50:0.05:0.95) when the box is rounded to ``decimals`` as ``detections.json`` does."""
    gt = json.loads(Path(gt_json).read_text())
    by_key: dict[tuple[int, int], list[list[float]]] = {}
    for a in gt["annotations"]:
        by_key.setdefault((a["image_id"], a["category_id"]), []).append(a["bbox"])
    thresholds = [0.5 + 0.05 * k for k in range(10)]
    flips = []
    for d in results:
        rounded = [round(v, decimals) for v in d["bbox"]]
        for g in by_key.get((d["image_id"], d["category_id"]), []):
            u, r = _iou_xywh(d["bbox"], g), _iou_xywh(rounded, g)
            for t in thresholds:
                if (u >= t) != (r >= t):
                    flips.append(f"image {d['image_id']}, category {d['category_id']}, score {d['score']:.4f}: "
                                 f"IoU {u:.6f} -> {r:.6f} across {t:.2f} (box {[round(v, 4) for v in d['bbox']]} "
                                 f"-> {rounded}, gt {g})")
    return flips


def max_difference(a: dict[str, Any], b: dict[str, Any]) -> float:
    """Largest absolute difference between two metrics dicts (inf when their keys or
    non-numeric values differ, or a number is missing on one side only)."""
    na, nb = flatten_metrics(a), flatten_metrics(b)
    if na.keys() != nb.keys():
        return float("inf")
    worst = 0.0
    for k in na:
        x, y = na[k], nb[k]
        if isinstance(x, (int, float)) and isinstance(y, (int, float)):
            worst = max(worst, abs(float(x) - float(y)))
        elif x != y:
            return float("inf")
    return worst


# --------------------------------------------------------------------------- report




def _f(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4f}"


def table(res: dict[str, Any]) -> str:
    """Markdown table of the metrics of both copies and of pycocotools run directly."""
    rows = ["| | VOC07 mAP@0.5 | VOC mAP@0.5 (area) | COCO AP | AP50 | AP75 |",
            "|---|---|---|---|---|---|"]
    for fmt in FORMATS:
        m = res["metrics"][fmt]
        rows.append(f"| {fmt.upper()} copy (`fasterrcnn eval`) | {_f(m['voc07']['mAP'])} | {_f(m['voc']['mAP'])} | "
                    f"{_f(m['coco']['AP'])} | {_f(m['coco']['AP50'])} | {_f(m['coco']['AP75'])} |")
    for key, what in (("pycocotools_direct", "COCO copy's JSON + `detections.json` as written"),
                      ("pycocotools_full_precision", "COCO copy's JSON + the same detections unrounded")):
        d = res[key]
        rows.append(f"| pycocotools direct ({what}) | | | {_f(d['AP'])} | {_f(d['AP50'])} | {_f(d['AP75'])} |")
    diff = res["max_abs_difference"]
    rows.append(f"| largest difference, VOC copy vs COCO copy | {diff['voc07']:.1e} | {diff['voc']:.1e} | "
                f"{diff['coco']:.1e} | | |")
    rows.append(f"| largest difference, `eval` vs pycocotools on `detections.json` | | | "
                f"{diff['pycocotools_direct']:.1e} | | |")
    rows.append(f"| largest difference, `eval` vs pycocotools on unrounded detections | | | "
                f"{diff['pycocotools_full_precision']:.1e} | | |")
    return "\n".join(rows)


def section(res: dict[str, Any]) -> str:
    """The markdown section written to RESULTS.md."""
    cfg = res["config"]
    agree = "yes" if res["ok"] else "**NO**"
    flips_md = "\n".join(f"  - {f}" for f in res["rounding_flips"])
    return f"""{SECTION}

Date: {res['date']}. Machine: {res['machine']}.
Command: `{res['command']}` ({res['total_s'] / 60:.1f} min in all).

The built-in shapes data, {cfg['train_images']} training and {cfg['test_images']} test images, exported
as a VOC devkit folder and as COCO JSON + images (PNG, lossless; whole-pixel boxes, so both copies
hold exactly the original pixels, boxes and labels: {'checked' if res['exports_exact'] else '**NOT exact**'}).
On each copy: `fasterrcnn train --preset tiny-shapes --iters {cfg['iters']} --set train.lr_steps={cfg['lr_steps']}
--set train.warmup_iters={cfg['warmup_iters']} --classes {','.join(SHAPES_CLASSES)} --deterministic --workers 0
--threads {cfg['threads']}` (training {res['train_s']['voc']:.0f} s on the VOC copy, {res['train_s']['coco']:.0f} s on
the COCO copy), then `fasterrcnn eval --metric voc07|voc|coco` on its test copy.

{table(res)}

* Trained weights identical (`torch.equal` on every tensor of the two `model_final.pt`):
  {'yes' if res['weights_identical'] else '**no**: ' + ', '.join(res['weights_differ'][:5])}.
* Detections identical on both test copies (boxes, scores, classes): {'yes' if res['detections_identical'] else '**no**'}.
* The two copies agree to {TOLERANCE:g} on every number of every metric, and `eval`'s COCO numbers
  are pycocotools' own (to {TOLERANCE:g}) on the same detections at full precision: {agree}.
* pycocotools on the `detections.json` file itself differs by {res['max_abs_difference']['pycocotools_direct']:.1e}:
  the file rounds boxes to 0.01 px (scores to 5 decimals), and rounding moved {len(res['rounding_flips'])}
  detection(s) across an IoU threshold{':' if res['rounding_flips'] else '.'}
{flips_md}
* `detections.json` of the COCO copy uses the file's image ids (1..N) and category ids (checked by
  pycocotools' `loadRes`); that of the VOC copy uses dataset indices (0..N-1).
"""


def write_section(path: Path, text: str) -> None:
    """Append ``text`` to ``path``; on a re-run replace only our own earlier section."""
    old = path.read_text() if path.exists() else "# Benchmark results\n"
    start = old.find(SECTION + "\n")
    if start >= 0:
        nxt = old.find("\n## ", start + len(SECTION))
        new = old[:start] + text.rstrip("\n") + "\n" + (old[nxt:] if nxt >= 0 else "")
    else:
        new = old.rstrip("\n") + "\n\n" + text
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(new)


# --------------------------------------------------------------------------- main


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Export, train twice, evaluate six times, compare; the results dict."""
    t0 = time.perf_counter()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    print(f"exporting shapes train:{args.train_images} / test:{args.test_images} as VOC and COCO (PNG) ...")
    specs = export_copies(out / "data", args.train_images, args.test_images)
    exact = exports_exact(out / "data", args.train_images, args.test_images)
    print(f"exports exact: {exact}")
    train_s: dict[str, float] = {}
    metrics: dict[str, dict[str, Any]] = {}
    dets: dict[str, list] = {}
    for fmt in FORMATS:
        t = time.perf_counter()
        argv = train_args(specs[f"{fmt}:train"], out / f"run_{fmt}", args.iters, args.threads)
        print(f"[{fmt}] fasterrcnn {shlex.join(argv)}")
        _cli(argv)
        train_s[fmt] = time.perf_counter() - t
        metrics[fmt] = {}
        for metric in METRICS:
            ev = out / f"eval_{fmt}_{metric}"
            _cli(["eval", "--checkpoint", str(out / f"run_{fmt}" / "model_final.pt"), "--data",
                  specs[f"{fmt}:test"], "--metric", metric, "--out", str(ev), "--no-progress",
                  "--threads", str(args.threads)])
            metrics[fmt][metric] = json.loads((ev / "metrics.json").read_text())
            dets[f"{fmt}:{metric}"] = json.loads((ev / "detections.json").read_text())
    same, differ = weights_identical(out / "run_voc" / "model_final.pt", out / "run_coco" / "model_final.pt")
    same_dets = all(
        len(dets[f"voc:{m}"]) == len(dets[f"coco:{m}"])
        and all((a["bbox"], a["score"], a["category"], a["image_id"] + 1)
                == (b["bbox"], b["score"], b["category"], b["image_id"])
                for a, b in zip(dets[f"voc:{m}"], dets[f"coco:{m}"]))
        for m in METRICS
    )
    gt_json = specs["coco:test_json"]
    direct = pycocotools_direct(gt_json, out / "eval_coco_coco" / "detections.json")
    full, _ = full_precision_results(out / "run_coco" / "model_final.pt", specs["coco:test"], args.threads)
    direct_full = pycocotools_direct(gt_json, full)
    flips = rounding_flips(full, gt_json)
    diffs = {m: max_difference(metrics["voc"][m], metrics["coco"][m]) for m in METRICS}
    ours = {k: metrics["coco"]["coco"][k] for k in STAT_NAMES}
    diffs["pycocotools_direct"] = max_difference(ours, direct)
    diffs["pycocotools_full_precision"] = max_difference(ours, direct_full)
    t = preset("tiny-shapes").train
    scale = args.iters / t.max_iter
    res: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "command": shlex.join([sys.executable.rsplit("/", 1)[-1], *sys.argv]),
        "config": {"train_images": args.train_images, "test_images": args.test_images, "iters": args.iters,
                   "threads": args.threads,
                   "lr_steps": "[" + ",".join(str(max(1, round(s * scale))) for s in t.lr_steps) + "]",
                   "warmup_iters": max(1, round(t.warmup_iters * scale))},
        "exports_exact": exact,
        "weights_identical": same,
        "weights_differ": differ,
        "detections_identical": same_dets,
        "metrics": metrics,
        "pycocotools_direct": direct,
        "pycocotools_full_precision": direct_full,
        "rounding_flips": flips,
        "max_abs_difference": diffs,
        "train_s": train_s,
    }
    # eval's numbers must be pycocotools' on the same (full precision) detections; on the rounded
    # detections.json they may differ only when rounding moved an IoU across a threshold
    file_ok = diffs["pycocotools_direct"] <= TOLERANCE or bool(flips)
    res["ok"] = bool(exact and same and same_dets and file_ok
                     and all(v <= TOLERANCE for k, v in diffs.items() if k != "pycocotools_direct"))
    res["total_s"] = time.perf_counter() - t0
    return res


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--train-images", type=int, default=200, help="shapes training images (default 200)")
    p.add_argument("--test-images", type=int, default=100, help="shapes test images (default 100)")
    p.add_argument("--iters", type=int, default=300, help="training iterations per copy (default 300)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--out", default="runs/formats_agree", help="work folder (emptied first)")
    p.add_argument("--results-md", default=None, help="markdown file to add the results section to")
    args = p.parse_args(argv)
    res = run(args)
    (Path(args.out) / "results.json").write_text(json.dumps(res, indent=2) + "\n")
    print()
    print(table(res))
    print(f"\nweights identical: {res['weights_identical']}; detections identical: {res['detections_identical']}; "
          f"all checks passed: {res['ok']}  ({res['total_s'] / 60:.1f} min)")
    if args.results_md:
        write_section(Path(args.results_md), section(res))
        print(f"wrote section {SECTION!r} to {args.results_md}")
    return 0 if res["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
