"""The comparison report, rebuilt from a run's or a comparison's artifacts alone.

In: a comparison folder (``compare.json`` + ``runs/<name>/``) or a single run folder.
Out: ``<folder>/report/``: ``report.md``, one CSV per table and PNG plots. Nothing is
read but files: win rates are recomputed from the verdict files (``eval_verdicts.jsonl``,
through :func:`congrad.evaluation.verdict_summary.summarise_verdicts`), accuracies from
``eval_mcq.jsonl`` and stage times from the manifests, so ``congrad report`` equals what
``compare`` wrote.

Tables, after the paper's: average win rate over the seed model by strategy and round
(Table 1); by language at the last round (Table 9); unseen languages (Table 4);
multiple-choice accuracy by round and by language (Tables 2-3); the keep-fraction sweep
(Figure 2); seconds per stage and round, with each strategy's total as a ratio to ``full``
(Table 7); and the judge's unparsed and tie rates. Win rates are percentages with the 95%
bootstrap interval of a single run; a strategy with several runs (``rand`` seeds) shows the
mean and the standard deviation across them. ``mono`` takes each language's win rate from
that language's own run.
"""

from __future__ import annotations

import csv
import io
import json
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from congrad.config.run import RunConfig, load_config
from congrad.data.artifacts import read_jsonl, read_manifest
from congrad.pipeline.stage_graph import STAGES
from congrad.util.atomic import write_text_atomic

TIMED_STAGES = ("generate", "judge", "pairs", "filter", "train")


@dataclass
class RunResults:
    """What one run folder holds, by round."""

    name: str
    strategy: str
    keep_fraction: float | None
    lang: str | None
    config: RunConfig
    win_rates: dict[int, dict[str, Any]] = field(default_factory=dict)  # summarise_verdicts
    accuracy: dict[int, dict[str, float]] = field(default_factory=dict)  # lang -> accuracy
    seconds: dict[int, dict[str, float]] = field(default_factory=dict)  # stage -> seconds
    verdict_counts: dict[str, int] = field(default_factory=dict)


def load_run(
    folder: Path, name: str, strategy: str, keep: float | None, lang: str | None
) -> RunResults:
    from congrad.evaluation.mcq import accuracy_from_rows
    from congrad.evaluation.verdict_summary import summarise_verdicts

    config = load_config(folder / "config.yaml")
    results = RunResults(name, strategy, keep, lang, config)
    counts = {"verdicts": 0, "unparsed": 0, "ties": 0}
    for t in range(config.rounds + 1):
        round_folder = folder / f"round_{t}"
        if t and read_manifest(round_folder, "verdicts") is not None:
            rows = read_jsonl(round_folder / "eval_verdicts.jsonl")
            results.win_rates[t] = summarise_verdicts(config, rows)
            counts["verdicts"] += len(rows)
            counts["unparsed"] += sum(row["winner"] is None for row in rows)
            counts["ties"] += sum(row["winner"] == "tie" for row in rows)
        if read_manifest(round_folder, "mcq") is not None:
            rows = read_jsonl(round_folder / "eval_mcq.jsonl")
            results.accuracy[t] = {
                lang: row["accuracy"] for lang, row in accuracy_from_rows(rows).items()
            }
        seconds = {}
        for stage in STAGES:
            manifest = read_manifest(round_folder, stage)
            if manifest is not None:
                seconds[stage] = float(manifest.get("seconds", 0.0))
        if seconds:
            results.seconds[t] = seconds
    results.verdict_counts = counts
    return results


def load_results(folder: Path) -> tuple[list[RunResults], RunConfig]:
    """Every run of a comparison folder (or the one run of a run folder), and the base config."""
    plan_path = folder / "compare.json"
    if plan_path.exists():
        plan = json.loads(plan_path.read_text(encoding="utf-8"))
        base = RunConfig.model_validate(plan["base_config"])
        runs = []
        for run in plan["runs"]:
            run_folder = folder / "runs" / run["name"]
            if (run_folder / "config.yaml").exists():
                runs.append(
                    load_run(
                        run_folder, run["name"], run["strategy"], run["keep_fraction"], run["lang"]
                    )
                )
        return runs, base
    if not (folder / "config.yaml").exists():
        raise FileNotFoundError(
            f"{folder} is neither a run folder (config.yaml) nor a comparison folder (compare.json)"
        )
    config = load_config(folder / "config.yaml")
    strategy = str(config.filter.strategy)
    if config.train.schedule != "mixed":
        strategy = config.train.schedule
    return [load_run(folder, folder.name, strategy, None, None)], config


