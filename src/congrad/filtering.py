"""Stage 5's core shared by the loop and the standalone filter: score, then select.

In: preference pairs, the run config, the strategy, and loaders for the model and the
per-language EMA (called only when the strategy needs them). Out: :class:`FilterResult`:
the :class:`~congrad.selection.Selection` rows and, for the CONGRAD strategies, the
:class:`~congrad.records.PairScore` rows (cosines and the next round's reference
log-probs). Files are written by the callers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from congrad.config import RunConfig, Strategy
from congrad.encoding import encode_pair
from congrad.gradient_ema import GradientEMA
from congrad.records import PairScore, PreferencePair
from congrad.selection import Selection, select_pairs, strategy_scores


@dataclass(frozen=True)
class FilterResult:
    selection: list[Selection]
    scores: list[PairScore] | None


def filter_pairs(
    pairs: Sequence[PreferencePair],
    config: RunConfig,
    strategy: Strategy,
    *,
    load_model: Callable[[], tuple[Any, Any]],
    load_ema: Callable[[Any, Any], GradientEMA],
    progress: bool = False,
) -> FilterResult:
    """Score ``pairs`` by ``strategy`` and keep ``filter.keep_fraction`` of each language.

    ``load_ema(model, tokenizer)`` gives the EMA the consensus comes from (the previous
    round's, or one built from the pairs themselves).
    """
    from congrad.lora import adapter_attached
    from congrad.pcgrad import seeded_orders
    from congrad.scoring import score_pairs

    scores = None
    cosines = None
    lengths = None
    if strategy.needs_gradients and pairs:
        model, tokenizer = load_model()
        # LoRA: scored at M_{t-1} with a fresh adapter, removed unmerged (congrad.lora)
        with adapter_attached(model, config.model.lora) as model:
            ema = load_ema(model, tokenizer)
            scores = score_pairs(
                model,
                tokenizer,
                pairs,
                ema,
                beta=config.train.beta,
                alpha=config.train.alpha,
                batch_size=config.filter.batch_size,
                max_length=config.train.max_length,
                orders=seeded_orders(ema.languages, config.seed),
                progress=progress,
            )
        cosines = {s.pair_id: s.cosine for s in scores}
    if strategy in (Strategy.MAX_LEN, Strategy.MIN_LEN):
        _, tokenizer = load_model()
        lengths = {}
        for pair in pairs:  # response lengths in tokens, as the LP-DPO loss counts them
            encoded = encode_pair(tokenizer, pair, config.train.max_length)
            lengths[pair.pair_id] = (encoded.chosen_length, encoded.rejected_length)
    seed = config.seed if config.filter.seed is None else config.filter.seed
    values = strategy_scores(pairs, strategy, seed=seed, congrad_cosines=cosines, lengths=lengths)
    return FilterResult(select_pairs(pairs, values, strategy, config.filter.keep_fraction), scores)
