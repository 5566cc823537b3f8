"""Tables and plots of an interference benchmark's results, written atomically.

In: the dict of :func:`congrad.tools.interference.benchmark.run_benchmark` (or ``results.json``).
Out: in the output folder ``results.json``, ``separation.csv`` and ``accuracy.csv`` (every
per-seed, per-language row), ``tables.md`` (the summary tables) and PNG figures; and the
Markdown tables as a string for the terminal.

Aggregation: a seed's value is the mean over languages (or one language's value); the
table shows the mean over seeds with a 95% percentile-bootstrap interval over seeds
(:func:`congrad.tools.interference.metrics.mean_interval`). Differences between strategies
are paired
by seed (same data, same warm-up model), then bootstrapped the same way.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from congrad.reporting.plots import _figure, _save
from congrad.tools.interference.data import EVAL_KINDS
from congrad.tools.interference.metrics import mean_interval
from congrad.util.atomic import write_text_atomic

Row = Mapping[str, Any]
PRIMARY = "shared_vs_own"
# congrad.tools.interference.benchmark.OWN_EMA (not imported: that module loads torch)
OWN = "own-ema"


def per_seed(rows: Iterable[Row], value: str, where: Callable[[Row], bool]) -> dict[int, float]:
    """``seed -> mean of value`` over the matching rows (languages) of each seed."""
    groups: dict[int, list[float]] = defaultdict(list)
    for row in rows:
        if where(row) and row[value] is not None:
            groups[int(row["seed"])].append(float(row[value]))
    return {seed: sum(values) / len(values) for seed, values in sorted(groups.items())}


def where(**wanted: Any) -> Callable[[Row], bool]:
    """A predicate: the row's fields equal ``wanted`` (a ``None`` value matches any)."""
    return lambda row: all(v is None or row[k] == v for k, v in wanted.items())


def summarize(values: Mapping[int, float], label: str) -> tuple[float, float, float] | None:
    """Mean over seeds and its interval (None without values)."""
    if not values:
        return None
    return mean_interval(list(values.values()), seed=0, label=label)


def paired(a: Mapping[int, float], b: Mapping[int, float]) -> dict[int, float]:
    """``a - b`` for the seeds both have."""
    return {seed: a[seed] - b[seed] for seed in a if seed in b}


def _cell(summary: tuple[float, float, float] | None, digits: int = 3) -> str:
    if summary is None:
        return "n/a"
    mean, low, high = summary
    return f"{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join([*lines, *("| " + " | ".join(row) + " |" for row in rows)])


def _headline(config: Mapping[str, Any]) -> Callable[[Row], bool]:
    return where(
        rank=config["rank"], gamma=config["gamma"], warmup_lr=config["warmup_learning_rate"]
    )


def _order(rows: Iterable[Row], key: str) -> list[Any]:
    return list(dict.fromkeys(row[key] for row in rows))


def summary_tables(results: Mapping[str, Any]) -> str:
    """The Markdown tables of a run (see the module docstring)."""
    config = results["config"]
    headline = _headline(config)
    separation, accuracy = results["separation"], results["accuracy"]
    seeds = len(_order(accuracy or separation, "seed"))
    parts = [
        f"Mean over {seeds} seed(s) [95% bootstrap interval over seeds]; EMA rank "
        f"{config['rank']}, gamma {config['gamma']}, warm-up learning rate "
        f"{config['warmup_learning_rate']:g}, training learning rate {config['learning_rate']:g}, "
        f"keep fraction {config['keep_fraction']}, planted fraction "
        f"{config['spec']['planted_fraction']}."
    ]
    for regime in _order(separation, "regime"):
        in_regime = [r for r in separation if r["regime"] == regime and headline(r)]
        rows = []
        for strategy in _order(in_regime, "strategy"):
            pick = where(strategy=strategy)
            rows.append(
                [
                    strategy,
                    _cell(summarize(per_seed(in_regime, "auc", pick), f"auc:{regime}:{strategy}")),
                    _cell(
                        summarize(per_seed(in_regime, "precision", pick), f"p:{regime}:{strategy}")
                    ),
                ]
            )
        parts.append(
            f"### Separation of planted pairs: {regime}\n\n"
            + _table(["strategy", "AUC (clean above planted)", "precision of kept set"], rows)
        )
    for regime in _order(accuracy, "regime"):
        in_regime = [r for r in accuracy if r["regime"] == regime and headline(r)]
        strategies = _order(in_regime, "strategy")
        langs = _order(in_regime, "lang")
        rows = []
        for strategy in strategies:
            cells = [strategy]
            for kind in EVAL_KINDS:
                values = per_seed(in_regime, kind, where(strategy=strategy))
                cells.append(_cell(summarize(values, f"{regime}:{strategy}:{kind}")))
            kept = per_seed(in_regime, "kept_planted", where(strategy=strategy))
            cells.append(f"{sum(kept.values()) / max(len(kept), 1):.1f}")
            rows.append(cells)
        parts.append(
            f"### Held-out preference accuracy after LP-DPO, mean over languages: {regime}\n\n"
            + _table(["strategy", *EVAL_KINDS, "planted kept / language"], rows)
        )
        rows = []
        for strategy in strategies:
            cells = [strategy]
            for lang in langs:
                values = per_seed(
                    in_regime,
                    PRIMARY,
                    where(strategy=strategy, lang=lang),
                )
                cells.append(_cell(summarize(values, f"{regime}:{strategy}:{lang}"), 2))
            rows.append(cells)
        parts.append(
            f"### {PRIMARY} accuracy per language: {regime}\n\n"
            + _table(["strategy", *langs], rows)
        )
        rows = []
        for base in ("rand", "full", "max-reward", OWN):
            if base not in strategies or "max-congrad" not in strategies:
                continue
            cells = [f"max-congrad - {base}"]
            for lang in [*langs, None]:
                diff = paired(
                    per_seed(in_regime, PRIMARY, where(strategy="max-congrad", lang=lang)),
                    per_seed(in_regime, PRIMARY, where(strategy=base, lang=lang)),
                )
                cells.append(_cell(summarize(diff, f"diff:{regime}:{base}:{lang}"), 2))
            rows.append(cells)
        if rows:
            parts.append(
                f"### Paired difference in {PRIMARY} accuracy: {regime}\n\n"
                + _table(["comparison", *langs, "mean"], rows)
            )
    parts.append(sweep_table(results))
    return "\n\n".join(parts) + "\n"


