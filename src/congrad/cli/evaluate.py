"""``congrad evaluate``: win rates of the trained rounds over the seed model, judged by
the configured judge (and multiple-choice accuracy where configured).

In: a config (``--config``, overrides), optionally ``--round N`` (default: every trained
round). Out: answers, verdicts and results in the run folder; the evaluation table on
stdout, progress on stderr. Preflight: the model (and LoRA), the vLLM engine if the config
asks for it, and an API judge's key, all before any answer is generated.
"""

from __future__ import annotations

import argparse
from typing import Any

from congrad.cli import common


def add_parser(subparsers: Any) -> None:
    command = subparsers.add_parser(
        "evaluate", help="win rates over the seed model (and multiple-choice accuracy)"
    )
    common.add_config_arguments(command)
    command.add_argument("--round", type=int, help="one round (default: every trained round)")
    common.add_run_flags(command)
    command.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from congrad.reporting.report import evaluation_table

    config = common.load_checked(args, generates=True)
    if args.round is not None and common.round_refused(config, args.round):
        return 2
    common.check_judge_key(config)
    rounds = None if args.round is None else [args.round]
    with common.runner(config, args) as runner:
        runner.evaluate(rounds)
    from congrad.parallel.distributed import is_main

    if is_main():
        Console(width=max(Console().width, 160)).print(evaluation_table(config.output_dir, rounds))
    return 0
