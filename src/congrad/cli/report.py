"""``congrad report``: rebuild the report of a run folder or a comparison folder from
what is already on disk; nothing is trained or judged.

In: the folder. Out: its ``report/`` folder (``report.md``, tables, figures) rebuilt
whole; the path of ``report.md`` on stdout. No preflight: the folder itself is the input.
"""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(subparsers: Any) -> None:
    command = subparsers.add_parser("report", help="rebuild the report of a run or comparison")
    command.add_argument("folder", help="a comparison folder or a run folder")
    command.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from congrad.reporting.report import build_report

    report = build_report(args.folder)
    print(f"report: {report / 'report.md'}")
    return 0
