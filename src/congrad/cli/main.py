"""The ``congrad`` command line: the parser, which registers every command module of
:mod:`congrad.cli` in the order ``congrad --help`` lists them, and the error handling
they share. Each command module owns its arguments, its preflight checks and its work,
and imports heavy modules only when it runs (as TRL's CLI does), so ``congrad --help``
answers without loading torch.

In: argv. Out: exit status; output on stdout, progress and errors on stderr. A user's
error (a bad config, a missing model, a full disk) is one line on stderr and exit 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from congrad.cli import (
    bench,
    compare,
    evaluate,
    fetch_model,
    filter_dataset,
    inspect_ema,
    plan,
    report,
    run,
    show_config,
    stages,
)

LATER_COMMANDS = (evaluate, compare, report, bench, show_config, fetch_model, inspect_ema, plan)


def _register(commands: argparse._SubParsersAction) -> None:
    """Every command, in the order ``congrad --help`` lists them: run, the loop's stages in
    their order (filter, loop stage or standalone, has its own module), then the rest."""
    run.add_parser(commands)
    stages.add_parser(commands, ("prompts", "generate", "judge", "pairs"))
    filter_dataset.add_parser(commands)
    stages.add_parser(commands, ("train",))
    for command in LATER_COMMANDS:
        command.add_parser(commands)


def build_parser() -> argparse.ArgumentParser:
    from congrad import __version__

    parser = argparse.ArgumentParser(
        prog="congrad",
        description="Conflicting-gradient filtering for multilingual preference alignment.",
    )
    parser.add_argument("--version", action="version", version=f"congrad {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    _register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    from congrad.errors import CongradError
    from congrad.util.atomic import DISK_FULL

    try:
        return int(args.handler(args))
    except (CongradError, FileNotFoundError) as error:
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
