"""``congrad bench interference``: arguments, progress, summary and artifacts.

In: parsed arguments. Out: exit status; the results and figures in ``--output``, the
summary tables on stdout, progress on stderr. Heavy modules load only when it runs, so
``congrad --help`` stays light.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any


def _numbers(text: str, kind: type, flag: str) -> tuple[Any, ...]:
    try:
        values = tuple(kind(part) for part in text.split(",") if part.strip())
    except ValueError as error:
        raise argparse.ArgumentTypeError(
            f"{flag} takes comma-separated numbers, got {text!r}"
        ) from error
    if not values:
        raise argparse.ArgumentTypeError(f"{flag} needs at least one value")
    return values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``bench`` subcommand's own subcommands and flags."""
    kinds = parser.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
    interference = kinds.add_parser(
        "interference",
        help="controlled benchmark: does CONGRAD find planted cross-lingual conflicts, and "
        "does training on its selection help every language (minutes on a CPU)",
    )
    interference.add_argument("--output", default="runs/bench_interference", help="folder")
    interference.add_argument("--seeds", type=int, help="seeds per regime (default 5)")
    interference.add_argument(
        "--ranks", type=lambda t: _numbers(t, int, "--ranks"), help="EMA ranks, e.g. 4,16,64"
    )
    interference.add_argument(
        "--gammas", type=lambda t: _numbers(t, float, "--gammas"), help="EMA decays, e.g. 0.5,0.9"
    )
    interference.add_argument(
        "--warmup-lr",
        type=float,
        help="the headline warm-up learning rate (default 3e-3, the training one)",
    )
    interference.add_argument(
        "--warmup-lrs",
        type=lambda t: _numbers(t, float, "--warmup-lrs"),
        help="warm-up learning rates, e.g. 3e-4,1e-3,3e-3",
    )
    interference.add_argument(
        "--regimes",
        type=lambda t: tuple(p.strip() for p in t.split(",") if p.strip()),
        help="data regimes, the first also swept over rank and gamma (default "
        "attribute,successor; also judge-informative)",
    )
    interference.add_argument(
        "--quick", action="store_true", help="a tiny setting that runs in seconds (for tests)"
    )


def quick_config(**overrides: Any) -> Any:
    """The ``--quick`` setting: 3 languages, few pairs, 1 seed, two values per axis."""
    from congrad.tools.interference.benchmark import BenchConfig
    from congrad.tools.interference.data import InterferenceSpec

    spec = InterferenceSpec(
        languages=3,
        symbols=12,
        warmup_pairs=16,
        candidate_pairs=24,
        eval_pairs=12,
        pretrain_texts=32,
    )
    settings: dict[str, Any] = {
        "spec": spec,
        "seeds": 1,
        "ranks": (2, 4),
        "gammas": (0.5, 0.9),
        "warmup_learning_rates": (1e-3, 3e-3),
        "rank": 4,
        "pretrain_steps": 10,
        "trained": ("full", "rand", "max-congrad", "min-congrad", "own-ema"),
        **overrides,
    }
    return BenchConfig(**settings)


def run_interference(args: argparse.Namespace) -> int:
    from rich.console import Console

    from congrad.tools.interference.benchmark import BenchConfig, run_benchmark
    from congrad.tools.interference.report import write_report

    overrides = {
        key: value
        for key, value in (
            ("seeds", args.seeds),
            ("ranks", args.ranks),
            ("gammas", args.gammas),
            ("warmup_learning_rates", args.warmup_lrs),
            ("warmup_learning_rate", args.warmup_lr),
            ("regimes", args.regimes),
        )
        if value is not None
    }
    try:
        config = quick_config(**overrides) if args.quick else BenchConfig(**overrides)
    except ValueError as error:
        print(f"congrad: bench interference: {error}", file=sys.stderr)
        return 2
    console = Console(stderr=True)
    started = time.perf_counter()
    results = run_benchmark(
        config,
        log=lambda message: console.print(f"[{time.perf_counter() - started:5.0f} s] {message}"),
    )
    tables = write_report(results, args.output)
    print(tables)
    print(f"wall time {results['seconds']:.0f} s; results in {args.output}")
    return 0