@dataclass(frozen=True)
class Cell:
    """A value over one or more runs: the mean, and the interval of a single run or the
    standard deviation of several."""

    values: tuple[float, ...]
    low: float | None = None
    high: float | None = None

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.values) if self.values else None

    def text(self, percent: bool = True) -> str:
        if not self.values:
            return "-"
        scale = 100.0 if percent else 1.0
        mean = f"{self.mean * scale:.1f}"  # type: ignore[operator]
        if len(self.values) > 1:
            spread = statistics.stdev(self.values) * scale
            return f"{mean} ± {spread:.1f} (n={len(self.values)})"
        if self.low is not None and self.high is not None:
            return f"{mean} [{self.low * scale:.1f}, {self.high * scale:.1f}]"
        return mean


def _win_cell(runs: Sequence[RunResults], t: int, key: str) -> Cell:
    """``key``: a language, ``average`` or ``average_unseen``; mono: per-language runs."""
    if runs and runs[0].strategy == "mono":
        per_lang = {r.lang: r.win_rates.get(t, {}).get("languages", {}).get(r.lang) for r in runs}
        if key.startswith("average"):
            values = [v["win_rate"] for v in per_lang.values() if v and v["win_rate"] is not None]
            return Cell((statistics.fmean(values),) if values and key == "average" else ())
        return _one(per_lang.get(key))
    cells: list[Cell] = []
    for run in runs:
        summary = run.win_rates.get(t)
        if summary is None:
            continue
        entry = summary[key] if key.startswith("average") else summary["languages"].get(key)
        cells.append(_one(entry))
    if len(cells) == 1:
        return cells[0]
    return Cell(tuple(v for c in cells for v in c.values))


def _one(entry: dict[str, Any] | None) -> Cell:
    if not entry or entry.get("win_rate") is None:
        return Cell(())
    return Cell((entry["win_rate"],), entry.get("low"), entry.get("high"))


def _accuracy_cell(runs: Sequence[RunResults], t: int, lang: str | None) -> Cell:
    """Accuracy in ``lang`` (None: the mean over languages) of round ``t``, per run."""
    if runs and runs[0].strategy == "mono":  # each run answers for its own language
        per = {r.lang: r.accuracy.get(t, {}).get(r.lang or "") for r in runs}
        found = [v for v in per.values() if v is not None]
        if lang is None:
            return Cell((statistics.fmean(found),) if found else ())
        value = per.get(lang)
        return Cell(() if value is None else (value,))
    values: list[float] = []
    for run in runs:
        by_lang = run.accuracy.get(t, {})
        if lang is None and by_lang:
            values.append(statistics.fmean(by_lang.values()))
        elif lang is not None and lang in by_lang:
            values.append(by_lang[lang])
    return Cell(tuple(values))


class _Tables:
    def __init__(self) -> None:
        self.markdown: list[str] = []
        self.csv: dict[str, str] = {}

    def add(self, title: str, stem: str, header: list[str], rows: list[list[str]]) -> None:
        self.markdown += [f"## {title}", ""]
        if not rows:
            self.markdown += ["(no data yet)", ""]
            return
        self.markdown.append("| " + " | ".join(header) + " |")
        self.markdown.append("|" + "---|" * len(header))
        self.markdown += ["| " + " | ".join(row) + " |" for row in rows]
        self.markdown += ["", f"CSV: `{stem}.csv`", ""]
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
        self.csv[stem] = buffer.getvalue()


