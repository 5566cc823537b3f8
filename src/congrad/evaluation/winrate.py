"""Head-to-head win rates of a round's model over the seed model (docs/design.md section 8).

In: judge verdict rows (:class:`VerdictRow`), one per held-out prompt and answer order,
saying whether the candidate (the round's model) or the baseline (the seed model) won,
or that the verdict did not parse. Out: a :class:`WinRate` per language and a macro
average over languages, each with a seeded percentile-bootstrap interval.

Choices, each deliberate:

- **A prompt is the unit.** Its score is the mean of :data:`OUTCOME_SCORE` over its parsed
  verdicts, so when both orders parse a judge's position bias cancels (a judge that always
  prefers the first answer scores the prompt 0.5). A tie counts half, as in the paper.
- **Parse failures are values, not losses.** A prompt with one parsed order still counts,
  with that one verdict; a prompt whose every verdict failed is left out of the rate and
  reported in ``excluded_prompts``; failed verdicts are counted in ``unparsed``.
- **The average is a macro average** (the paper's "average" column): every language's
  win rate weighs the same, whatever its prompt count. Languages with no parsed verdict
  are skipped, since they have no rate to average.
- **Bootstrap over prompts**, ``resamples`` draws of ``n`` prompts with replacement, from a
  numpy generator seeded by sha256 of ``f"{seed}:{lang}"``, so a language's interval does
  not depend on which other languages are present. The average resamples each language
  independently with the same streams (a stratified bootstrap) and takes the macro mean.
  Prompts enter sorted by id, so row order never changes a result.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal, get_args

import numpy as np

Winner = Literal["candidate", "baseline", "tie"]
Order = Literal["candidate_first", "baseline_first"]
OUTCOME_SCORE: dict[str, float] = {"candidate": 1.0, "tie": 0.5, "baseline": 0.0}


@dataclass(frozen=True, slots=True)
class VerdictRow:
    """One judged comparison of a prompt's two answers, in one order."""

    prompt_id: str
    lang: str
    order: Order
    winner: Winner | None
    """None: the verdict did not parse."""

    def __post_init__(self) -> None:
        if self.order not in get_args(Order):
            raise ValueError(f"prompt {self.prompt_id!r}: unknown order {self.order!r}")
        if self.winner is not None and self.winner not in OUTCOME_SCORE:
            raise ValueError(f"prompt {self.prompt_id!r}: unknown winner {self.winner!r}")

    @classmethod
    def from_dict(cls, row: Mapping[str, Any]) -> VerdictRow:
        """Read a row with keys prompt_id, lang, order, winner; other keys are ignored.

        >>> VerdictRow.from_dict({"prompt_id": "p1", "lang": "de", "order": "baseline_first",
        ...                       "winner": None, "raw": "???"}).winner is None
        True
        """
        missing = [key for key in ("prompt_id", "lang", "order", "winner") if key not in row]
        if missing:
            raise ValueError(f"verdict row {row.get('prompt_id')!r} lacks {missing}")
        return cls(str(row["prompt_id"]), str(row["lang"]), row["order"], row["winner"])


