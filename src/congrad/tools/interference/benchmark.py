"""The controlled interference benchmark: one CONGRAD round where the truth is known.

In: a :class:`BenchConfig`. Out: a results dict (JSON-ready) of per-seed, per-language
rows: how well each strategy's score separates the planted conflicting pairs (AUC,
precision of the kept set), and the held-out preference accuracy after LP-DPO on each
strategy's selection. :mod:`congrad.tools.interference.report` turns it into tables and plots.

Protocol per seed (mirrors a CONGRAD round, docs/design.md section 2, with the project's own
parts; nothing of the method is re-implemented here):

1. data (:mod:`congrad.tools.interference.data`) and a small Llama pre-trained from
   scratch on the synthetic languages (:mod:`congrad.tools.interference.model`): ``M0``;
2. warm-up: :func:`congrad.rounds.train.train_round` on the unfiltered warm-up pairs (round-1
   like, planted pairs included) gives ``M1`` and the per-language ``GradientEMA``, once
   per setting (EMA rank, gamma, warm-up learning rate); the EMA only reads gradients,
   so ``M1`` is the same for every rank and gamma, which is checked;
3. scoring at ``M1``: :func:`congrad.core.scoring.score_pairs` (CONGRAD cosines and the
   reference log-probs), :func:`congrad.core.selection.strategy_scores` for the others
   (lengths in tokens), :func:`congrad.core.selection.select_pairs` keeps ``keep_fraction``
   per language;
4. for each trained strategy, ``train_round`` from ``M1`` on its kept set (reference
   ``M1``), then on the held-out sets the implicit rewards ``beta * (log pi - log
   pi_ref)`` of chosen and rejected give the preference accuracy per language.

Benchmark-only strategies: ``oracle`` keeps the clean pairs first (the best any filter
can do); ``own-ema`` ranks by the cosine to the pair's own language's EMA alone, which
asks whether the cross-lingual consensus matters at all.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch

from congrad.config.run import EMAConfig, Strategy, TrainConfig
from congrad.core.scoring import score_pairs
from congrad.core.selection import select_pairs, strategy_scores
from congrad.data.records import PreferencePair
from congrad.rounds.train import reference_logps, train_round
from congrad.tools.interference.data import InterferenceData, InterferenceSpec, make_data
from congrad.tools.interference.metrics import kept_precision, preference_accuracy, separation_auc
from congrad.tools.interference.model import build_model, build_tokenizer, pretrain
from congrad.util.seeds import stable_seed

ORACLE = "oracle"
OWN_EMA = "own-ema"
"""Benchmark-only ablation: the cosine to the pair's own language's EMA alone, with no
cross-lingual consensus (``GradientEMA.subset``); keeps the largest like max-congrad."""
REGIMES: dict[str, dict[str, Any]] = {
    "attribute": {"rule": "attribute"},
    "successor": {"rule": "successor"},
    "judge-informative": {"rule": "attribute", "planted_margin_shift": 2},
}
"""Named settings of the data (overrides of the config's ``spec``); the EMA sweeps run on
the first regime of a run only."""
SEPARATION_STRATEGIES = ("rand", "max-len", "max-reward", "max-congrad", "min-congrad", OWN_EMA)
TRAINED_STRATEGIES = ("full", "rand", "max-len", "max-reward", "max-congrad", "min-congrad")
SWEPT_STRATEGIES = ("max-congrad", "min-congrad")


@dataclass(frozen=True)
class BenchConfig:
    """Everything a benchmark run depends on (written into results.json)."""

    spec: InterferenceSpec = field(default_factory=InterferenceSpec)
    seeds: int = 5
    ranks: tuple[int, ...] = (4, 16, 64)
    gammas: tuple[float, ...] = (0.5, 0.9, 0.99)
    warmup_learning_rates: tuple[float, ...] = (3e-4, 1e-3, 3e-3)
    rank: int = 16
    """The headline EMA rank (each sweep varies one of rank, gamma and the warm-up
    learning rate at a time, the others at their headline values)."""
    gamma: float = 0.9
    keep_fraction: float = 0.5
    hidden_size: int = 64
    num_layers: int = 2
    alignment: float = 1.0
    pretrain_steps: int = 200
    learning_rate: float = 3e-3
    """Learning rate of the LP-DPO epoch on each selection."""
    warmup_learning_rate: float = 3e-3
    """The headline learning rate of the warm-up epoch that fills the EMAs and gives M1."""
    batch_size: int = 8
    beta: float = 0.1
    alpha: float = 0.01
    trained: tuple[str, ...] = (*TRAINED_STRATEGIES, OWN_EMA, ORACLE)
    regimes: tuple[str, ...] = ("attribute", "successor")

    def __post_init__(self) -> None:
        if self.seeds < 1:
            raise ValueError(f"seeds must be >= 1, got {self.seeds}")
        if not self.ranks or min(self.ranks) < 1:
            raise ValueError(f"ranks must be positive integers, got {self.ranks}")
        if not self.gammas or not all(0 <= g < 1 for g in self.gammas):
            raise ValueError(f"gammas must lie in [0, 1), got {self.gammas}")
        if self.warmup_learning_rate <= 0:
            raise ValueError(f"warmup_learning_rate must be > 0: {self.warmup_learning_rate}")
        if not self.warmup_learning_rates or min(self.warmup_learning_rates) <= 0:
            raise ValueError(f"warm-up learning rates must be > 0: {self.warmup_learning_rates}")
        extra = (ORACLE, OWN_EMA)
        unknown = [s for s in self.trained if s not in extra and s not in set(Strategy)]
        if unknown:
            raise ValueError(f"unknown strategies {unknown}; known: {[*Strategy, *extra]}")
        unknown = [r for r in self.regimes if r not in REGIMES]
        if unknown or not self.regimes:
            raise ValueError(f"unknown regimes {unknown or '(none given)'}; known: {list(REGIMES)}")

    def regime_spec(self, regime: str) -> InterferenceSpec:
        return replace(self.spec, **REGIMES[regime])

    @property
    def headline(self) -> tuple[int, float, float]:
        return self.rank, self.gamma, self.warmup_learning_rate

    @property
    def settings(self) -> list[tuple[int, float, float]]:
        """``(rank, gamma, warm-up lr)``: the headline first, then one axis at a time."""
        rank, gamma, lr = self.headline
        settings = [self.headline]
        settings += [(r, gamma, lr) for r in self.ranks if r != rank]
        settings += [(rank, g, lr) for g in self.gammas if g != gamma]
        settings += [(rank, gamma, w) for w in self.warmup_learning_rates if w != lr]
        return settings

    def train_config(self) -> TrainConfig:
        return TrainConfig(
            learning_rate=self.learning_rate,
            batch_size=self.batch_size,
            beta=self.beta,
            alpha=self.alpha,
            max_length=32,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


Log = Callable[[str], None]


def _state(model: Any) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def _fresh(config: BenchConfig, tokenizer: Any, state: dict[str, torch.Tensor]) -> Any:
    model = build_model(
        config.spec,
        tokenizer,
        seed=0,
        hidden_size=config.hidden_size,
        num_layers=config.num_layers,
        alignment=config.alignment,
    )
    model.load_state_dict(state)
    model.eval()
    return model


def _oracle_scores(data: InterferenceData, pairs: Sequence[PreferencePair]) -> dict[str, float]:
    """Clean pairs first (1 + u), planted last (u); ``u`` a seeded uniform tie-breaker."""
    return {
        p.pair_id: float(p.pair_id not in data.planted)
        + (stable_seed(data.seed, "oracle", p.pair_id) % 10**6) / 10**6
        for p in pairs
    }


def _selection(
    strategy: str,
    data: InterferenceData,
    cosines: dict[str, float],
    lengths: dict[str, tuple[int, int]],
    keep: float,
    own_cosines: dict[str, float] | None = None,
) -> tuple[dict[str, float | None], list[bool]]:
    """A strategy's scores and the kept flag of every candidate (candidate order)."""
    pairs = data.candidates
    scores: dict[str, float | None]
    if strategy in (ORACLE, OWN_EMA):
        if strategy == OWN_EMA and own_cosines is None:
            raise ValueError("own-ema needs the cosines to each language's own EMA")
        extra = _oracle_scores(data, pairs) if strategy == ORACLE else own_cosines
        scores = dict(extra or {})
        chosen = Strategy.MAX_CONGRAD  # any max-* strategy: keep the largest scores
    else:
        chosen = Strategy(strategy)
        scores = strategy_scores(
            pairs,
            chosen,
            seed=stable_seed(data.seed, "rand-selection"),
            congrad_cosines=cosines,
            lengths=lengths,
        )
    rows = select_pairs(pairs, scores, chosen, keep)
    return scores, [row.kept for row in rows]


def _accuracies(
    model: Any,
    tokenizer: Any,
    evals: dict[str, tuple[PreferencePair, ...]],
    refs: dict[str, dict[str, tuple[float, float]]],
    beta: float,
) -> dict[tuple[str, str], float]:
    """``(eval_kind, lang) -> accuracy`` of the implicit rewards against ``refs``."""
    out = {}
    for kind, pairs in evals.items():
        logps = reference_logps(model, tokenizer, pairs, batch_size=64, max_length=32)
        for lang in dict.fromkeys(p.lang for p in pairs):
            chosen, rejected = [], []
            for p in pairs:
                if p.lang == lang:
                    chosen.append(beta * (logps[p.pair_id][0] - refs[kind][p.pair_id][0]))
                    rejected.append(beta * (logps[p.pair_id][1] - refs[kind][p.pair_id][1]))
            out[(kind, lang)] = preference_accuracy(chosen, rejected)
    return out


def run_seed(
    config: BenchConfig, regime: str, seed: int, log: Log, *, sweep: bool
) -> dict[str, list[dict[str, Any]]]:
    """All rows of one regime and seed: ``separation`` and ``accuracy`` (module docstring);
    ``sweep``: also every other EMA setting (else the headline one only)."""
    spec = config.regime_spec(regime)
    data = make_data(spec, seed)
    tokenizer = build_tokenizer(spec)
    model = build_model(
        spec,
        tokenizer,
        seed=seed,
        hidden_size=config.hidden_size,
        num_layers=config.num_layers,
        alignment=config.alignment,
    )
    started = time.perf_counter()
    losses = pretrain(model, tokenizer, data.pretrain, steps=config.pretrain_steps, seed=seed)
    where = f"{regime}, seed {seed}"
    log(
        f"{where}: pre-trained, final loss {losses[-1]:.2f}"
        if losses
        else f"{where}: no pre-training"
    )
    m0 = _state(model)
    train = config.train_config()
    separation: list[dict[str, Any]] = []
    accuracy: list[dict[str, Any]] = []
    planted = [p.pair_id in data.planted for p in data.candidates]
    warmed: dict[float, tuple[dict[str, torch.Tensor], dict[str, Any]]] = {}
    for rank, gamma, warmup_lr in config.settings if sweep else config.settings[:1]:
        headline = (rank, gamma, warmup_lr) == config.headline
        model = _fresh(config, tokenizer, m0)
        _, ema = train_round(
            model,
            tokenizer,
            data.warmup,
            train=train.model_copy(update={"learning_rate": warmup_lr}),
            ema=EMAConfig(rank=rank, gamma=gamma),
            seed=stable_seed(seed, "warmup"),
        )
        if warmup_lr not in warmed:
            warmed[warmup_lr] = (
                _state(model),
                {
                    k: reference_logps(model, tokenizer, p, batch_size=64, max_length=32)
                    for k, p in data.evals.items()
                },
            )
        m1, refs = warmed[warmup_lr]
        if any(not torch.equal(m1[k], v) for k, v in model.state_dict().items()):
            raise RuntimeError("the warm-up weights depend on the EMA setting; they must not")
        scored = score_pairs(
            model,
            tokenizer,
            data.candidates,
            ema,
            beta=config.beta,
            alpha=config.alpha,
            batch_size=32,
            max_length=32,
        )
        cosines = {s.pair_id: s.cosine for s in scored}
        lengths = {s.pair_id: (s.chosen_length, s.rejected_length) for s in scored}
        candidate_refs = {s.pair_id: (s.ref_chosen_logps, s.ref_rejected_logps) for s in scored}
        own_cosines: dict[str, float] = {}
        if headline:  # the ablation: each language scored against its own EMA only
            for lang in spec.codes:
                subset = [p for p in data.candidates if p.lang == lang]
                own = score_pairs(
                    model,
                    tokenizer,
                    subset,
                    ema.subset([lang]),
                    beta=config.beta,
                    alpha=config.alpha,
                    batch_size=32,
                    max_length=32,
                )
                own_cosines.update({s.pair_id: s.cosine for s in own})
        setting = {"regime": regime, "seed": seed, "rank": rank, "gamma": gamma}
        setting["warmup_lr"] = warmup_lr  # the columns every row of this setting shares
        separated = SEPARATION_STRATEGIES if headline else ("max-congrad",)
        for strategy in separated:
            scores, kept = _selection(
                strategy, data, cosines, lengths, config.keep_fraction, own_cosines
            )
            for lang in spec.codes:
                rows = [i for i, p in enumerate(data.candidates) if p.lang == lang]
                # Ranked the way the strategy keeps: a min-* score counts negated.
                sign = -1.0 if strategy.startswith("min-") else 1.0
                values = [sign * float(scores[data.candidates[i].pair_id] or 0.0) for i in rows]
                flags = [planted[i] for i in rows]
                separation.append(
                    {
                        **setting,
                        "strategy": strategy,
                        "lang": lang,
                        "auc": separation_auc(values, flags),
                        "precision": kept_precision([kept[i] for i in rows], flags),
                    }
                )
        trained = config.trained if headline else SWEPT_STRATEGIES
        for strategy in trained:
            _, kept = _selection(
                strategy, data, cosines, lengths, config.keep_fraction, own_cosines
            )
            subset = [p for p, k in zip(data.candidates, kept, strict=True) if k]
            policy = _fresh(config, tokenizer, m1)
            result, _ = train_round(
                policy,
                tokenizer,
                subset,
                train=train,
                ema=EMAConfig(rank=rank, gamma=gamma),
                seed=stable_seed(seed, "train", strategy),
                ref_logps={p.pair_id: candidate_refs[p.pair_id] for p in subset},
            )
            scores_by_lang = _accuracies(policy, tokenizer, data.evals, refs, config.beta)
            for lang in spec.codes:
                lang_kept = [
                    k for p, k in zip(data.candidates, kept, strict=True) if p.lang == lang
                ]
                lang_planted = [
                    f for p, f in zip(data.candidates, planted, strict=True) if p.lang == lang
                ]
                accuracy.append(
                    {
                        **setting,
                        "strategy": strategy,
                        "lang": lang,
                        "kept": sum(lang_kept),
                        "kept_planted": sum(
                            k and f for k, f in zip(lang_kept, lang_planted, strict=True)
                        ),
                        "train_loss": result.lang_mean_loss.get(lang),
                        **{kind: scores_by_lang[(kind, lang)] for kind in data.evals},
                    }
                )
        log(
            f"{where}: EMA rank {rank}, gamma {gamma}, warm-up lr {warmup_lr}: scored, "
            f"trained {len(trained)} ({time.perf_counter() - started:.0f} s)"
        )
    return {"separation": separation, "accuracy": accuracy}


def run_benchmark(config: BenchConfig, log: Log = lambda message: None) -> dict[str, Any]:
    """Every seed's rows, the config and the wall time."""
    started = time.perf_counter()
    separation: list[dict[str, Any]] = []
    accuracy: list[dict[str, Any]] = []
    threads = torch.get_num_threads()
    # Matrices of 64 x 128 gain nothing from threads, and on a loaded machine a second
    # spinning thread slows every op several-fold; restored afterwards.
    torch.set_num_threads(1)
    try:
        for index, regime in enumerate(config.regimes):
            for seed in range(config.seeds):
                rows = run_seed(config, regime, seed, log, sweep=index == 0)
                separation += rows["separation"]
                accuracy += rows["accuracy"]
    finally:
        torch.set_num_threads(threads)
    return {
        "format": "congrad.bench.interference/1",
        "config": config.to_dict(),
        "separation": separation,
        "accuracy": accuracy,
        "seconds": time.perf_counter() - started,
        "torch": torch.__version__,
    }
