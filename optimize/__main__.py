"""``python -m optimize <stage> [options]``: stages simplify, quantize, engines (each module's own --help)."""
from __future__ import annotations

import importlib
import sys

from pipeline.stage import cli

STAGES = {"simplify": "optimize.simplify", "quantize": "optimize.quantize", "engines": "optimize.engines"}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in STAGES:
        print(f"usage: python -m optimize {{{','.join(STAGES)}}} [options]; got {argv[:1] or 'nothing'}", file=sys.stderr)
        return 2
    stage = importlib.import_module(STAGES[argv[0]])
    return int(cli(argv[0], lambda: stage.main(argv[1:])) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
