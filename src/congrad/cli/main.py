"""The ``congrad`` command line. Subcommands import their modules lazily (as TRL's CLI
does), so ``congrad --help`` answers without loading torch.

In: argv. Out: exit status; output on stdout, progress and errors on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any


def _fetch_model(args: argparse.Namespace) -> int:
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


def _inspect_ema(args: argparse.Namespace) -> int:
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


def _plan(args: argparse.Namespace) -> int:
    from rich.console import Console

    from congrad.config.run import LORA_TARGETS
    from congrad.tools.memory_plan import (
        DEFAULTS,
        DTYPE_BYTES,
        GB,
        GIB,
        memory_plan,
        plan_notes,
        plan_table,
        read_model_config,
        settings_from_config,
    )

    settings: dict[str, Any] = {"model": None, **DEFAULTS}
    if args.config or args.overrides:
        from congrad.config.run import load_config

        settings.update(settings_from_config(load_config(args.config, list(args.overrides))))
    flags = ("model", "rank", "languages", "batch_size", "max_length", "dtype", "lora_r")
    settings.update({k: getattr(args, k) for k in flags if getattr(args, k) is not None})
    if args.gradient_checkpointing:
        settings["gradient_checkpointing"] = True
    if settings["model"] is None:
        print("congrad: plan needs --model PATH_OR_ID or --config FILE", file=sys.stderr)
        return 2
    model_config, source = read_model_config(settings["model"])
    dtype_bytes = DTYPE_BYTES[settings["dtype"]]
    plan = memory_plan(
        model_config,
        rank=settings["rank"],
        languages=settings["languages"],
        batch_size=settings["batch_size"],
        max_length=settings["max_length"],
        dtype_bytes=dtype_bytes,
        activation_bytes=settings.get("activation_bytes", dtype_bytes),
        lora_r=settings.get("lora_r"),
        lora_targets=settings.get("lora_targets", LORA_TARGETS),
        gradient_checkpointing=settings.get("gradient_checkpointing", False),
    )
    console = Console(width=max(Console().width, 120))
    console.print(plan_table(plan, source))
    if args.gpus is not None:
        from congrad.tools.cluster_plan import per_gpu_table

        console.print(per_gpu_table(plan, args.gpus))
    for note in [*settings.get("notes", []), *plan_notes(plan)]:
        print(f"note: {note}")
    ema = plan.ema_bytes
    tracked = "" if plan.lora_r is None else f" of the LoRA r={plan.lora_r} A/B matrices"
    print(
        f"gradient EMA total{tracked}: {ema / GB:.2f} GB ({ema / GIB:.2f} GiB, {ema:,} bytes) "
        f"for {plan.languages} languages at rank {min(plan.rank, plan.lora_r or plan.rank)}; "
        f"training total {plan.training_bytes / GB:.1f} GB"
    )
    return 0


def _load(args: argparse.Namespace) -> Any:
    """The validated config, its model checked to exist before any stage runs."""
    from congrad.config.run import load_config
    from congrad.models.loading import check_model_source
    from congrad.models.lora import check_lora_available

    config = load_config(args.config, list(args.overrides))
    if args.command != "show-config":
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


def _report(args: argparse.Namespace) -> int:
    from congrad.reporting.report import build_report

    report = build_report(args.folder)
    print(f"report: {report / 'report.md'}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    from congrad.tools.interference.cli import run_interference

    return run_interference(args)


def _show_config(args: argparse.Namespace) -> int:
    from congrad.config.run import config_to_yaml

    print(config_to_yaml(_load(args)), end="")
    return 0


def _add_config_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument("--config", help="YAML config file (defaults apply without one)")
    command.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. rounds=3"
    )


def build_parser() -> argparse.ArgumentParser:
    from congrad import __version__

    parser = argparse.ArgumentParser(
        prog="congrad",
        description="Conflicting-gradient filtering for multilingual preference alignment.",
    )
    parser.add_argument("--version", action="version", version=f"congrad {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = commands.add_parser("run", help="the whole self-rewarding loop, resumable")
    _add_config_arguments(run)
    run.add_argument("--force", action="store_true", help="accept a changed config")
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    run.set_defaults(handler=_run)

    for stage in ("prompts", "generate", "judge", "pairs", "filter", "train"):
        command = commands.add_parser(stage, help=f"run the {stage} stage of one round")
        _add_config_arguments(command)
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
    _add_config_arguments(evaluate)
    evaluate.add_argument("--round", type=int, help="one round (default: every trained round)")
    evaluate.add_argument("--force", action="store_true", help="accept a changed config")
    evaluate.add_argument("--quiet", action="store_true", help="no progress bars")
    evaluate.set_defaults(handler=_evaluate)

    compare = commands.add_parser(
        "compare", help="run and evaluate several strategies from one config, then report"
    )
    _add_config_arguments(compare)
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

    report = commands.add_parser("report", help="rebuild the report of a run or comparison")
    report.add_argument("folder", help="a comparison folder or a run folder")
    report.set_defaults(handler=_report)

    bench = commands.add_parser("bench", help="benchmarks of the method's claims")
    from congrad.tools.interference.cli import add_arguments

    add_arguments(bench)
    bench.set_defaults(handler=_bench)

    show = commands.add_parser("show-config", help="print the resolved, validated config")
    _add_config_arguments(show)
    show.set_defaults(handler=_show_config)

    fetch = commands.add_parser(
        "fetch-model", help="convert and cache a model that ships offline (SmolLM2-135M)"
    )
    fetch.add_argument("name", nargs="?", default="smollm2")
    fetch.add_argument("--cache-dir", help="folder for the converted model")
    fetch.set_defaults(handler=_fetch_model)
    inspect = commands.add_parser("inspect-ema", help="summarise a saved GradientEMA file")
    inspect.add_argument("path")
    inspect.set_defaults(handler=_inspect_ema)

    plan = commands.add_parser(
        "plan", help="memory plan (EMA, weights, optimizer, activations) from config.json alone"
    )
    _add_config_arguments(plan)
    plan.add_argument("--model", help="model folder, its config.json, smollm2 or a hub id")
    plan.add_argument("--rank", type=int, help="EMA rank (default 64)")
    plan.add_argument("--languages", type=int, help="number of languages (default 10)")
    plan.add_argument("--batch-size", type=int, help="pairs per minibatch (default 16)")
    plan.add_argument("--max-length", type=int, help="tokens per sequence (default 1024)")
    plan.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], help="weights (default bf16)")
    plan.add_argument("--gpus", type=int, help="also plan each GPU's share under DDP/ZeRO/FSDP2")
    plan.add_argument(
        "--lora-r", type=int, help="plan a LoRA adapter of this rank (default: from the config)"
    )
    plan.add_argument(
        "--gradient-checkpointing", action="store_true", help="plan recomputed activations"
    )
    plan.set_defaults(handler=_plan)
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
