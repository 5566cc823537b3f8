"""``congrad filter``: the filter stage of one round (``--round N``), or, with
``--dataset FILE``, the same selection run on a preference dataset outside any run.

In: a config (``--config``, overrides); ``--dataset`` files of (prompt, chosen, rejected,
lang) records, ``--output DIR``, optionally ``--model`` and a saved GradientEMA
(``--ema``). Out: the selection written to ``--output`` (its folder on stdout), progress on
stderr. Preflight: the model (``--model``, else the config's) and LoRA. With ``--round``
it is the loop stage of :mod:`~congrad.cli.stages`, which registers this command in the
stages' order.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from congrad.cli import common, stages


def add_parser(subparsers: Any) -> None:
    command = subparsers.add_parser("filter", help="run the filter stage of one round")
    stages.add_stage_arguments(command, round_required=False)
    command.add_argument(
        "--dataset",
        action="append",
        help="standalone: a preference dataset (prompt, chosen, rejected, lang)",
    )
    command.add_argument("--output", help="standalone: folder for the selection")
    command.add_argument("--model", help="standalone: model path (else model.*)")
    command.add_argument(
        "--ema", help="standalone: a saved GradientEMA (default: built from the dataset)"
    )
    command.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if args.dataset:
        from congrad.tools.standalone_filter import filter_dataset

        if not args.output:
            print("congrad: filter --dataset needs --output DIR", file=sys.stderr)
            return 2
        filter_dataset(
            common.load_checked(args),
            args.dataset,
            args.output,
            model=args.model,
            ema_path=args.ema,
            progress=not args.quiet,
        )
        from congrad.parallel.distributed import is_main

        if is_main():
            print(f"selection written to {args.output}")
        return 0
    if args.round is None:
        print("congrad: filter needs --round N (loop stage) or --dataset FILE", file=sys.stderr)
        return 2
    return stages.run(args)
