"""``congrad inspect-ema``: summarise a saved GradientEMA file from its header alone
(rank, decay, tracked matrices, bytes and update counts per language).

In: the ``.safetensors`` path. Out: the summary on stdout; exit 1 when the file cannot be
read or is not a congrad GradientEMA file.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def add_parser(subparsers: Any) -> None:
    command = subparsers.add_parser("inspect-ema", help="summarise a saved GradientEMA file")
    command.add_argument("path")
    command.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from safetensors import safe_open

    from congrad.tools.memory_plan import factored_bytes

    try:
        with safe_open(args.path, framework="pt") as handle:
            raw = (handle.metadata() or {}).get("congrad")
    except Exception as error:  # safetensors raises its own error types, not OSError
        print(f"congrad: cannot read {args.path}: {error}", file=sys.stderr)
        return 1
    if raw is None:
        print(f"congrad: {args.path} is not a congrad GradientEMA file", file=sys.stderr)
        return 1
    header = json.loads(raw)
    shapes = header["tracked"].values()
    per_language = sum(factored_bytes(m, n, header["rank"]) for m, n in shapes)
    print(f"rank {header['rank']}, iters {header['iters']}, gamma {header['gamma']}")
    print(f"tracked matrices: {len(header['tracked'])}")
    print(f"bytes per language: {per_language:,}")
    for lang, count in sorted(header["counts"].items()):
        print(f"  {lang}: {count} updates")
    return 0
