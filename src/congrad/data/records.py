"""Typed records exchanged between stages, keyed by stable ids (docs/architecture.md,
design note 5).

In: plain values (from JSONL rows, datasets or code). Out: frozen records that validate
their own fields, so a bad row fails where it is read rather than deep inside a model.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any


def _require_text(record: str, field: str, value: object) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{record}.{field} must be a non-empty string, got {value!r}")


@dataclass(frozen=True, slots=True)
class PreferencePair:
    """A prompt with a preferred (``chosen``) and a dispreferred (``rejected``) response.

    ``chosen_score`` / ``rejected_score`` are the judge's scores when the pair came from
    self-rewarding; ``None`` for pairs from an external dataset.
    """

    pair_id: str
    lang: str
    prompt: str
    chosen: str
    rejected: str
    chosen_score: float | None = None
    rejected_score: float | None = None

    def __post_init__(self) -> None:
        for field in ("pair_id", "lang", "prompt", "chosen", "rejected"):
            _require_text("PreferencePair", field, getattr(self, field))
        for field in ("chosen_score", "rejected_score"):
            value = getattr(self, field)
            if value is not None and not (isinstance(value, int | float) and math.isfinite(value)):
                raise ValueError(f"PreferencePair.{field} must be a finite number or None")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def reward_margin(self) -> float | None:
        """``chosen_score - rejected_score``, or ``None`` when either is unknown."""
        if self.chosen_score is None or self.rejected_score is None:
            return None
        return self.chosen_score - self.rejected_score


@dataclass(frozen=True, slots=True)
class PairScore:
    """The CONGRAD score of one pair, from :func:`congrad.score_pairs`.

    ``cosine`` is ``cos(grad loss_i, c)`` over the tracked matrices (0.0 when either
    vector is zero), ``dot`` is ``<grad loss_i, c>`` and ``grad_norm`` is
    ``|grad loss_i|``, where ``c`` is the PCGrad consensus of the language EMAs.
    ``ref_chosen_logps`` / ``ref_rejected_logps`` are the summed response log-probs under
    the scoring weights: the reference log-probs of the next training round.
    ``chosen_length`` / ``rejected_length`` count response tokens after truncation.
    """

    pair_id: str
    lang: str
    cosine: float
    dot: float
    grad_norm: float
    ref_chosen_logps: float
    ref_rejected_logps: float
    chosen_length: int
    rejected_length: int
    truncated: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class PromptRecord:
    """One instruction in one language. ``prompt_id`` is stable across runs (from the
    source file's ``id`` column, or derived from the text when there is none)."""

    prompt_id: str
    lang: str
    prompt: str

    def __post_init__(self) -> None:
        for field in ("prompt_id", "lang", "prompt"):
            _require_text("PromptRecord", field, getattr(self, field))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Completion:
    """One sampled response to a prompt. ``completion_id`` is ``<prompt_id>#<sample_index>``;
    ``finished`` is False when generation stopped at the token budget."""

    completion_id: str
    prompt_id: str
    lang: str
    prompt: str
    response: str
    sample_index: int
    num_tokens: int
    finished: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Judgment:
    """The judge's verdict on one completion.

    ``score`` is the mean of the parsed repeats, or ``None`` when no repeat parsed:
    a parse failure is never a score of 0 (docs/architecture.md, design note 6). ``failure``
    says why (e.g. ``no_score``, ``ambiguous``, ``out_of_range``, ``low_mass``); ``outputs`` keeps
    each repeat's raw judge text (text mode) for auditing.
    """

    completion_id: str
    prompt_id: str
    lang: str
    score: float | None
    repeat_scores: tuple[float | None, ...]
    failure: str | None = None
    outputs: tuple[str, ...] = ()

    @property
    def parsed(self) -> bool:
        return self.score is not None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
