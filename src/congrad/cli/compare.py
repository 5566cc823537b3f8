"""``congrad compare``: run and evaluate several selection strategies (and seeds, keep
fractions) from one config, then write the comparison report.

In: a config (``--config``, overrides), ``--strategies``, ``--seeds``, ``--keep``. Out: a
comparison folder with one run per strategy and ``report.md`` (its path on stdout),
progress on stderr. Preflight: refused under a multi-process launcher; the model (and
LoRA), the vLLM engine if the config asks for it, the strategies and keep fractions, the
seed count and an API judge's key, all before any run starts.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from congrad.cli import common


def add_parser(subparsers: Any) -> None:
    command = subparsers.add_parser(
        "compare", help="run and evaluate several strategies from one config, then report"
    )
    common.add_config_arguments(command)
    command.add_argument(
        "--strategies",
        default="full,rand,max-congrad",
        help="comma-separated: full, rand, max-len, min-len, max-reward, min-reward, "
        "max-congrad, min-congrad, uab, lcl, mono (default: full,rand,max-congrad)",
    )
    command.add_argument("--seeds", type=int, default=1, help="seeds of rand, averaged")
    command.add_argument("--keep", help="keep fractions to sweep, e.g. 0.25,0.5,0.75")
    common.add_run_flags(command)
    command.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from congrad.parallel.distributed import launched
    from congrad.tools.compare import parse_keeps, parse_strategies, run_comparison

    if launched():
        print(
            "congrad: compare runs in one process; under torchrun/accelerate launch, run each "
            "strategy's config with `congrad run` (see docs/distributed.md, 'On a GPU cluster')",
            file=sys.stderr,
        )
        return 2
    config = common.load_checked(args, generates=True)
    strategies = parse_strategies(args.strategies)
    keeps = parse_keeps(args.keep)
    if args.seeds < 1:
        print("congrad: --seeds must be >= 1", file=sys.stderr)
        return 2
    common.check_judge_key(config)
    console = Console(stderr=True)
    report = run_comparison(
        config,
        strategies,
        seeds=args.seeds,
        keeps=keeps,
        force=args.force,
        progress=not args.quiet,
        log=lambda m: console.print(m),
    )
    print(f"report: {report / 'report.md'}")
    return 0
