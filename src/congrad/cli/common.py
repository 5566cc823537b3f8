"""What the ``congrad`` commands share: the config arguments and their loading, the
model checks every config command runs first, the run folder and its Runner, and the
judge-key check. Light at import: heavy modules load inside the functions.

In: parsed arguments. Out: a validated config, a Runner, or a user error raised early.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any


def add_config_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument("--config", help="YAML config file (defaults apply without one)")
    command.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. rounds=3"
    )


def add_run_flags(command: argparse.ArgumentParser) -> None:
    """``--force`` and ``--quiet``, for the commands that write a run folder."""
    command.add_argument("--force", action="store_true", help="accept a changed config")
    command.add_argument("--quiet", action="store_true", help="no progress bars")


def load_config(args: argparse.Namespace) -> Any:
    """The validated config of ``--config`` with the ``KEY=VALUE`` overrides applied."""
    from congrad.config.run import load_config

    return load_config(args.config, list(args.overrides))


def load_checked(args: argparse.Namespace, *, generates: bool = False) -> Any:
    """The validated config, its model checked to exist (and LoRA to be installed, if the
    config asks for it) before any stage runs. A ``--model`` flag names the model instead.
    ``generates``: the command generates text, so ``generate.backend=vllm`` needs vLLM."""
    from congrad.models.loading import check_model_source
    from congrad.models.lora import check_lora_available

    config = load_config(args)
    check_model_source(getattr(args, "model", None) or config.model.name_or_path)
    check_lora_available(config.model.lora)
    if generates:
        from congrad.backends.vllm_engine import check_vllm_available

        check_vllm_available(config)
    return config


def round_refused(config: Any, number: int) -> bool:
    """True, with the one-line error printed, when ``--round`` names no round of the run."""
    if 1 <= number <= config.rounds:
        return False
    print(f"congrad: --round must lie in 1..{config.rounds}", file=sys.stderr)
    return True


def runner(config: Any, args: argparse.Namespace) -> Any:
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


def check_judge_key(config: Any) -> None:
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
