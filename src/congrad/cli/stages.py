"""``congrad prompts|generate|judge|pairs|filter|train --round N``: one stage of one
round of the loop, for rerunning or stepping through it by hand.

In: a config (``--config``, overrides) and ``--round N``. Out: that stage's artifacts in
the run folder (nothing when it is already complete, which stderr says); progress on
stderr. Preflight: the model (and LoRA); ``generate`` and ``judge`` also the vLLM engine
if the config asks for it, ``train`` also the launcher. ``filter`` registers here, in the
stages' order, but its parser and handler are :mod:`~congrad.cli.filter_dataset`'s,
which also takes a dataset outside any run.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from congrad.cli import common


def add_stage_arguments(command: argparse.ArgumentParser, *, round_required: bool) -> None:
    """The config, ``--round`` and the run-folder flags of a stage command."""
    common.add_config_arguments(command)
    command.add_argument("--round", type=int, required=round_required)
    common.add_run_flags(command)


def add_parser(subparsers: Any, names: tuple[str, ...]) -> None:
    """Register the loop stages ``names`` (``filter`` has its own module, filter_dataset)."""
    for stage in names:
        command = subparsers.add_parser(stage, help=f"run the {stage} stage of one round")
        add_stage_arguments(command, round_required=True)
        command.set_defaults(handler=run)


def _preflight(args: argparse.Namespace) -> Any:
    config = common.load_checked(args)
    if args.command in ("generate", "judge"):  # the stages that load the generation engine
        from congrad.backends.vllm_engine import check_vllm_available

        check_vllm_available(config)
    if args.command == "train":  # the stage a DeepSpeed launch runs
        from congrad.parallel.zero import check_launch

        check_launch(config)
    return config


def run(args: argparse.Namespace) -> int:
    """Run stage ``args.command`` of round ``args.round``."""
    from congrad.parallel.distributed import is_main

    config = _preflight(args)
    if common.round_refused(config, args.round):
        return 2
    with common.runner(config, args) as runner:
        if not runner.run_stage(args.command, args.round) and is_main():
            print(f"round {args.round}: {args.command} is already complete", file=sys.stderr)
    return 0