def build_report(folder: str | Path) -> Path:
    """Write ``<folder>/report/`` from the artifacts; returns the report folder."""
    from congrad.reporting import plots

    folder = Path(folder)
    runs, base = load_results(folder)
    out = folder / "report"
    out.mkdir(parents=True, exist_ok=True)
    for stale in [*out.glob("*.png"), *out.glob("*.csv")]:  # report/ is ours: rebuilt whole
        stale.unlink()
    keeps = sorted({r.keep_fraction for r in runs if r.keep_fraction is not None})
    primary = (
        base.filter.keep_fraction if base.filter.keep_fraction in keeps or not keeps else keeps[0]
    )
    groups: dict[str, list[RunResults]] = {}
    for run in runs:
        if run.keep_fraction is None or run.keep_fraction == primary:
            groups.setdefault(run.strategy, []).append(run)
    rounds = list(range(1, base.rounds + 1))
    last = max((t for g in groups.values() for r in g for t in r.win_rates), default=None)
    seen = list(base.prompts.languages)
    unseen = [lg for lg in base.evaluate.eval_languages(seen) if lg not in seen]
    if last is not None:
        languages_found = {
            lg
            for g in groups.values()
            for r in g
            for lg in r.win_rates.get(last, {}).get("languages", {})
        }
        unseen = [lg for lg in unseen if lg in languages_found]
    tables = _Tables()
    tables.markdown += [
        f"# congrad report: {folder}",
        "",
        f"Seed model `{base.model.name_or_path}`, judge "
        f"`{base.evaluate.judge.backend}`"
        f"{' ' + base.evaluate.judge.model if base.evaluate.judge.model else ''}"
        f", {base.rounds} rounds, keep fraction {primary}. Win rates: % of "
        "comparisons won against the seed model (ties half), both answer orders, "
        "[95% bootstrap interval] or ± standard deviation over runs.",
        "",
    ]

    tables.add(
        "Average win rate over the seed model by round (trained languages; paper Table 1)",
        "table1_win_rate_by_round",
        ["strategy", *map(str, rounds)],
        [[s, *(_win_cell(g, t, "average").text() for t in rounds)] for s, g in groups.items()],
    )
    series = {
        s: [
            (t, c.mean, c.low, c.high)
            for t in rounds
            if (c := _win_cell(g, t, "average")).mean is not None
        ]
        for s, g in groups.items()
    }
    plots.plot_win_rate_by_round(
        series, out / "win_rate_by_round.png", title="Average win rate over the seed model"
    )
    if last is not None:
        tables.add(
            f"Win rate by language, round {last} (paper Table 9)",
            "table9_win_rate_by_language",
            ["strategy", *seen, "average"],
            [
                [s, *(_win_cell(g, last, lg).text() for lg in [*seen, "average"])]
                for s, g in groups.items()
            ],
        )
        plots.plot_language_bars(
            {s: {lg: _win_cell(g, last, lg).mean for lg in seen} for s, g in groups.items()},
            out / "win_rate_by_language.png",
            title=f"Win rate by language, round {last}",
        )
        if unseen:
            tables.add(
                f"Unseen languages, round {last} (paper Table 4)",
                "table4_unseen",
                ["strategy", *unseen, "average"],
                [
                    [s, *(_win_cell(g, last, lg).text() for lg in [*unseen, "average_unseen"])]
                    for s, g in groups.items()
                    if s != "mono"
                ],
            )
    _accuracy_tables(tables, groups, base, out, last)
    _sweep(tables, runs, keeps, last, out)
    _stage_table(tables, groups, out)
    tables.add(
        "Judge",
        "judge",
        ["strategy", "verdicts", "unparsed %", "ties %"],
        [
            [
                s,
                str(n := sum(r.verdict_counts["verdicts"] for r in g)),
                _share(sum(r.verdict_counts["unparsed"] for r in g), n),
                _share(sum(r.verdict_counts["ties"] for r in g), n),
            ]
            for s, g in groups.items()
        ],
    )
    for stem, text in tables.csv.items():
        write_text_atomic(out / f"{stem}.csv", text)
    pictures = sorted(p.name for p in out.glob("*.png"))
    tables.markdown += ["## Plots", "", *(f"![{p}]({p})" for p in pictures), ""]
    write_text_atomic(out / "report.md", "\n".join(tables.markdown))
    return out


def _share(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}" if whole else "-"


def _accuracy_tables(
    tables: _Tables,
    groups: dict[str, list[RunResults]],
    base: RunConfig,
    out: Path,
    last: int | None,
) -> None:
    from congrad.reporting import plots

    if not any(r.accuracy for g in groups.values() for r in g):
        tables.markdown += [
            "## Multiple-choice accuracy (alignment tax)",
            "",
            "Not measured: set `evaluate.mcq.files`.",
            "",
        ]
        return
    rounds = list(range(base.rounds + 1))
    tables.add(
        "Multiple-choice accuracy by round, mean over languages (round 0: the seed "
        "model; paper Tables 2-3)",
        "table2_mcq_by_round",
        ["strategy", *map(str, rounds)],
        [[s, *(_accuracy_cell(g, t, None).text() for t in rounds)] for s, g in groups.items()],
    )
    plots.plot_accuracy_by_round(
        {
            s: [(t, c.mean) for t in rounds if (c := _accuracy_cell(g, t, None)).mean is not None]
            for s, g in groups.items()
        },
        out / "mcq_accuracy_by_round.png",
        title="Multiple-choice accuracy",
    )
    final = max((t for g in groups.values() for r in g for t in r.accuracy), default=0)
    langs = sorted({lg for g in groups.values() for r in g for lg in r.accuracy.get(final, {})})
    tables.add(
        f"Multiple-choice accuracy by language, round {final}",
        "table3_mcq_by_language",
        ["strategy", *langs],
        [[s, *(_accuracy_cell(g, final, lg).text() for lg in langs)] for s, g in groups.items()],
    )


