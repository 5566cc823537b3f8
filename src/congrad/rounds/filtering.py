"""Stage 5's core shared by the loop and the standalone filter: score, then select.

In: preference pairs, the run config, the strategy, and loaders for the model and the
per-language EMA (called only when the strategy needs them). Out: :class:`FilterResult`:
the :class:`~congrad.core.selection.Selection` rows and, for the CONGRAD strategies, the
:class:`~congrad.data.records.PairScore` rows (cosines and the next round's reference
log-probs). Files are written by the callers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from congrad.config.run import RunConfig, Strategy
from congrad.core.gradient_ema import GradientEMA
from congrad.core.selection import Selection, select_pairs, strategy_scores
from congrad.data.encoding import encode_pair
from congrad.data.records import PairScore, PreferencePair


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
    from congrad.core.pcgrad import seeded_orders
    from congrad.core.scoring import score_pairs
    from congrad.models.lora import adapter_attached

    scores = None
    cosines = None
    lengths = None
    if strategy.needs_gradients and pairs:
        model, tokenizer = load_model()
        # LoRA: scored at M_{t-1} with a fresh adapter, removed unmerged (congrad.models.lora)
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
