"""congrad: conflicting-gradient filtering for multilingual preference alignment.

The public API is re-exported here and imported lazily, so ``import congrad`` (and the
CLI) stays fast and loads torch and transformers only when a name is first used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "sequence_logps": "congrad.core.losses",
    "lp_dpo_loss": "congrad.core.losses",
    "PreferencePair": "congrad.data.records",
    "PairScore": "congrad.data.records",
    "EncodedPair": "congrad.data.encoding",
    "PairBatch": "congrad.data.encoding",
    "encode_pair": "congrad.data.encoding",
    "collate_pairs": "congrad.data.encoding",
    "LowRankEMA": "congrad.core.lowrank",
    "GradientEMA": "congrad.core.gradient_ema",
    "tracked_linears": "congrad.core.gradient_ema",
    "pcgrad_weights": "congrad.core.pcgrad",
    "seeded_orders": "congrad.core.pcgrad",
    "Consensus": "congrad.core.consensus",
    "score_pairs": "congrad.core.scoring",
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
    from congrad.core.consensus import Consensus
    from congrad.core.gradient_ema import GradientEMA, tracked_linears
    from congrad.core.losses import lp_dpo_loss, sequence_logps
    from congrad.core.lowrank import LowRankEMA
    from congrad.core.pcgrad import pcgrad_weights, seeded_orders
    from congrad.core.scoring import score_pairs
    from congrad.data.encoding import EncodedPair, PairBatch, collate_pairs, encode_pair
    from congrad.data.records import PairScore, PreferencePair


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'congrad' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
