"""Training progress output: tqdm bar, ``log.jsonl``, ``train.log`` and TensorBoard scalars.

Only the main process (rank 0) writes anything; other ranks get a disabled logger. Every
iteration updates the progress bar (losses, lr, images/s, ETA); every ``log_period`` iterations
(and at the last one) a record goes to ``DIR/log.jsonl``::

    {"iteration": 20, "losses": {"total": .., "rpn_cls": .., ...}, "lr": .., "time": 12.3,
     "iter_time": 0.61, "images_per_s": 6.5, "eta_s": 41000.0}

(losses averaged over the iterations since the previous record and over ranks), a line to
``DIR/train.log`` and scalars to TensorBoard under ``DIR/tb`` (``loss/*``, ``lr``,
``speed/images_per_s``, and ``val/*`` for metrics). Without the tensorboard package the logger
warns once and carries on.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Mapping

from tqdm import tqdm

log = logging.getLogger("fasterrcnn.train")


def _fmt_duration(seconds: float) -> str:
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(round(seconds))
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    return f"{d}d{h:02d}:{m:02d}:{s:02d}" if d else f"{h:d}:{m:02d}:{s:02d}"


def _json_value(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # keep log.jsonl strict JSON ("nan", "inf")
    return v


class TrainLogger:
    """Sink for per-iteration losses and periodic metrics (see the module docstring)."""

    def __init__(
        self,
        out_dir: str | Path,
        *,
        max_iter: int,
        start_iter: int = 0,
        log_period: int = 20,
        images_per_iter: int = 1,
        enabled: bool = True,
        progress: bool = True,
        tensorboard: bool = True,
    ) -> None:
        self.out_dir = Path(out_dir)
        self.max_iter = int(max_iter)
        self.start_iter = int(start_iter)
        self.log_period = max(1, int(log_period))
        self.images_per_iter = int(images_per_iter)
        self.enabled = bool(enabled)
        self._t0 = time.perf_counter()
        self._window_t0 = self._t0
        self._window: dict[str, list[float]] = {}
        self._window_iters = 0
        self._last_speed = float("nan")
        self._tb: Any = None
        self._bar: Any = None
        if not self.enabled:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._jsonl = open(self.out_dir / "log.jsonl", "a", encoding="utf-8")
        self._text = open(self.out_dir / "train.log", "a", encoding="utf-8")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(log_dir=str(self.out_dir / "tb"), purge_step=start_iter + 1 if start_iter else None)
            except Exception as exc:  # ImportError, or a broken tensorboard install
                log.warning("TensorBoard logging disabled (%s: %s); install the 'tensorboard' "
                            "package to get it", type(exc).__name__, exc)
        if progress:
            self._bar = tqdm(
                total=self.max_iter,
                initial=self.start_iter,
                desc="train",
                unit="it",
                dynamic_ncols=True,
                smoothing=0.05,
            )

    # ------------------------------------------------------------------ text

    def info(self, message: str) -> None:
        """A line in ``train.log`` (and on the console above the progress bar)."""
        if not self.enabled:
            return
        line = f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] {message}"
        self._text.write(line + "\n")
        self._text.flush()
        if self._bar is not None:
            self._bar.write(line)

    def warning(self, message: str) -> None:
        """A ``WARNING`` line in ``train.log`` and a warning on the ``fasterrcnn.train`` logger
        (the console shows the message itself, not a Python warning with a source path)."""
        if not self.enabled:
            return
        line = f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] WARNING {message}"
        self._text.write(line + "\n")
        self._text.flush()
        if self._bar is not None and not log.handlers and not logging.getLogger().handlers:
            self._bar.write(line)  # nobody would show the log record: keep it above the bar
        else:
            log.warning("%s", message)

    # ------------------------------------------------------------------ per iteration

    def accumulate(self, losses: Mapping[str, float]) -> None:
        """Add one iteration's (local) loss values to the current logging window."""
        for k, v in losses.items():
            self._window.setdefault(k, []).append(float(v))
        self._window_iters += 1

    def window_means(self) -> dict[str, float]:
        """Mean of each loss over the current window (finite values only where any exist)."""
        out = {}
        for k, vals in self._window.items():
            finite = [v for v in vals if math.isfinite(v)]
            out[k] = sum(finite) / len(finite) if finite else (vals[-1] if vals else float("nan"))
        return out

    def should_log(self, iteration: int) -> bool:
        return iteration % self.log_period == 0 or iteration == self.max_iter

    def progress(self, iteration: int, losses: Mapping[str, float], lr: float) -> None:
        """Advance the progress bar to ``iteration`` showing ``losses`` and ``lr``."""
        if self._bar is None:
            return
        post = {k: f"{v:.3f}" for k, v in losses.items()}
        post["lr"] = f"{lr:.2e}"
        if math.isfinite(self._last_speed):
            post["img/s"] = f"{self._last_speed:.1f}"
        self._bar.set_postfix(post, refresh=False)
        self._bar.update(iteration - self._bar.n)

    def log(self, iteration: int, losses: Mapping[str, float], lr: float) -> dict[str, Any]:
        """Write the record of the window ending at ``iteration`` (losses already reduced);
        resets the window. Returns the record."""
        now = time.perf_counter()
        n = max(1, self._window_iters)
        iter_time = (now - self._window_t0) / n
        speed = self.images_per_iter / iter_time if iter_time > 0 else float("nan")
        self._last_speed = speed
        eta = iter_time * (self.max_iter - iteration)
        record = {
            "iteration": int(iteration),
            "losses": {k: _json_value(float(v)) for k, v in losses.items()},
            "lr": float(lr),
            "time": round(now - self._t0, 3),
            "iter_time": round(iter_time, 5),
            "images_per_s": round(speed, 3),
            "eta_s": round(eta, 1),
        }
        self._window = {}
        self._window_iters = 0
        self._window_t0 = now
        if not self.enabled:
            return record
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        parts = " ".join(f"{k} {v:.4f}" for k, v in losses.items())
        line = (
            f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] iter {iteration}/{self.max_iter} {parts} "
            f"lr {lr:.3e} {speed:.2f} img/s eta {_fmt_duration(eta)}"
        )
        self._text.write(line + "\n")
        self._text.flush()
        if self._tb is not None:
            for k, v in losses.items():
                self._tb.add_scalar(f"loss/{k}", v, iteration)
            self._tb.add_scalar("lr", lr, iteration)
            self._tb.add_scalar("speed/images_per_s", speed, iteration)
            self._tb.flush()
        return record

    def log_metrics(self, iteration: int, metrics: Mapping[str, Any], prefix: str = "val") -> None:
        """Evaluation results: numbers go to TensorBoard (``val/NAME``), all to the logs."""
        if not self.enabled:
            return
        numbers = {
            k: float(v) for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        self._jsonl.write(
            json.dumps({"iteration": int(iteration), prefix: {k: _json_value(v) for k, v in numbers.items()}})
            + "\n"
        )
        self._jsonl.flush()
        self.info(
            f"evaluation at iteration {iteration}: "
            + ", ".join(f"{k} {v:.4f}" for k, v in numbers.items())
        )
        if self._tb is not None:
            for k, v in numbers.items():
                self._tb.add_scalar(f"{prefix}/{k}", v, iteration)
            self._tb.flush()

    def close(self) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        for f in (self._jsonl, self._text):
            if not f.closed:
                f.close()


def truncate_log(path: Path, iteration: int) -> None:
    """Drop ``log.jsonl`` records written after ``iteration`` by a run that was then killed,
    so that a resumed run's log reads as one continuous run."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if int(json.loads(line).get("iteration", 0)) > iteration:
                continue
        except (ValueError, AttributeError, TypeError):
            continue  # a line cut short by the kill
        kept.append(line + "\n")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(kept), encoding="utf-8")
    os.replace(tmp, path)
