"""congrad: conflicting-gradient filtering for multilingual preference alignment.

The public API is re-exported here and imported lazily, so ``import congrad`` (and the
CLI) stays fast and loads torch and transformers only when a name is first used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "sequence_logps": "congrad.losses",
    "lp_dpo_loss": "congrad.losses",
    "PreferencePair": "congrad.records",
    "PairScore": "congrad.records",
    "EncodedPair": "congrad.encoding",
    "PairBatch": "congrad.encoding",
    "encode_pair": "congrad.encoding",
    "collate_pairs": "congrad.encoding",
    "LowRankEMA": "congrad.lowrank",
    "GradientEMA": "congrad.gradient_ema",
    "tracked_linears": "congrad.gradient_ema",
    "pcgrad_weights": "congrad.pcgrad",
    "seeded_orders": "congrad.pcgrad",
    "Consensus": "congrad.consensus",
    "score_pairs": "congrad.scoring",
}

__all__ = [
    "Consensus",
    "EncodedPair",
    "GradientEMA",
    "LowRankEMA",
    "PairBatch",
    "PairScore",
    "PreferencePair",
    "__version__",
    "collate_pairs",
    "encode_pair",
    "lp_dpo_loss",
    "pcgrad_weights",
    "score_pairs",
    "seeded_orders",
    "sequence_logps",
    "tracked_linears",
]

if TYPE_CHECKING:
    from congrad.consensus import Consensus
    from congrad.encoding import EncodedPair, PairBatch, collate_pairs, encode_pair
    from congrad.gradient_ema import GradientEMA, tracked_linears
    from congrad.losses import lp_dpo_loss, sequence_logps
    from congrad.lowrank import LowRankEMA
    from congrad.pcgrad import pcgrad_weights, seeded_orders
    from congrad.records import PairScore, PreferencePair
    from congrad.scoring import score_pairs


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'congrad' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
