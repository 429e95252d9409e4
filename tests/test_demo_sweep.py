"""benchmarks/demo_sweep.py: variant names with seeds, and the per-split scores (hand-computed)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from fasterrcnn.data.dataset import Annotation

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "demo_sweep.py"
_spec = importlib.util.spec_from_file_location("demo_sweep", _PATH)
sweep = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sweep)


def test_variant_names_with_a_seed_suffix() -> None:
    assert sweep.variant_changes("base") == {}
    assert sweep.variant_changes("base.s3") == {"train.seed": 3}
    assert sweep.variant_changes("cosine.s1") == {"train.lr_schedule": "cosine", "train.seed": 1}
    assert sweep.variant_changes("roi128-i2000-seed1")["train.seed"] == 1  # a listed name wins
    for bad in ("nosuch", "nosuch.s1", "base.sx", "base.s"):
        with pytest.raises(KeyError):
            sweep.variant_changes(bad)


def test_split_scores_by_hand() -> None:
    # class a: two objects, both found (0.9, 0.8) below a false positive (0.95): precision 1/2
    # at recall 1/2 and 2/3 at recall 1, so AP 2/3 (11-point and all-point alike). Class b: its
    # one object is never detected: AP 0 and one miss. mAP 1/3.
    anns = [
        Annotation(0, "0.png", 50, 50, np.array([[0, 0, 10, 10], [20, 20, 40, 40]]), np.array([1, 2])),
        Annotation(1, "1.png", 50, 50, np.array([[0, 0, 10, 10]]), np.array([1])),
    ]
    dets = [
        {"boxes": np.array([[0, 0, 10, 10]], np.float32), "labels": np.array([1]), "scores": np.array([0.9])},
        {"boxes": np.array([[0, 0, 10, 10], [30, 30, 45, 45]], np.float32), "labels": np.array([1, 1]),
         "scores": np.array([0.8, 0.95])},
    ]
    got = sweep._split_scores(dets, anns, ("a", "b"))
    assert got["AP"] == {"a": pytest.approx(0.667, abs=1e-9), "b": 0.0}
    assert got["mAP"] == pytest.approx(round(1 / 3, 4)) and got["all_point"] == pytest.approx(round(1 / 3, 4))
    assert got["misses"] == 1
    # image 1 alone: its object found at precision 1/2; class b has no object, so no AP at all
    alone = sweep._split_scores(dets[1:], anns[1:], ("a", "b"))
    assert alone["AP"] == {"a": 0.5} and alone["mAP"] == 0.5 and alone["misses"] == 0
