"""Evaluation, the alignment tax: k-shot multiple-choice accuracy per language.

In: questions (:class:`~congrad.data.mcq_files.MCQuestion`, read by
:mod:`congrad.data.mcq_files`) and a loaded model. Out: one :class:`MCQResult` per
question and :func:`accuracy_by_lang`.

Each question is asked as raw text, with no chat template, as lm-eval asks MMLU::

    The following are multiple choice questions (with answers).

    Question: {shot question}
    A. {choice}
    B. {choice}
    Answer: B

    Question: {question}
    A. {choice}
    B. {choice}
    Answer:

The shots are other questions of the same language (:func:`choose_shots`). Choice ``i`` is
scored by the summed log-probability of the continuation ``" " + letter_i``, and the highest
wins (ties: the first). When every letter is one token after the shared context, as with
most tokenizers, one forward over the contexts scores all choices; otherwise each choice's
full sequence is scored. Texts are tokenized without special tokens, except a BOS that the
tokenizer itself puts first (Llama 3, Gemma; not SmolLM2), as lm-eval does for such models.

Why our own scorer and not lm-eval: the inputs are local files in the columns above, and each
round's model is scored in-process, already loaded; lm-eval's tasks fetch their datasets from
the hub and it is a heavy dependency. Standard numbers are still one command away: run
lm-eval on any round's ``model/`` folder.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from congrad.core.losses import sequence_logps
from congrad.data.encoding import pad_token_id_of
from congrad.data.mcq_files import LETTERS, MCQuestion
from congrad.util.seeds import stable_seed

HEADER = "The following are multiple choice questions (with answers).\n\n"


@dataclass(frozen=True, slots=True)
class MCQResult:
    """One scored question: ``logprobs[i]`` is ``log p(" " + letter_i | prompt)``."""

    question_id: str
    lang: str
    answer: int
    predicted: int
    correct: bool
    logprobs: tuple[float, ...]
    shots: int  # shots in the prompt: fewer than asked when the prompt had to be shortened

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "logprobs": list(self.logprobs)}


def choose_shots(
    pool: Sequence[MCQuestion], target: MCQuestion, k: int, seed: int
) -> list[MCQuestion]:
    """``k`` questions of ``target``'s language from ``pool``, never ``target`` itself (fewer
    when the language has fewer), drawn at random with the seed
    ``stable_seed("mcq-shots", seed, target_id)`` from the language's questions sorted by
    id: so they depend on which questions the pool holds, not on its order.

    >>> qs = [MCQuestion(f"q{i}", "en", "?", ("a", "b"), 0) for i in range(3)]
    >>> sorted(q.question_id for q in choose_shots(qs, qs[0], k=5, seed=0))
    ['q1', 'q2']
    """
    return _draw_shots(_by_lang(pool).get(target.lang, []), target, k, seed)


def mcq_prompt(target: MCQuestion, shots: Sequence[MCQuestion]) -> str:
    """The k-shot prompt (module docstring), ending in ``"Answer:"``.

    >>> print(mcq_prompt(MCQuestion("q", "en", "1+1?", ("1", "2"), 1), []))
    The following are multiple choice questions (with answers).
    <BLANKLINE>
    Question: 1+1?
    A. 1
    B. 2
    Answer:
    """
    solved = "".join(f"{_block(shot)} {LETTERS[shot.answer]}\n\n" for shot in shots)
    return HEADER + solved + _block(target)


def score_mcq(
    model: Any,
    tokenizer: Any,
    questions: Sequence[MCQuestion],
    *,
    shots: int,
    seed: int,
    batch_size: int = 8,
    max_length: int = 2048,
    progress: bool = False,
) -> list[MCQResult]:
    """Score each question with ``shots`` examples drawn from ``questions`` (its language).

    A prompt longer than ``max_length`` tokens (with its longest answer) loses shots from the
    front, one at a time; without shots, its context is cut from the left. Batches hold
    ``batch_size`` questions and take one forward (left-padded, float32 log-softmax) for
    those whose letters are single tokens and one for the rest. Results follow input order.
    """
    if shots < 0 or batch_size < 1:
        raise ValueError(f"shots must be >= 0 and batch_size >= 1, got {shots}, {batch_size}")
    model.eval()
    device = next(model.parameters()).device
    pad_id = pad_token_id_of(tokenizer)
    prefix = _special_prefix(tokenizer)
    starts: Any = range(0, len(questions), batch_size)
    if progress:
        from rich.progress import track

        starts = track(starts, description="multiple choice")
    groups = _by_lang(questions)
    results: list[MCQResult] = []
    for start in starts:
        batch = questions[start : start + batch_size]
        encoded = [
            _encode(tokenizer, q, _draw_shots(groups[q.lang], q, shots, seed), prefix, max_length)
            for q in batch
        ]
        scores = _score(model, encoded, pad_id, device)
        for question, done, logprobs in zip(batch, encoded, scores, strict=True):
            predicted = max(range(len(logprobs)), key=logprobs.__getitem__)  # first of ties
            results.append(
                MCQResult(
                    question_id=question.question_id,
                    lang=question.lang,
                    answer=question.answer,
                    predicted=predicted,
                    correct=predicted == question.answer,
                    logprobs=tuple(logprobs),
                    shots=done.shots,
                )
            )
    return results


def accuracy_by_lang(results: Iterable[MCQResult]) -> dict[str, dict[str, float | int]]:
    """``{lang: {"accuracy", "correct", "total"}}``, languages sorted.

    >>> r = [MCQResult("a", "en", 0, 0, True, (0.0, -1.0), 0), MCQResult("b", "en", 1, 0, False,
    ...      (0.0, -1.0), 0)]
    >>> accuracy_by_lang(r)
    {'en': {'accuracy': 0.5, 'correct': 1, 'total': 2}}
    """
    correct: Counter[str] = Counter()
    total: Counter[str] = Counter()
    for result in results:
        total[result.lang] += 1
        correct[result.lang] += result.correct
    return {
        lang: {"accuracy": correct[lang] / total[lang], "correct": correct[lang], "total": n}
        for lang, n in sorted(total.items())
    }


# --- scoring ---------------------------------------------------------------------------


def _by_lang(pool: Sequence[MCQuestion]) -> dict[str, list[MCQuestion]]:
    """Each language's questions sorted by id: the order shots are drawn from."""
    groups: dict[str, list[MCQuestion]] = {}
    for question in sorted(pool, key=lambda q: q.question_id):
        groups.setdefault(question.lang, []).append(question)
    return groups