@dataclass(frozen=True, slots=True)
class WinRate:
    lang: str
    """A language code, or the average's label."""
    win_rate: float | None
    """None when no prompt has a parsed verdict."""
    low: float | None
    high: float | None
    """The bootstrap percentile interval."""
    wins: int
    ties: int
    losses: int
    """Parsed verdicts by outcome (each order counts once)."""
    unparsed: int
    prompts: int
    """Prompts with at least one parsed verdict."""
    excluded_prompts: int
    """Prompts whose every verdict failed to parse."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _checked(rows: Iterable[VerdictRow]) -> list[VerdictRow]:
    """The rows as a list, refusing a repeated (prompt, order) or a prompt in two languages."""
    rows = list(rows)
    seen: set[tuple[str, str]] = set()
    lang_of: dict[str, str] = {}
    for row in rows:
        if (row.prompt_id, row.order) in seen:
            raise ValueError(f"prompt {row.prompt_id!r} has two verdicts for order {row.order}")
        seen.add((row.prompt_id, row.order))
        if lang_of.setdefault(row.prompt_id, row.lang) != row.lang:
            raise ValueError(
                f"prompt {row.prompt_id!r} appears as {lang_of[row.prompt_id]!r} and {row.lang!r}"
            )
    return rows


def prompt_scores(rows: Iterable[VerdictRow]) -> dict[str, dict[str, float]]:
    """``{lang: {prompt_id: mean score of its parsed verdicts}}``; unscored prompts absent.

    >>> rows = [VerdictRow("a", "en", "candidate_first", "tie"),
    ...         VerdictRow("a", "en", "baseline_first", "candidate"),
    ...         VerdictRow("b", "en", "candidate_first", None)]
    >>> prompt_scores(rows)
    {'en': {'a': 0.75}}
    """
    outcomes: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for row in _checked(rows):
        if row.winner is not None:
            outcomes[row.lang][row.prompt_id].append(OUTCOME_SCORE[row.winner])
    return {
        lang: {pid: sum(scores) / len(scores) for pid, scores in sorted(by_prompt.items())}
        for lang, by_prompt in sorted(outcomes.items())
    }


def language_stream(seed: int, lang: str) -> np.random.Generator:
    """The numpy generator for ``lang``'s bootstrap: sha256 of ``f"{seed}:{lang}"``."""
    digest = hashlib.sha256(f"{seed}:{lang}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def _resample_means(scores: np.ndarray, seed: int, lang: str, resamples: int) -> np.ndarray:
    """``(resamples,)`` means of ``scores`` resampled with replacement, one row per draw."""
    indices = language_stream(seed, lang).integers(0, len(scores), size=(resamples, len(scores)))
    return np.asarray(scores[indices].mean(axis=1))


def _interval(means: np.ndarray, confidence: float) -> tuple[float, float]:
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return float(low), float(high)


def _check_bootstrap(resamples: int, confidence: float) -> None:
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, got {resamples}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")


def _counts(rows: Sequence[VerdictRow]) -> dict[str, int]:
    parsed = {row.prompt_id for row in rows if row.winner is not None}
    return {
        "wins": sum(row.winner == "candidate" for row in rows),
        "ties": sum(row.winner == "tie" for row in rows),
        "losses": sum(row.winner == "baseline" for row in rows),
        "unparsed": sum(row.winner is None for row in rows),
        "prompts": len(parsed),
        "excluded_prompts": len({row.prompt_id for row in rows} - parsed),
    }


def language_win_rates(
    rows: Iterable[VerdictRow], *, seed: int, resamples: int = 1000, confidence: float = 0.95
) -> dict[str, WinRate]:
    """Per language (sorted): the mean prompt score and its bootstrap interval.

    A language whose verdicts all failed appears with ``win_rate``, ``low`` and ``high``
    None and its prompts in ``excluded_prompts``.
    """
    _check_bootstrap(resamples, confidence)
    rows = _checked(rows)
    scores = prompt_scores(rows)
    by_lang: dict[str, list[VerdictRow]] = defaultdict(list)
    for row in rows:
        by_lang[row.lang].append(row)
    rates: dict[str, WinRate] = {}
    for lang in sorted(by_lang):
        values = np.array(list(scores.get(lang, {}).values()))
        rate = low = high = None
        if len(values):
            rate = float(values.mean())
            low, high = _interval(_resample_means(values, seed, lang, resamples), confidence)
        rates[lang] = WinRate(lang, rate, low, high, **_counts(by_lang[lang]))
    return rates


def average_win_rate(
    rows: Iterable[VerdictRow],
    languages: Sequence[str],
    *,
    seed: int,
    resamples: int = 1000,
    confidence: float = 0.95,
    label: str = "average",
) -> WinRate:
    """The macro average of ``languages``' win rates, with a stratified bootstrap interval.

    Rows of other languages are ignored; listed languages without a parsed verdict are
    skipped (their counts still add up). Counts are summed over ``languages``.

    >>> rows = [VerdictRow("a", "en", "candidate_first", "candidate"),
    ...         VerdictRow("b", "de", "candidate_first", "baseline"),
    ...         VerdictRow("c", "de", "candidate_first", "candidate"),
    ...         VerdictRow("d", "de", "candidate_first", "candidate")]
    >>> average_win_rate(rows, ["en", "de"], seed=0).win_rate  # (1 + 2/3) / 2, not 3/4
    0.8333...
    """
    _check_bootstrap(resamples, confidence)
    if len(set(languages)) != len(languages):
        raise ValueError(f"languages repeat: {list(languages)}")
    wanted = set(languages)
    rows = [row for row in _checked(rows) if row.lang in wanted]
    scores = prompt_scores(rows)
    rated = [lang for lang in languages if lang in scores]
    counts = _counts(rows)
    if not rated:
        return WinRate(label, None, None, None, **counts)
    values = {lang: np.array(list(scores[lang].values())) for lang in rated}
    rate = float(np.mean([values[lang].mean() for lang in rated]))
    means = np.mean(
        [_resample_means(values[lang], seed, lang, resamples) for lang in rated], axis=0
    )
    low, high = _interval(means, confidence)
    return WinRate(label, rate, low, high, **counts)