AXES = (
    ("rank", "rank", "EMA rank"),
    ("gamma", "gamma", "EMA gamma"),
    ("warmup_lr", "warmup_learning_rate", "warm-up learning rate"),
)
"""Swept axes: (row field, config field, label)."""


def sweep_rows(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per setting (rank, gamma, warm-up lr) of the swept regime: AUC, precision
    and accuracies of max- and min-congrad."""
    config = results["config"]
    separation, accuracy = results["separation"], results["accuracy"]
    if not separation:
        return []
    regime = separation[0]["regime"]
    settings = sorted(
        {(r["rank"], r["gamma"], r["warmup_lr"]) for r in separation if r["regime"] == regime}
    )
    headline = tuple(config[field] for _, field, _ in AXES)
    out = []
    for rank, gamma, lr in settings:
        label = f"{rank}:{gamma}:{lr}"
        at = {"regime": regime, "rank": rank, "gamma": gamma, "warmup_lr": lr}
        congrad = where(**at, strategy="max-congrad")
        row: dict[str, Any] = {
            "rank": rank,
            "gamma": gamma,
            "warmup_lr": lr,
            "headline": (rank, gamma, lr) == headline,
            "auc": summarize(per_seed(separation, "auc", congrad), f"sweep:auc:{label}"),
            "precision": summarize(per_seed(separation, "precision", congrad), f"sweep:p:{label}"),
        }
        for strategy in ("max-congrad", "min-congrad"):
            for kind in (PRIMARY, "shared_vs_neutral"):
                row[f"{strategy}:{kind}"] = summarize(
                    per_seed(accuracy, kind, where(**at, strategy=strategy)),
                    f"sweep:{strategy}:{kind}:{label}",
                )
        out.append(row)
    return out


def sweep_table(results: Mapping[str, Any]) -> str:
    rows = sweep_rows(results)
    if not rows:
        return ""
    regime = results["separation"][0]["regime"]
    header = [
        "rank",
        "gamma",
        "warm-up lr",
        "AUC max-congrad",
        "precision",
        f"max-congrad {PRIMARY}",
        f"min-congrad {PRIMARY}",
        "max-congrad shared_vs_neutral",
    ]
    body = [
        [
            f"{row['rank']}" + (" *" if row["headline"] else ""),
            f"{row['gamma']}",
            f"{row['warmup_lr']:g}",
            _cell(row["auc"]),
            _cell(row["precision"]),
            _cell(row[f"max-congrad:{PRIMARY}"]),
            _cell(row[f"min-congrad:{PRIMARY}"]),
            _cell(row["max-congrad:shared_vs_neutral"]),
        ]
        for row in rows
    ]
    return (
        f"### EMA rank, gamma and warm-up learning rate: {regime} (* headline setting)\n\n"
        + _table(header, body)
    )


def _csv(rows: Sequence[Row]) -> str:
    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return buffer.getvalue()


def plot_separation(results: Mapping[str, Any], path: Path) -> Path:
    """AUC per strategy and regime at the headline EMA setting, with intervals."""
    figure, axes = _figure(width=8.0)
    headline = _headline(results["config"])
    rows = [r for r in results["separation"] if headline(r)]
    regimes, strategies = _order(rows, "regime"), _order(rows, "strategy")
    width = 0.8 / max(len(regimes), 1)
    for column, regime in enumerate(regimes):
        means, errors = _bars(
            rows, "auc", [where(strategy=strategy, regime=regime) for strategy in strategies]
        )
        positions = [i - 0.4 + width * (column + 0.5) for i in range(len(strategies))]
        axes.bar(positions, means, width=width, yerr=errors, capsize=3, label=regime)
    axes.axhline(0.5, color="grey", linestyle="--", linewidth=1)
    axes.set_xticks(range(len(strategies)), strategies)
    axes.set_ylim(0, 1)
    axes.set_ylabel("AUC: clean pairs ranked above planted")
    axes.legend(frameon=False)
    return _save(figure, path, "Separation of planted conflicting pairs")


def _bars(
    rows: Sequence[Row], metric: str, selections: Sequence[Callable[[Row], bool]]
) -> tuple[list[float], list[list[float]]]:
    """Per selection: the mean of ``metric`` over seeds and its interval as error-bar
    lengths ``[below, above]`` (NaN where nothing was selected)."""
    means: list[float] = []
    errors: list[list[float]] = [[], []]
    for selection in selections:
        found = summarize(per_seed(rows, metric, selection), "plot")
        mean, low, high = found or (float("nan"),) * 3
        means.append(mean)
        errors[0].append(mean - low)
        errors[1].append(high - mean)
    return means, errors


def plot_language_accuracy(results: Mapping[str, Any], regime: str, path: Path) -> Path:
    """Per-language held-out accuracy (primary kind) per strategy, with intervals."""
    headline = _headline(results["config"])
    rows = [r for r in results["accuracy"] if r["regime"] == regime and headline(r)]
    langs, strategies = _order(rows, "lang"), _order(rows, "strategy")
    figure, axes = _figure(width=max(8.0, 1.2 * len(langs) * max(len(strategies), 1) / 3))
    width = 0.8 / max(len(strategies), 1)
    for column, strategy in enumerate(strategies):
        means, errors = _bars(
            rows, PRIMARY, [where(strategy=strategy, lang=lang) for lang in langs]
        )
        positions = [i - 0.4 + width * (column + 0.5) for i in range(len(langs))]
        axes.bar(positions, means, width=width, yerr=errors, capsize=2, label=strategy)
    axes.axhline(0.5, color="grey", linestyle="--", linewidth=1)
    axes.set_xticks(range(len(langs)), langs)
    axes.set_ylim(0, 1)
    axes.set_ylabel(f"held-out accuracy ({PRIMARY})")
    axes.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    return _save(figure, path, f"Accuracy per language after LP-DPO ({regime})")


def plot_sweep(results: Mapping[str, Any], path: Path) -> Path:
    """AUC and max-/min-congrad accuracy against each swept axis, the others at their
    headline values (one panel per axis)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    config = results["config"]
    rows = sweep_rows(results)
    figure = Figure(figsize=(13.0, 4.0))
    FigureCanvasAgg(figure)
    panels = figure.subplots(1, len(AXES), sharey=True)
    series = [
        ("auc", "AUC max-congrad"),
        (f"max-congrad:{PRIMARY}", f"max-congrad {PRIMARY}"),
        (f"min-congrad:{PRIMARY}", f"min-congrad {PRIMARY}"),
    ]
    for axes, (key, _, name) in zip(panels, AXES, strict=True):
        others = [(k, f) for k, f, _ in AXES if k != key]
        chosen = sorted(
            (r for r in rows if all(r[k] == config[f] for k, f in others)), key=lambda r: r[key]
        )
        for value, label in series:
            points = [(r[key], r[value]) for r in chosen if r[value] is not None]
            if not points:
                continue
            xs = [x for x, _ in points]
            means = [s[0] for _, s in points]
            errors = [[s[0] - s[1] for _, s in points], [s[2] - s[0] for _, s in points]]
            axes.errorbar(xs, means, yerr=errors, marker="o", capsize=3, label=label)
        if key != "gamma":
            axes.set_xscale("log", base=2 if key == "rank" else 10)
            axes.minorticks_off()
            values = [r[key] for r in chosen]
            axes.set_xticks(values, [f"{v:g}" for v in values])
        axes.axhline(0.5, color="grey", linestyle="--", linewidth=1)
        fixed = ", ".join(f"{k} {config[f]:g}" for k, f in others)
        axes.set_xlabel(f"{name} ({fixed})")
        axes.set_ylim(0, 1)
    panels[0].legend(frameon=False, fontsize=8)
    return _save(figure, path, "EMA rank, gamma and warm-up learning rate")


def write_report(results: Mapping[str, Any], output: str | os.PathLike[str]) -> str:
    """Write every artifact to ``output`` (see the module docstring); return the tables."""
    folder = Path(output)
    folder.mkdir(parents=True, exist_ok=True)
    tables = summary_tables(results)
    write_text_atomic(folder / "results.json", json.dumps(results, indent=1) + "\n")
    write_text_atomic(folder / "separation.csv", _csv(results["separation"]))
    write_text_atomic(folder / "accuracy.csv", _csv(results["accuracy"]))
    write_text_atomic(folder / "tables.md", tables)
    plot_separation(results, folder / "separation_auc.png")
    for regime in _order(results["accuracy"], "regime"):
        plot_language_accuracy(results, regime, folder / f"accuracy_{regime}.png")
    plot_sweep(results, folder / "ema_sweep.png")
    return tables
