"""What a round's verdicts add up to: who won each comparison, and the win rates that
``winrates.json`` and the report show.

In: the run config and verdict rows (``eval_verdicts.jsonl``: ``prompt_id, lang, order,
choice, winner``). Out: per-language win rates with bootstrap intervals, the average over
the trained languages (``average``) and over the others (``average_unseen``), computed by
:mod:`congrad.evaluation.winrate` with a seed derived from the run seed.
"""

from __future__ import annotations

from typing import Any

from congrad.config.run import RunConfig
from congrad.util.seeds import stable_seed


def seen_and_unseen(config: RunConfig, languages: list[str]) -> tuple[list[str], list[str]]:
    trained = set(config.prompts.languages)
    return [lg for lg in languages if lg in trained], [lg for lg in languages if lg not in trained]


def verdict_winner(choice: str | None, order: str) -> str | None:
    """Who won one judged comparison: reply A is the candidate when it went first.

    >>> verdict_winner("A", "baseline_first"), verdict_winner("tie", "candidate_first")
    ('baseline', 'tie')
    """
    if choice is None or choice == "tie":
        return choice
    first, second = (
        ("candidate", "baseline") if order == "candidate_first" else ("baseline", "candidate")
    )
    return first if choice == "A" else second


def summarise_verdicts(config: RunConfig, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-language and averaged win rates of verdict rows (what ``winrates.json`` holds)."""
    from congrad.evaluation.winrate import VerdictRow, average_win_rate, language_win_rates

    verdicts = [VerdictRow.from_dict(row) for row in rows]
    seed = stable_seed("bootstrap", config.seed)
    resamples = config.evaluate.bootstrap
    per_lang = language_win_rates(verdicts, seed=seed, resamples=resamples)
    present = {row["lang"] for row in rows}
    ordered = config.evaluate.eval_languages(config.prompts.languages) + sorted(present)
    languages = [lang for lang in dict.fromkeys(ordered) if lang in present]
    seen, unseen = seen_and_unseen(config, languages)
    average = average_win_rate(verdicts, seen, seed=seed, resamples=resamples)
    average_unseen = (
        average_win_rate(verdicts, unseen, seed=seed, resamples=resamples, label="average_unseen")
        if unseen
        else None
    )
    return {
        "languages": {lang: rate.to_dict() for lang, rate in per_lang.items()},
        "seen": seen,
        "unseen": unseen,
        "average": average.to_dict(),
        "average_unseen": None if average_unseen is None else average_unseen.to_dict(),
    }