def _draw_shots(group: list[MCQuestion], target: MCQuestion, k: int, seed: int) -> list[MCQuestion]:
    """:func:`choose_shots` from one language's sorted questions, in O(k) per target
    (ordering the whole pool by a hash per target would take O(n^2) for n questions)."""
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    rng = random.Random(stable_seed("mcq-shots", seed, target.question_id))
    drawn = rng.sample(range(len(group)), min(len(group), k + 1))  # one more, for the target
    return [group[i] for i in drawn if group[i].question_id != target.question_id][:k]


@dataclass(frozen=True, slots=True)
class _Encoded:
    """One question as token ids: per choice, the full sequence and how many of its last ids
    are the continuation " X" (the rest is the context)."""

    shots: int
    sequences: list[list[int]]
    scored: list[int]

    @property
    def one_token(self) -> bool:
        """Every choice is one shared context plus one token: the fast path applies."""
        context = self.sequences[0][:-1]
        pairs = zip(self.sequences, self.scored, strict=True)
        return all(s == 1 and seq[:-1] == context for seq, s in pairs)


def _block(question: MCQuestion) -> str:
    lines = [f"{LETTERS[i]}. {choice}" for i, choice in enumerate(question.choices)]
    return "\n".join([f"Question: {question.question}", *lines, "Answer:"])


