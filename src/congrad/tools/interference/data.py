"""Synthetic languages with a shared preference and planted per-language conflicts.

In: an :class:`InterferenceSpec` and a seed. Out: :class:`InterferenceData`: warm-up,
candidate and held-out :class:`~congrad.data.records.PreferencePair` sets in ``L`` languages,
the ids of the planted conflicting pairs, and a pre-training corpus. Pure
(no torch): every draw comes from a ``random.Random`` seeded with
:func:`congrad.util.seeds.stable_seed` over the seed, the set and the language.

The design (the ground truth a real corpus never gives us):

* **Languages** are bijective renderings of one symbol set ``{0..K-1}``: symbol ``k`` in
  language ``L2`` is the word ``L2_07`` (for ``k = 7``). Vocabularies are disjoint; what
  they share is the underlying symbol, as translations share meaning.
* **A prompt** is 2 to 5 random symbols. **A response** is one answer symbol followed by
  0 to ``max_filler`` filler words (``L2_z``), so lengths vary independently of content.
* **The shared preference** holds in every language; each language also has its **own
  answers**, and a **neutral** symbol is one neither prefers. Two rules (``spec.rule``):

  - ``attribute`` (a preference that is one direction, like a style or safety norm):
    the shared answer is any even ("good") symbol; language ``i``'s own answers are the
    odd symbols ``s`` with ``(s // 2) % L == i``; the rest are neutral. Answers do not
    depend on the prompt.
  - ``successor`` (a prompt-specific preference, like a fact): the shared answer is the
    successor ``k + 1 (mod K)`` of the prompt's last symbol ``k``, language ``i``'s own
    answer ``k + 2 + i``; any other symbol is neutral.

  A clean pair prefers the shared answer over a neutral one. A **planted conflicting
  pair** of a language prefers its own answer over the shared one: a preference that
  holds in that language only and pushes the shared one down (the paper's
  cultural-divergence case). Each language's own answers differ from the others'.
* **Judge-like scores**: a margin ``m`` uniform on ``1..4`` (planted pairs: on
  ``1..4 - planted_margin_shift``), the rejected score uniform on ``0..5-m``. With shift
  0 the margin says nothing about which pairs are planted; lengths never do.

Every language gets exactly ``round(planted_fraction * n)`` planted candidate pairs (and
warm-up pairs), chosen by a seeded permutation. Held-out sets (no planted pairs, fresh
prompts): ``shared_vs_neutral``, ``shared_vs_own`` (the contested preference) and
``own_vs_neutral`` (the language-specific preference a filter may give up);
in them chosen and rejected carry the same number of fillers, so they differ only in the
answer. The pre-training corpus (:func:`pretrain_corpus`) shows both behaviours.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from congrad.data.records import PreferencePair
from congrad.util.seeds import stable_seed

MAX_SCORE = 5
EVAL_KINDS = ("shared_vs_neutral", "shared_vs_own", "own_vs_neutral")


@dataclass(frozen=True)
class InterferenceSpec:
    """The synthetic setting. Counts are per language."""

    rule: Literal["attribute", "successor"] = "attribute"
    """What the shared preference is (see the module docstring)."""
    languages: int = 4
    symbols: int = 16
    warmup_pairs: int = 96
    candidate_pairs: int = 192
    eval_pairs: int = 128
    planted_fraction: float = 0.25
    planted_margin_shift: int = 0
    """0: planted pairs' judge margins are drawn like the others (margin uninformative);
    1..3: planted margins come from ``1..4 - shift`` (a judge less sure of them)."""
    min_prompt: int = 2
    max_prompt: int = 5
    max_filler: int = 2
    pretrain_texts: int = 512
    pretrain_shared_rate: float = 0.3
    """Share of pre-training texts answering with the shared answer ..."""
    pretrain_local_rate: float = 0.2
    """... and with the language's own answer; the rest answer a uniformly random symbol."""

    def __post_init__(self) -> None:
        if not 2 <= self.languages <= 26:
            raise ValueError(f"languages must lie in 2..26, got {self.languages}")
        if self.rule not in ("attribute", "successor"):
            raise ValueError(f"rule must be 'attribute' or 'successor', got {self.rule!r}")
        least = 4 * self.languages if self.rule == "attribute" else self.languages + 3
        if self.symbols < least:
            raise ValueError(
                f"symbols ({self.symbols}) must be at least {least} for the {self.rule} rule "
                f"with {self.languages} languages, so every language has its own answers "
                "and a symbol neither prefers remains"
            )
        if not 0 <= self.planted_fraction < 1:
            raise ValueError(f"planted_fraction must lie in [0, 1), got {self.planted_fraction}")
        if not 0 <= self.planted_margin_shift <= 3:
            raise ValueError(
                f"planted_margin_shift must lie in 0..3, got {self.planted_margin_shift}"
            )
        if not 1 <= self.min_prompt <= self.max_prompt:
            raise ValueError("need 1 <= min_prompt <= max_prompt")
        for name in ("warmup_pairs", "candidate_pairs", "eval_pairs", "pretrain_texts"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.max_filler < 0:
            raise ValueError("max_filler must be >= 0")

    @property
    def codes(self) -> list[str]:
        return language_codes(self.languages)


@dataclass(frozen=True)
class InterferenceData:
    """Pairs of every set; ``planted`` holds the ids of the planted conflicting pairs."""

    spec: InterferenceSpec
    seed: int
    warmup: tuple[PreferencePair, ...]
    candidates: tuple[PreferencePair, ...]
    evals: dict[str, tuple[PreferencePair, ...]]
    planted: frozenset[str]
    pretrain: tuple[tuple[str, str], ...] = field(repr=False)
    """``(prompt, response)`` pre-training texts (:func:`pretrain_corpus`)."""


def language_codes(count: int) -> list[str]:
    """``["L1", "L2", ...]``."""
    return [f"L{i + 1}" for i in range(count)]


def symbol_word(lang: str, symbol: int) -> str:
    """The word for ``symbol`` in ``lang``.

    >>> symbol_word("L2", 7), filler_word("L2")
    ('L2_07', 'L2_z')
    """
    return f"{lang}_{symbol:02d}"


def filler_word(lang: str) -> str:
    return f"{lang}_z"


def vocabulary(spec: InterferenceSpec) -> dict[str, list[str]]:
    """Each language's words: its ``K`` symbols, then its filler."""
    return {
        lang: [symbol_word(lang, k) for k in range(spec.symbols)] + [filler_word(lang)]
        for lang in spec.codes
    }


def shared_answer(last: int, symbols: int) -> int:
    """``successor`` rule: the answer every language prefers, the successor of the
    prompt's last symbol."""
    return (last + 1) % symbols


def local_answer(last: int, lang_index: int, symbols: int) -> int:
    """``successor`` rule: language ``lang_index``'s own (planted) answer, never the
    shared one.

    >>> [local_answer(15, i, 16) for i in range(3)], shared_answer(15, 16)
    ([1, 2, 3], 0)
    """
    return (last + 2 + lang_index) % symbols


def attribute_sets(
    lang_index: int, spec: InterferenceSpec
) -> tuple[list[int], list[int], list[int]]:
    """``attribute`` rule: (good symbols, this language's own symbols, other symbols).
    Good: the even symbols; language ``i``'s own: the odd symbols ``s`` with
    ``(s // 2) % L == i``; other: the remaining odd symbols.

    >>> attribute_sets(1, InterferenceSpec(languages=4, symbols=16, rule="attribute"))
    ([0, 2, 4, 6, 8, 10, 12, 14], [3, 11], [1, 5, 7, 9, 13, 15])
    """
    good = list(range(0, spec.symbols, 2))
    odd = list(range(1, spec.symbols, 2))
    own = [k for k in odd if (k // 2) % spec.languages == lang_index]
    return good, own, [k for k in odd if k not in own]


def answers(
    prompt: Sequence[int], lang_index: int, spec: InterferenceSpec, rng: random.Random
) -> tuple[int, int, int]:
    """``(shared, own, other)`` answers to ``prompt`` under ``spec.rule``: the answer all
    languages prefer, the language's own (planted) one, and a symbol neither prefers."""
    if spec.rule == "successor":
        shared = shared_answer(prompt[-1], spec.symbols)
        own = local_answer(prompt[-1], lang_index, spec.symbols)
        return shared, own, rng.choice([k for k in range(spec.symbols) if k not in (shared, own)])
    good, own_set, other = attribute_sets(lang_index, spec)
    return rng.choice(good), rng.choice(own_set), rng.choice(other)


def _response(lang: str, answer: int, fillers: int) -> str:
    return " ".join([symbol_word(lang, answer)] + [filler_word(lang)] * fillers)


def _scores(rng: random.Random, planted: bool, shift: int) -> tuple[float, float]:
    margin = rng.randint(1, 4 - shift if planted else 4)
    rejected = rng.randint(0, MAX_SCORE - margin)
    return float(rejected + margin), float(rejected)


def _pair_set(
    spec: InterferenceSpec, seed: int, name: str, count: int, kind: str, fraction: float
) -> tuple[list[PreferencePair], set[str]]:
    """``count`` pairs per language of ``kind`` (``train`` mixes shared and planted)."""
    pairs: list[PreferencePair] = []
    planted_ids: set[str] = set()
    for index, lang in enumerate(spec.codes):
        rng = random.Random(stable_seed(seed, "interference", name, lang))
        # Judge scores from their own stream: regimes that differ only in the margins
        # (planted_margin_shift) get the very same pairs.
        judge = random.Random(stable_seed(seed, "interference", name, lang, "judge"))
        order = list(range(count))
        rng.shuffle(order)
        planted_rows = set(order[: round(fraction * count)]) if kind == "train" else set()
        for row in range(count):
            prompt = [
                rng.randrange(spec.symbols)
                for _ in range(rng.randint(spec.min_prompt, spec.max_prompt))
            ]
            shared, own, other = answers(prompt, index, spec, rng)
            planted = row in planted_rows
            if kind == "own_vs_neutral":
                chosen, rejected = own, other
            elif kind == "shared_vs_own":
                chosen, rejected = shared, own
            elif planted:
                chosen, rejected = own, shared
            else:  # train (shared) or shared_vs_neutral
                chosen, rejected = shared, other
            chosen_score, rejected_score = _scores(judge, planted, spec.planted_margin_shift)
            fillers = (rng.randint(0, spec.max_filler), rng.randint(0, spec.max_filler))
            if kind != "train":  # held out: equal lengths, so only the answer differs
                fillers = (fillers[0], fillers[0])
            pair_id = f"{name}-{lang}-{row:04d}"
            pairs.append(
                PreferencePair(
                    pair_id=pair_id,
                    lang=lang,
                    prompt=" ".join(symbol_word(lang, k) for k in prompt),
                    chosen=_response(lang, chosen, fillers[0]),
                    rejected=_response(lang, rejected, fillers[1]),
                    chosen_score=chosen_score,
                    rejected_score=rejected_score,
                )
            )
            if planted:
                planted_ids.add(pair_id)
    return pairs, planted_ids


def pretrain_corpus(spec: InterferenceSpec, seed: int) -> list[tuple[str, str]]:
    """``(prompt, response)`` texts per language for pre-training the base model: the
    format, each script, and both behaviours (the shared answer in ``pretrain_shared_rate``
    of the texts, the language's own answer in ``pretrain_local_rate``, else a uniformly
    random symbol), as an SFT model can produce both before preference tuning decides."""
    texts = []
    for index, lang in enumerate(spec.codes):
        rng = random.Random(stable_seed(seed, "interference", "pretrain", lang))
        for _ in range(spec.pretrain_texts):
            length = rng.randint(spec.min_prompt, spec.max_prompt)
            symbols = [rng.randrange(spec.symbols) for _ in range(length)]
            shared, own, _ = answers(symbols, index, spec, rng)
            draw = rng.random()
            if draw < spec.pretrain_shared_rate:
                answer = shared
            elif draw < spec.pretrain_shared_rate + spec.pretrain_local_rate:
                answer = own
            else:
                answer = rng.randrange(spec.symbols)
            prompt = " ".join(symbol_word(lang, k) for k in symbols)
            texts.append((prompt, _response(lang, answer, rng.randint(0, spec.max_filler))))
    return texts


def make_data(spec: InterferenceSpec, seed: int) -> InterferenceData:
    """All sets of one seed (see the module docstring)."""
    warmup, planted_warmup = _pair_set(
        spec, seed, "warmup", spec.warmup_pairs, "train", spec.planted_fraction
    )
    candidates, planted = _pair_set(
        spec, seed, "cand", spec.candidate_pairs, "train", spec.planted_fraction
    )
    evals = {
        kind: tuple(_pair_set(spec, seed, kind, spec.eval_pairs, kind, 0.0)[0])
        for kind in EVAL_KINDS
    }
    return InterferenceData(
        spec=spec,
        seed=seed,
        warmup=tuple(warmup),
        candidates=tuple(candidates),
        evals=evals,
        planted=frozenset(planted | planted_warmup),
        pretrain=tuple(pretrain_corpus(spec, seed)),
    )
