"""Stage 4: preference pairs from judged completions (docs/design.md section 2).

In: :class:`~congrad.data.records.Completion` and :class:`~congrad.data.records.Judgment` records,
joined by ``completion_id``. Out: one :class:`~congrad.data.records.PreferencePair` per prompt
(highest-scored response as chosen, lowest as rejected; ``pair_id`` = ``prompt_id``) and
one :class:`DroppedPrompt` per prompt that yields no pair, with the reason, so the funnel
prompts -> completions -> judged -> pairs can be audited.

Ties in the extreme scores are broken by the lowest sample index, so the result does not
depend on record order.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from congrad.data.records import Completion, Judgment, PreferencePair

DropReason = Literal["tie", "fewer_than_two_parsed"]


@dataclass(frozen=True, slots=True)
class DroppedPrompt:
    prompt_id: str
    lang: str
    reason: DropReason
    parsed: int
    """How many of the prompt's completions had a parsed score and a non-empty text."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def build_pairs(
    completions: Sequence[Completion], judgments: Sequence[Judgment]
) -> tuple[list[PreferencePair], list[DroppedPrompt]]:
    """Best vs worst parsed response per prompt; ties and parse failures are dropped.

    Returns pairs and drops, each sorted by ``(lang, prompt_id)``. Raises ``ValueError``
    if a judgment names an unknown completion or a completion is judged twice.
    """
    by_id = {c.completion_id: c for c in completions}
    if len(by_id) != len(completions):
        raise ValueError("duplicate completion_id among completions")
    scores: dict[str, float] = {}
    for judgment in judgments:
        if judgment.completion_id not in by_id:
            raise ValueError(f"judgment for unknown completion {judgment.completion_id!r}")
        if judgment.completion_id in scores:
            raise ValueError(f"completion {judgment.completion_id!r} is judged twice")
        if judgment.score is not None:
            scores[judgment.completion_id] = judgment.score
    groups: dict[str, list[Completion]] = defaultdict(list)
    for completion in completions:
        groups[completion.prompt_id].append(completion)

    pairs: list[PreferencePair] = []
    dropped: list[DroppedPrompt] = []
    for prompt_id, group in groups.items():
        # An empty response cannot be trained on as text; it counts as unscored here.
        scored = sorted(
            (c for c in group if c.completion_id in scores and c.response.strip()),
            key=lambda c: c.sample_index,
        )
        lang = group[0].lang
        if len(scored) < 2:
            dropped.append(DroppedPrompt(prompt_id, lang, "fewer_than_two_parsed", len(scored)))
            continue
        best = max(scored, key=lambda c: scores[c.completion_id])  # first maximal index
        worst = min(scored, key=lambda c: scores[c.completion_id])
        if scores[best.completion_id] <= scores[worst.completion_id]:
            dropped.append(DroppedPrompt(prompt_id, lang, "tie", len(scored)))
            continue
        pairs.append(
            PreferencePair(
                pair_id=prompt_id,
                lang=lang,
                prompt=best.prompt,
                chosen=best.response,
                rejected=worst.response,
                chosen_score=scores[best.completion_id],
                rejected_score=scores[worst.completion_id],
            )
        )
    pairs.sort(key=lambda p: (p.lang, p.pair_id))
    dropped.sort(key=lambda d: (d.lang, d.prompt_id))
    return pairs, dropped
