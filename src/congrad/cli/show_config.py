"""``congrad show-config``: print the resolved, validated config (defaults, the
``--config`` file and the overrides merged) as YAML.

In: a config (``--config``, overrides). Out: the YAML on stdout. Preflight: the config's
validation only; the model is not checked, so a config can be inspected anywhere.
"""

from __future__ import annotations

import argparse
from typing import Any

from congrad.cli import common


def add_parser(subparsers: Any) -> None:
    command = subparsers.add_parser("show-config", help="print the resolved, validated config")
    common.add_config_arguments(command)
    command.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from congrad.config.run import config_to_yaml

    print(config_to_yaml(common.load_config(args)), end="")
    return 0
