"""``congrad bench``: benchmarks of the method's claims; the benchmarks, their flags and
their work live in :mod:`congrad.tools.interference.cli`.

In: a benchmark name and its flags. Out: results and figures in its ``--output`` folder,
summary tables on stdout, progress on stderr.
"""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(subparsers: Any) -> None:
    from congrad.tools.interference.cli import add_arguments

    command = subparsers.add_parser("bench", help="benchmarks of the method's claims")
    add_arguments(command)
    command.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from congrad.tools.interference.cli import run_interference

    return run_interference(args)
