"""``congrad run``: the whole self-rewarding loop, every round's stages in order,
resuming where a previous run stopped.

In: a config (``--config``, overrides). Out: the run folder's artifacts; the summary
table and the folder on stdout, progress on stderr. Preflight: the model (and LoRA), the
vLLM engine if the config asks for it, and the launcher (a DeepSpeed launch the loop
cannot honour is refused), all before round 1 starts.
"""

from __future__ import annotations

import argparse
from typing import Any

from congrad.cli import common


def add_parser(subparsers: Any) -> None:
    command = subparsers.add_parser("run", help="the whole self-rewarding loop, resumable")
    common.add_config_arguments(command)
    common.add_run_flags(command)
    command.set_defaults(handler=run)


def _preflight(args: argparse.Namespace) -> Any:
    from congrad.parallel.zero import check_launch

    config = common.load_checked(args, generates=True)  # vLLM checked before any stage runs
    check_launch(config)  # a DeepSpeed launch the loop cannot honour: refused now
    return config


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from congrad.parallel.distributed import is_main
    from congrad.pipeline.summary import build_summary

    config = _preflight(args)
    with common.runner(config, args) as runner:
        runner.run_all()
    if is_main():
        Console(width=max(Console().width, 100)).print(build_summary(config).table())
        print(f"run folder: {config.output_dir}")
    return 0
