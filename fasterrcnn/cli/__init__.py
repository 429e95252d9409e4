"""The ``fasterrcnn`` command: demo, train, eval, detect, check-data, presets.

Every command turns bad input (missing or corrupt files, malformed annotations, a checkpoint of
another model, a diverging run) into one clear ``error: ...`` line and a non-zero exit code.
"""

from __future__ import annotations

import sys
from typing import Sequence

from .common import known_errors, retain_freed_memory
from .parser import build_parser

__all__ = ["build_parser", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    retain_freed_memory()
    try:
        return int(args.func(args) or 0)
    except known_errors() as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
