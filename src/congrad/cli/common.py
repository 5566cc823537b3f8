"""What the ``congrad`` commands share: the config arguments and their loading. Light at
import: heavy modules load inside the functions.

In: parsed arguments. Out: a validated config, or a user error raised early.
"""

from __future__ import annotations

import argparse
from typing import Any


def add_config_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument("--config", help="YAML config file (defaults apply without one)")
    command.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. rounds=3"
    )


def load_config(args: argparse.Namespace) -> Any:
    """The validated config of ``--config`` with the ``KEY=VALUE`` overrides applied."""
    from congrad.config.run import load_config

    return load_config(args.config, list(args.overrides))
