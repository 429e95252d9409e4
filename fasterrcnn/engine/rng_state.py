"""Every random number generator's state (torch CPU and CUDA, numpy, Python) as plain values.

:func:`capture_rng_state` returns tensors, ints, floats and lists only, so that a checkpoint
holding it loads with ``torch.load(..., weights_only=True)``; :func:`restore_rng_state` puts
it back, so a resumed run draws the same numbers as one that never stopped.
"""

from __future__ import annotations

import random
from typing import Any, Mapping

import numpy as np
import torch


def capture_rng_state() -> dict[str, Any]:
    """All RNG states (torch CPU, CUDA, numpy, python) as ``weights_only``-loadable values."""
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        # only when CUDA is in use: capturing must not create CUDA contexts for a CPU run
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": {"version": int(version), "state": list(internal), "gauss_next": gauss_next},
    }


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state` (CUDA states restored when the device count fits)."""
    torch.set_rng_state(state["torch"].to(torch.uint8))
    cuda = list(state.get("cuda") or [])
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([c.to(torch.uint8) for c in cuda])
    npst = state["numpy"]
    np.random.set_state(
        (
            npst["kind"],
            npst["keys"].numpy().astype(np.uint32),
            int(npst["pos"]),
            int(npst["has_gauss"]),
            float(npst["cached_gaussian"]),
        )
    )
    py = state["python"]
    random.setstate((int(py["version"]), tuple(int(x) for x in py["state"]), py["gauss_next"]))
