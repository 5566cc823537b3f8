"""The ``congrad`` command line. Subcommands import their modules lazily (as TRL's CLI
does), so ``congrad --help`` answers without loading torch.

In: argv. Out: exit status; output on stdout, progress and errors on stderr.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from congrad.cli import bench, common, fetch_model, inspect_ema, plan, report, show_config


def _load(args: argparse.Namespace) -> Any:
    """The validated config, its model checked to exist before any stage runs."""
    from congrad.config.run import load_config
    from congrad.models.loading import check_model_source
    from congrad.models.lora import check_lora_available

    config = load_config(args.config, list(args.overrides))
    check_model_source(getattr(args, "model", None) or config.model.name_or_path)
    check_lora_available(config.model.lora)
    if args.command in ("run", "generate", "judge", "evaluate", "compare"):
        from congrad.backends.vllm_engine import check_vllm_available

        check_vllm_available(config)  # before any stage runs, not after round 1's prompts
    if args.command in ("run", "train"):
        from congrad.parallel.zero import check_launch

        check_launch(config)  # a DeepSpeed launch the loop cannot honour: refused now
    return config


def _runner(config: Any, args: argparse.Namespace) -> Any:
    """The run folder prepared and a Runner for it. Under a multi-process launcher every
    rank gets one; the main process alone checks and writes the folder and prints."""
    from rich.console import Console

    from congrad.config.run import ConfigError
    from congrad.parallel import distributed
    from congrad.pipeline.runner import Runner, prepare_run_dir

    main = distributed.is_main()
    refusal = None
    if main:
        try:
            prepare_run_dir(config, force=args.force)
        except ConfigError as error:
            refusal = str(error)
    refusal = distributed.broadcast(refusal)  # every rank stops, not only the main one
    if refusal is not None:
        raise ConfigError(refusal)
    console = Console(stderr=True)
    return Runner(
        config,
        progress=main and not args.quiet,
        log=(lambda m: console.print(m)) if main else (lambda m: None),
    )


def _run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from congrad.parallel.distributed import is_main
    from congrad.pipeline.summary import build_summary

    config = _load(args)
    with _runner(config, args) as runner:
        runner.run_all()
    if is_main():
        Console(width=max(Console().width, 100)).print(build_summary(config).table())
        print(f"run folder: {config.output_dir}")
    return 0


def _stage(args: argparse.Namespace) -> int:
    from congrad.parallel.distributed import is_main

    config = _load(args)
    if not 1 <= args.round <= config.rounds:
        print(f"congrad: --round must lie in 1..{config.rounds}", file=sys.stderr)
        return 2
    with _runner(config, args) as runner:
        if not runner.run_stage(args.command, args.round) and is_main():
            print(f"round {args.round}: {args.command} is already complete", file=sys.stderr)
    return 0


def _filter(args: argparse.Namespace) -> int:
    if args.dataset:
        from congrad.tools.standalone_filter import filter_dataset

        if not args.output:
            print("congrad: filter --dataset needs --output DIR", file=sys.stderr)
            return 2
        filter_dataset(
            _load(args),
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
    return _stage(args)


def _evaluate(args: argparse.Namespace) -> int:
    from rich.console import Console

    from congrad.reporting.report import evaluation_table

    config = _load(args)
    if args.round is not None and not 1 <= args.round <= config.rounds:
        print(f"congrad: --round must lie in 1..{config.rounds}", file=sys.stderr)
        return 2
    _check_judge_key(config)
    rounds = None if args.round is None else [args.round]
    with _runner(config, args) as runner:
        runner.evaluate(rounds)
    from congrad.parallel.distributed import is_main

    if is_main():
        Console(width=max(Console().width, 160)).print(evaluation_table(config.output_dir, rounds))
    return 0


def _check_judge_key(config: Any) -> None:
    """An API judge without its key fails here, before any answer is generated."""
    import os

    from congrad.evaluation.judges import JudgeSetupError

    judge = config.evaluate.judge
    if judge.backend == "openai" and not os.environ.get(judge.api_key_env):
        raise JudgeSetupError(
            f"evaluate.judge.backend=openai reads the API key from the environment variable "
            f"{judge.api_key_env}, which is not set; export it (the key is never written to "
            "any file), or point evaluate.judge.api_key_env at another variable"
        )


def _compare(args: argparse.Namespace) -> int:
    from rich.console import Console

    from congrad.parallel.distributed import launched
    from congrad.tools.compare import parse_keeps, parse_strategies, run_comparison

    if launched():
        print(
            "congrad: compare runs in one process; under torchrun/accelerate launch, run each "
            "strategy's config with `congrad run` (see README, 'On a GPU cluster')",
            file=sys.stderr,
        )
        return 2
    config = _load(args)
    strategies = parse_strategies(args.strategies)
    keeps = parse_keeps(args.keep)
    if args.seeds < 1:
        print("congrad: --seeds must be >= 1", file=sys.stderr)
        return 2
    _check_judge_key(config)
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


def build_parser() -> argparse.ArgumentParser:
    from congrad import __version__

    parser = argparse.ArgumentParser(
        prog="congrad",
        description="Conflicting-gradient filtering for multilingual preference alignment.",
    )
    parser.add_argument("--version", action="version", version=f"congrad {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = commands.add_parser("run", help="the whole self-rewarding loop, resumable")
    common.add_config_arguments(run)
    run.add_argument("--force", action="store_true", help="accept a changed config")
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    run.set_defaults(handler=_run)

    for stage in ("prompts", "generate", "judge", "pairs", "filter", "train"):
        command = commands.add_parser(stage, help=f"run the {stage} stage of one round")
        common.add_config_arguments(command)
        command.add_argument("--round", type=int, required=stage != "filter")
        command.add_argument("--force", action="store_true", help="accept a changed config")
        command.add_argument("--quiet", action="store_true", help="no progress bars")
        command.set_defaults(handler=_stage)
        if stage == "filter":
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
            command.set_defaults(handler=_filter)

    evaluate = commands.add_parser(
        "evaluate", help="win rates over the seed model (and multiple-choice accuracy)"
    )
    common.add_config_arguments(evaluate)
    evaluate.add_argument("--round", type=int, help="one round (default: every trained round)")
    evaluate.add_argument("--force", action="store_true", help="accept a changed config")
    evaluate.add_argument("--quiet", action="store_true", help="no progress bars")
    evaluate.set_defaults(handler=_evaluate)

    compare = commands.add_parser(
        "compare", help="run and evaluate several strategies from one config, then report"
    )
    common.add_config_arguments(compare)
    compare.add_argument(
        "--strategies",
        default="full,rand,max-congrad",
        help="comma-separated: full, rand, max-len, min-len, max-reward, min-reward, "
        "max-congrad, min-congrad, uab, lcl, mono (default: full,rand,max-congrad)",
    )
    compare.add_argument("--seeds", type=int, default=1, help="seeds of rand, averaged")
    compare.add_argument("--keep", help="keep fractions to sweep, e.g. 0.25,0.5,0.75")
    compare.add_argument("--force", action="store_true", help="accept a changed config")
    compare.add_argument("--quiet", action="store_true", help="no progress bars")
    compare.set_defaults(handler=_compare)

    for module in (report, bench, show_config, fetch_model, inspect_ema, plan):
        module.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    from congrad.errors import USER_ERRORS
    from congrad.util.atomic import DISK_FULL

    try:
        return int(args.handler(args))
    except USER_ERRORS as error:
        print(f"congrad: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        if error.errno not in DISK_FULL:
            raise  # not the user's to fix: keep the traceback
        where = f" while writing {error.filename}" if error.filename else ""
        print(
            f"congrad: the disk is full ({error.strerror}){where}; free some space on it and "
            "rerun the same command (finished stages are kept)",
            file=sys.stderr,
        )
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
