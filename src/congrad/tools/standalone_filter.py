"""CONGRAD as a data-selection tool for any multilingual preference dataset.

In: preference files (``prompt, chosen, rejected, lang`` and optional ``id``,
``chosen_score``, ``rejected_score``), a model and a :class:`~congrad.config.run.RunConfig`
(``filter.*``, ``ema.*``, ``train.beta/alpha/max_length/batch_size``). Out, in the output
folder: ``ema.safetensors`` (the per-language EMA), ``scores.jsonl`` (every pair's
cosine and reference log-probs, when the strategy scores gradients),
``selection.jsonl`` (score, rank, kept) and ``filter.manifest.json`` written last.

With no EMA from a training run, the EMA is built by a gradient pass over the dataset
itself: single-language minibatches of the LP-DPO loss at the model's weights (policy =
reference), each folded into its language's EMA, with no optimizer step. Then pairs are
scored against the PCGrad consensus exactly as in the loop. Under a multi-process launcher
(``torchrun``) the gradient pass and the scoring are shared by the ranks and the main
process writes the files.

With ``model.lora.enabled`` the EMA and the scores are over a fresh adapter's matrices
(:mod:`congrad.models.lora`, the same fixed-seed ``A`` as a LoRA run's rounds). At ``B = 0`` only
``B`` has a gradient, ``(alpha / r) G A^T``: the pairs are compared through a random
projection ``A`` of their full-weight gradients ``G`` (cheaper EMA, a sketch of the full
cosine). An ``--ema`` from a LoRA run needs the same ``model.lora`` settings.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from congrad.config.run import RunConfig
from congrad.core.gradient_ema import GradientEMA
from congrad.core.losses import lp_dpo_loss
from congrad.data.artifacts import write_jsonl, write_manifest
from congrad.data.encoding import collate_pairs, encode_pair, pad_token_id_of
from congrad.data.records import PreferencePair
from congrad.parallel import distributed
from congrad.util.seeds import stable_seed


def build_ema_from_pairs(
    model: Any, tokenizer: Any, pairs: Sequence[PreferencePair], config: RunConfig
) -> GradientEMA:
    """Per-language EMAs from single-language minibatch gradients, no weight updates.

    Minibatches of ``train.batch_size`` pairs of one language each, in a seeded order
    (:func:`congrad.rounds.train.language_schedule`), as the training round would see them. With
    several processes each rank takes a contiguous slice of every minibatch, backpropagates
    ``sum of its losses / B`` and the tracked gradients are summed over the ranks before the
    EMA reads them (no optimizer, so no DDP wrapper is needed); every rank ends with the
    same EMA.
    """
    from congrad.rounds.train import batch_logps, language_schedule

    ema = GradientEMA(
        model,
        rank=config.ema.rank,
        iters=config.ema.iters,
        gamma=config.ema.gamma,
        include=config.ema.include,
        seed=config.seed,
    )
    world, me = distributed.world_size(), distributed.rank()

    def summed(weight: torch.Tensor) -> torch.Tensor:
        """This minibatch's gradient summed over the ranks (a rank with no pair adds 0)."""
        grad = weight.grad if weight.grad is not None else torch.zeros_like(weight)
        distributed.all_reduce_sum([grad])
        return grad

    pad_id = pad_token_id_of(tokenizer)
    was_training = model.training
    model.eval()
    try:
        for indices in language_schedule(
            list(pairs), config.train.batch_size, stable_seed("filter", config.seed)
        ):
            model.zero_grad(set_to_none=True)
            local = [pairs[i] for i in distributed.split_evenly(indices, me, world)]
            if local:
                batch = collate_pairs(
                    [encode_pair(tokenizer, p, config.train.max_length) for p in local], pad_id
                )
                chosen, rejected = batch_logps(model, batch)
                device = chosen.device
                losses = lp_dpo_loss(
                    chosen,
                    rejected,
                    chosen.detach(),  # policy = reference: the gradient at the current weights
                    rejected.detach(),
                    batch.chosen_lengths.to(device),
                    batch.rejected_lengths.to(device),
                    beta=config.train.beta,
                    alpha=config.train.alpha,
                )
                (losses.sum() / len(indices)).backward()
            ema.update(pairs[indices[0]].lang, read=summed if world > 1 else None)
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    return ema


def filter_dataset(
    config: RunConfig,
    datasets: Sequence[str],
    output: str | Path,
    *,
    model: str | None = None,
    ema_path: str | Path | None = None,
    progress: bool = True,
) -> Path:
    """Score and select the pairs of ``datasets``; returns the output folder."""
    from congrad.data.preference_files import load_pair_files
    from congrad.models.loading import load_model
    from congrad.rounds.filtering import filter_pairs

    start = time.perf_counter()
    folder = Path(output)
    pairs = load_pair_files(datasets)
    model_config = (
        config.model if model is None else config.model.model_copy(update={"name_or_path": model})
    )
    loaded: list[tuple[Any, Any]] = []

    def load() -> tuple[Any, Any]:
        if not loaded:
            with distributed.main_first():  # one process fills the offline-model cache
                loaded.append(load_model(model_config, seed=config.seed))
        return loaded[0]

    def ema_for(lm: Any, tokenizer: Any) -> GradientEMA:
        if ema_path is not None:
            return GradientEMA.load(ema_path, lm)
        ema = build_ema_from_pairs(lm, tokenizer, pairs, config)
        if distributed.is_main():
            ema.save(folder / "ema.safetensors")
        return ema

    strategy = config.filter.strategy
    result = filter_pairs(
        pairs, config, strategy, load_model=load, load_ema=ema_for, progress=progress
    )
    if not distributed.is_main():  # the other ranks helped score; the main process writes
        return folder
    if result.scores is not None:
        write_jsonl(folder / "scores.jsonl", (s.to_dict() for s in result.scores))
    selection = result.selection
    write_jsonl(folder / "selection.jsonl", (s.to_dict() for s in selection))
    kept: dict[str, int] = {}
    for row in selection:
        kept[row.lang] = kept.get(row.lang, 0) + int(row.kept)
    write_manifest(
        folder,
        "filter",
        {
            "datasets": list(datasets),
            "model": model_config.name_or_path,
            "ema": str(ema_path) if ema_path is not None else "built from the dataset",
            "strategy": str(strategy),
            "keep_fraction": config.filter.keep_fraction,
            "pairs": len(pairs),
            "kept": dict(sorted(kept.items())),
            "seconds": round(time.perf_counter() - start, 3),
        },
    )
    return folder