def _sweep(
    tables: _Tables, runs: list[RunResults], keeps: list[float], last: int | None, out: Path
) -> None:
    from congrad.reporting import plots

    if len(keeps) < 2 or last is None:
        return
    swept: dict[str, dict[float, list[RunResults]]] = {}
    for run in runs:
        if run.keep_fraction is not None:
            swept.setdefault(run.strategy, {}).setdefault(run.keep_fraction, []).append(run)
    tables.add(
        f"Keep-fraction sweep, average win rate at round {last} (paper Figure 2)",
        "figure2_keep_sweep",
        ["strategy", *map(str, keeps)],
        [
            [s, *(_win_cell(by.get(k, []), last, "average").text() for k in keeps)]
            for s, by in swept.items()
        ],
    )
    plots.plot_keep_sweep(
        {
            s: [
                (k, c.mean)
                for k in keeps
                if (c := _win_cell(by.get(k, []), last, "average")).mean is not None
            ]
            for s, by in swept.items()
        },
        out / "keep_sweep.png",
        title=f"Win rate by keep fraction, round {last}",
    )


def _stage_table(tables: _Tables, groups: dict[str, list[RunResults]], out: Path) -> None:
    from congrad.reporting import plots

    means: dict[str, dict[str, float]] = {}
    for strategy, group in groups.items():
        per_stage: dict[str, list[float]] = {}
        for run in group:
            for seconds in run.seconds.values():
                for stage, value in seconds.items():
                    if stage in TIMED_STAGES:  # prompts takes no time worth a column
                        per_stage.setdefault(stage, []).append(value)
        if per_stage:
            means[strategy] = {s: statistics.fmean(v) for s, v in per_stage.items()}
    reference = sum(means.get("full", {}).values())
    rows = []
    for strategy, by_stage in means.items():
        total = sum(by_stage.values())
        ratio = f"{total / reference:.2f}x" if reference else "-"
        rows.append(
            [
                strategy,
                *(f"{by_stage.get(s, 0.0):.1f}" for s in TIMED_STAGES),
                f"{total:.1f}",
                ratio,
            ]
        )
    tables.add(
        "Seconds per round by stage, mean over rounds (paper Table 7; CONGRAD's "
        "scoring pass is in filter)",
        "table7_stage_seconds",
        ["strategy", *TIMED_STAGES, "total", "vs full"],
        rows,
    )
    if means:
        plots.plot_stage_seconds(
            means, out / "stage_seconds.png", title="Seconds per round by stage"
        )


def evaluation_table(output_dir: str | Path, rounds: Sequence[int] | None = None) -> Any:
    """A rich table of one run's evaluation: win rate per language and round (with the
    unparsed verdict count), and multiple-choice accuracy where measured."""
    from rich.table import Table

    runs, _ = load_results(Path(output_dir))
    run = runs[0]
    shown = [t for t in (rounds or sorted(run.win_rates)) if t in run.win_rates]
    table = Table(title=f"Win rate over the seed model: {output_dir}")
    table.add_column("language")
    for t in shown:
        table.add_column(f"round {t} win %", justify="right")
        table.add_column("unparsed", justify="right")
    mcq_rounds = sorted(run.accuracy)
    for t in mcq_rounds:
        table.add_column(f"MC acc. r{t}", justify="right")
    languages = list(dict.fromkeys(lg for t in shown for lg in run.win_rates[t]["languages"]))
    for key in [*languages, "average", "average_unseen"]:  # averages: trained, unseen
        cells = []
        for t in shown:
            summary = run.win_rates[t]
            entry = summary["languages"].get(key) if key in languages else summary.get(key)
            cells += [_one(entry).text(), str(entry["unparsed"]) if entry else "-"]
        for t in mcq_rounds:
            by_lang = run.accuracy[t]
            value = (
                by_lang.get(key)
                if key in languages
                else (statistics.fmean(by_lang.values()) if key == "average" and by_lang else None)
            )
            cells.append("-" if value is None else f"{100 * value:.1f}")
        if any(cell != "-" for cell in cells):
            table.add_row(key, *cells)
    return table
