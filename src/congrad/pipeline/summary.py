"""The end-of-run table: per round and language, the funnel and the training loss.

In: a run folder (config and stage artifacts). Out: :class:`RunSummary` rows with
prompts, responses, unparsed judgments, ties, pairs, kept pairs, mean reward margin of
the kept pairs and mean train loss; rendered as a rich table or JSON.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from congrad.config.run import RunConfig
from congrad.data.artifacts import read_jsonl, read_manifest, round_dir
from congrad.pipeline.stage_graph import STAGES, StageGraph

COLUMNS = ("prompts", "responses", "unparsed", "ties", "pairs", "kept", "margin", "loss")


@dataclass(frozen=True)
class SummaryRow:
    round: int
    lang: str
    prompts: int
    responses: int
    unparsed: int
    ties: int
    pairs: int
    kept: int
    margin: float | None
    """Mean judge margin ``s_c - s_r`` of the kept pairs."""
    loss: float | None
    """Mean LP-DPO loss of the round's minibatches of this language."""


@dataclass(frozen=True)
class RunSummary:
    rows: list[SummaryRow]

    def to_dict(self) -> dict[str, Any]:
        return {"rows": [asdict(r) for r in self.rows]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n"

    def table(self) -> Any:
        from rich.table import Table

        table = Table(title="congrad run summary")
        for name in ("round", "lang", *COLUMNS):
            table.add_column(name, justify="right")
        for row in self.rows:
            values = asdict(row)
            cells = []
            for name in ("round", "lang", *COLUMNS):
                value = values[name]
                cells.append(
                    "-"
                    if value is None
                    else f"{value:.3f}"
                    if isinstance(value, float)
                    else str(value)
                )
            table.add_row(*cells)
        return table


def _count(rows: list[dict[str, Any]], lang: str, **match: Any) -> int:
    return sum(
        1 for r in rows if r["lang"] == lang and all(r.get(k) == v for k, v in match.items())
    )


def _rows(folder: Path, name: str, current: bool) -> list[dict[str, Any]]:
    path = folder / name
    return read_jsonl(path) if current and path.exists() else []


def build_summary(config: RunConfig) -> RunSummary:
    """Collect the table from whatever stages of each round have completed."""
    graph = StageGraph(config)
    rows = []
    for round_index in range(1, config.rounds + 1):
        folder = round_dir(config.output_dir, round_index)
        if read_manifest(folder, "prompts") is None:
            break

        # A stage whose inputs changed since it ran (or that failed on a rerun) is stale.
        complete = {stage: graph.is_complete(stage, round_index) for stage in STAGES}

        prompts = _rows(folder, "prompts.jsonl", complete["prompts"])
        completions = _rows(folder, "completions.jsonl", complete["generate"])
        judgments = _rows(folder, "judgments.jsonl", complete["judge"])
        dropped = _rows(folder, "dropped.jsonl", complete["pairs"])
        pairs = {r["pair_id"]: r for r in _rows(folder, "pairs.jsonl", complete["pairs"])}
        selection = _rows(folder, "selection.jsonl", complete["filter"])
        kept = [pairs[s["pair_id"]] for s in selection if s["kept"]]
        train = read_manifest(folder, "train") if complete["train"] else None
        losses = (train or {}).get("loss_by_lang", {})
        for lang in sorted({p["lang"] for p in prompts}):
            margins = [
                p["chosen_score"] - p["rejected_score"]
                for p in kept
                if p["lang"] == lang and p["chosen_score"] is not None
            ]
            rows.append(
                SummaryRow(
                    round=round_index,
                    lang=lang,
                    prompts=_count(prompts, lang),
                    responses=_count(completions, lang),
                    unparsed=_count(judgments, lang, score=None),
                    ties=_count(dropped, lang, reason="tie"),
                    pairs=_count(list(pairs.values()), lang),
                    kept=sum(1 for p in kept if p["lang"] == lang),
                    margin=sum(margins) / len(margins) if margins else None,
                    loss=losses.get(lang),
                )
            )
    return RunSummary(rows)
