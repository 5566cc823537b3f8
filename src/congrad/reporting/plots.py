"""Report figures: win rates by round and language, keep-fraction sweeps, accuracy, stage time.

In: plain numbers keyed by strategy (no records, no files), e.g. from
:mod:`congrad.evaluation.winrate` results or run summaries. Out: one PNG per call, written
atomically (:func:`congrad.util.atomic.write_atomic`), and its path.

matplotlib is imported inside the functions and draws on the non-interactive Agg canvas,
so ``import congrad.reporting.plots`` stays light and a caller's pyplot backend is never changed.
An empty input gives a figure that says "no data" instead of an error, so a report of a
run that has not evaluated anything yet still renders.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from congrad.util.atomic import write_atomic

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

DPI = 120


def _figure(width: float = 7.0, height: float = 4.0) -> tuple[Figure, Axes]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # A bare Figure on an Agg canvas rather than pyplot with matplotlib.use("Agg"): the same
    # renderer, but no global figure registry to leak and no caller's backend switched.
    figure = Figure(figsize=(width, height))
    FigureCanvasAgg(figure)
    return figure, figure.add_subplot()


def _no_data(axes: Axes) -> None:
    axes.text(0.5, 0.5, "no data", ha="center", va="center", transform=axes.transAxes)
    axes.set_xticks([])
    axes.set_yticks([])


def _percent_axis(axes: Axes, label: str) -> None:
    from matplotlib.ticker import PercentFormatter

    axes.set_ylim(0.0, 1.0)
    axes.yaxis.set_major_formatter(PercentFormatter(xmax=1.0))
    axes.set_ylabel(label)


def _integer_x(axes: Axes) -> None:
    from matplotlib.ticker import MaxNLocator

    axes.xaxis.set_major_locator(MaxNLocator(integer=True))


def _legend(axes: Axes) -> None:
    if axes.get_legend_handles_labels()[0]:
        axes.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)


def _save(figure: Figure, path: str | os.PathLike[str], title: str) -> Path:
    figure.suptitle(title)
    figure.tight_layout()
    target = Path(path)
    # The temporary name ends in .tmp, so the format is named rather than guessed.
    write_atomic(target, lambda temporary: figure.savefig(temporary, format="png", dpi=DPI))
    return target


def plot_win_rate_by_round(
    series: Mapping[str, Sequence[tuple[int, float, float | None, float | None]]],
    path: str | os.PathLike[str],
    *,
    title: str,
) -> Path:
    """One line per strategy of ``(round, win_rate, low, high)``, with interval bars.

    Rates lie in [0, 1] and are shown as percent; the dashed line is parity (50%).
    Points without an interval are drawn without bars.
    """
    figure, axes = _figure()
    if not any(series.values()):
        _no_data(axes)
        return _save(figure, path, title)
    for strategy, points in series.items():
        ordered = sorted(points)
        rounds = [point[0] for point in ordered]
        rates = [point[1] for point in ordered]
        below = [rate - low if low is not None else 0.0 for _, rate, low, _ in ordered]
        above = [high - rate if high is not None else 0.0 for _, rate, _, high in ordered]
        axes.errorbar(rounds, rates, yerr=[below, above], marker="o", capsize=3, label=strategy)
    axes.axhline(0.5, color="grey", linestyle="--", linewidth=1)
    _percent_axis(axes, "win rate over seed model")
    axes.set_xlabel("round")
    _integer_x(axes)
    _legend(axes)
    return _save(figure, path, title)


def plot_language_bars(
    table: Mapping[str, Mapping[str, float | None]],
    path: str | os.PathLike[str],
    *,
    title: str,
) -> Path:
    """Grouped bars: languages on x (first-seen order), one bar per strategy; None skipped."""
    languages = list(dict.fromkeys(lang for row in table.values() for lang in row))
    figure, axes = _figure(width=max(7.0, 1.5 + 0.3 * len(languages) * max(1, len(table))))
    if not languages:
        _no_data(axes)
        return _save(figure, path, title)
    width = 0.8 / len(table)
    for column, (strategy, rates) in enumerate(table.items()):
        present = [
            (i, rate) for i, lang in enumerate(languages) if (rate := rates.get(lang)) is not None
        ]
        positions = [i - 0.4 + width * (column + 0.5) for i, _ in present]
        axes.bar(positions, [rate for _, rate in present], width=width, label=strategy)
    axes.set_xticks(range(len(languages)), languages)
    axes.axhline(0.5, color="grey", linestyle="--", linewidth=1)
    _percent_axis(axes, "win rate over seed model")
    axes.set_xlabel("language")
    _legend(axes)
    return _save(figure, path, title)


def plot_keep_sweep(
    series: Mapping[str, Sequence[tuple[float, float]]],
    path: str | os.PathLike[str],
    *,
    title: str,
) -> Path:
    """One line per strategy of ``(keep_fraction, win_rate)``."""
    return _lines(
        series, path, title, x_label="keep fraction", y_label="win rate over seed model", even=0.5
    )


def plot_accuracy_by_round(
    series: Mapping[str, Sequence[tuple[int, float]]],
    path: str | os.PathLike[str],
    *,
    title: str,
) -> Path:
    """One line per strategy of ``(round, accuracy)``, accuracy in [0, 1] shown as percent."""
    return _lines(series, path, title, x_label="round", y_label="accuracy", integer_x=True)


def _lines(
    series: Mapping[str, Sequence[tuple[float, float]]],
    path: str | os.PathLike[str],
    title: str,
    *,
    x_label: str,
    y_label: str,
    even: float | None = None,
    integer_x: bool = False,
) -> Path:
    """One line per strategy of ``(x, share)``; a dashed line at ``even`` (a win rate's 50%)."""
    figure, axes = _figure()
    if not any(series.values()):
        _no_data(axes)
        return _save(figure, path, title)
    for strategy, points in series.items():
        xs, ys = zip(*sorted(points), strict=True) if points else ((), ())
        axes.plot(xs, ys, marker="o", label=strategy)
    if even is not None:
        axes.axhline(even, color="grey", linestyle="--", linewidth=1)
    _percent_axis(axes, y_label)
    axes.set_xlabel(x_label)
    if integer_x:
        _integer_x(axes)
    _legend(axes)
    return _save(figure, path, title)
    for strategy, points in series.items():
        rounds, accuracies = zip(*sorted(points), strict=True) if points else ((), ())
        axes.plot(rounds, accuracies, marker="o", label=strategy)
    _percent_axis(axes, "accuracy")
    axes.set_xlabel("round")
    _integer_x(axes)
    _legend(axes)
    return _save(figure, path, title)


def plot_stage_seconds(
    table: Mapping[str, Mapping[str, float]],
    path: str | os.PathLike[str],
    *,
    title: str,
) -> Path:
    """Stacked horizontal bars: one bar per strategy, one segment per stage (seconds)."""
    stages = list(dict.fromkeys(stage for row in table.values() for stage in row))
    figure, axes = _figure(height=max(3.0, 1.0 + 0.5 * len(table)))
    if not stages:
        _no_data(axes)
        return _save(figure, path, title)
    strategies = list(table)
    left = [0.0] * len(strategies)
    for stage in stages:
        seconds = [float(table[strategy].get(stage, 0.0)) for strategy in strategies]
        axes.barh(strategies, seconds, left=left, label=stage)
        left = [start + width for start, width in zip(left, seconds, strict=True)]
    axes.invert_yaxis()  # first strategy on top, as listed
    axes.set_xlabel("seconds")
    _legend(axes)
    return _save(figure, path, title)