def _special_prefix(tokenizer: Any) -> list[int]:
    """The BOS id when the tokenizer puts one before every text by default, else nothing."""
    ids = tokenizer("a")["input_ids"]
    bos = tokenizer.bos_token_id
    return [int(bos)] if bos is not None and ids and ids[0] == bos else []


def _encode(
    tokenizer: Any, target: MCQuestion, shots: list[MCQuestion], prefix: list[int], max_length: int
) -> _Encoded:
    """Token ids per choice, with as many shots (kept from the back) as fit ``max_length``."""

    def ids(text: str) -> list[int]:
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])

    for used in range(len(shots), -1, -1):
        text = mcq_prompt(target, shots[len(shots) - used :])
        context = len(ids(text))
        wholes = [ids(f"{text} {LETTERS[i]}") for i in range(len(target.choices))]
        # lm-eval's split: the continuation is what follows the context's token count.
        scored = [max(len(whole) - context, 1) for whole in wholes]
        if len(prefix) + max(len(w) for w in wholes) <= max_length:
            return _Encoded(used, [prefix + w for w in wholes], scored)
    kept = max_length - len(prefix) - max(scored)  # context tokens left for every choice
    if kept < 1:
        raise ValueError(f"max_length={max_length} cannot hold a context and an answer letter")
    cut = [prefix + w[-(kept + s) :] for w, s in zip(wholes, scored, strict=True)]
    return _Encoded(0, cut, scored)


def _score(
    model: Any, encoded: list[_Encoded], pad_id: int, device: torch.device
) -> list[list[float]]:
    """Per question, the log-probability of each choice's continuation."""
    scores: list[list[float]] = [[] for _ in encoded]
    fast = [i for i, e in enumerate(encoded) if e.one_token]
    slow = [i for i, e in enumerate(encoded) if not e.one_token]
    if fast:  # one row per question: the context's last logits score every letter
        contexts = [encoded[i].sequences[0][:-1] for i in fast]
        _, last = _logps(model, contexts, 1, pad_id, device)
        for i, row in zip(fast, last[:, -1].cpu(), strict=True):
            scores[i] = row[[seq[-1] for seq in encoded[i].sequences]].tolist()
    if slow:  # one row per choice, summed over its continuation tokens
        rows = [seq for i in slow for seq in encoded[i].sequences]
        counts = [s for i in slow for s in encoded[i].scored]
        keep = max(counts) + 1  # from the logits before the first scored token
        ids, logps = _logps(model, rows, keep, pad_id, device)
        scored = torch.zeros_like(ids, dtype=torch.bool)
        for row, count in enumerate(counts):
            scored[row, keep - count :] = True
        sums = iter(sequence_logps(logps, ids, scored).cpu().tolist())
        for i in slow:
            scores[i] = [next(sums) for _ in encoded[i].sequences]
    return scores


@torch.no_grad()
def _logps(
    model: Any, rows: list[list[int]], keep: int, pad_id: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """The last ``keep`` ids ``(B, keep)`` of the left-padded ``rows`` and float32
    log-softmax of the model's logits there ``(B, keep, V)``. Position ids start at 0 on
    each row's first token, so padding shifts nothing; ``logits_to_keep`` skips the
    vocabulary projection everywhere else."""
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for index, row in enumerate(rows):
        ids[index, width - len(row) :] = torch.tensor(row, dtype=torch.long)
        mask[index, width - len(row) :] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    ids, mask, positions = ids.to(device), mask.to(device), positions.to(device)
    logits = model(
        input_ids=ids,
        attention_mask=mask,
        position_ids=positions,
        use_cache=False,
        logits_to_keep=keep,
    ).logits[:, -keep:]
    return ids[:, -keep:], torch.log_softmax(logits.float(), dim=-1)


# --- loading ---------------------------------------------------------------------------


def accuracy_from_rows(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    totals: Counter[str] = Counter(row["lang"] for row in rows)
    correct: Counter[str] = Counter(row["lang"] for row in rows if row["correct"])
    return {
        lang: {"accuracy": correct[lang] / totals[lang], "correct": correct[lang], "total": n}
        for lang, n in sorted(totals.items())
    }
