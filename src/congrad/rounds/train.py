"""One epoch of length-penalised DPO on HF accelerate, the CONGRAD way (docs/design.md 2-4).

In: a model and tokenizer at the round-start weights ``M_{t-1}``, the round's kept pairs,
``TrainConfig`` / ``EMAConfig``, a seed, and optionally the reference log-probs the scoring
pass measured at these weights. Out: the model trained in place (left in eval mode), a
:class:`TrainResult`, and a fresh :class:`~congrad.core.gradient_ema.GradientEMA` of this round's
minibatches, with which the caller filters the next round.

Paper part: Algorithm 2's training step (reconstructed, docs/design.md section 2): one epoch of
LP-DPO (eq. 3) against ``M_{t-1}``, one language per minibatch, each minibatch's gradient
folded into its language's EMA (section 4) after its backward, before the optimizer step.
Our choices: the reference is numbers (``ref_logps`` or :func:`reference_logps`), never a
second model; AdamW, no weight decay on 1-D tensors, warm-up then linear decay. Each
minibatch is backpropagated into an EMPTY ``.grad`` (its accumulation window's running sum
held aside), so the EMA reads exactly its gradient of its mean loss, whatever the
accumulation or fp16 loss scale (divided out exactly, a power of two; an overflowed one is
kept out); then it is divided by the window's minibatch count and added to the sum, which
returns to ``.grad`` for clipping and the step (one extra gradient buffer when accumulating).

Several processes (``torchrun`` / ``accelerate launch``, :mod:`congrad.parallel.distributed`): the
model is wrapped in DDP by ``accelerator.prepare``. Every rank builds the same schedule, so
all ranks take the same language at every step; ``train.batch_size`` is the GLOBAL
minibatch, split into contiguous near-equal slices, one per rank. Rank ``r`` backpropagates
``(W / B) * sum of its pairs' losses`` and DDP's all-reduce averages over the ``W`` ranks,
so ``.grad`` holds the gradient of the minibatch's mean loss, exactly as with one process
(a rank whose slice is empty, when ``B < W``, runs its first pair with weight 0). The
all-reduce runs after EVERY minibatch, not once per accumulation window (no ``no_sync``):
the EMA must see each minibatch's full gradient. Each rank then updates its own
:class:`~congrad.core.gradient_ema.GradientEMA` from the same all-reduced gradient with the same
seeds, so all ranks hold identical EMAs (no broadcast needed); the caller saves from the
main process. Per-pair losses and rewards are gathered for the log.

FSDP version 2 (accelerate's ``fsdp_version: 2``, or a model the caller already sharded with
``fully_shard``): the same slicing and weighting (FSDP's reduce-scatter averages like DDP's
all-reduce); the EMA gathers each tracked gradient whole, one matrix at a time
(:mod:`congrad.core.gradient_ema`); the reference forwards run in lockstep, since a sharded
forward communicates. The trained model stays sharded: the caller gathers its state dict
with :func:`congrad.parallel.distributed.full_state_dict` to save it. FSDP version 1 (flat
parameters: no per-matrix ``.grad``) is refused by :func:`congrad.rounds.engines.engine_for`.

DeepSpeed ZeRO 2/3 (:mod:`congrad.parallel.zero`): ``accelerator.prepare`` returns a
DeepSpeedEngine, which owns backward, clipping and the step; the same slicing and weighting
(its gradient reduction averages over the ranks like DDP's). The reference log-probs are
taken before the engine casts and partitions the model; the EMA reads each tracked matrix's
whole gradient from the partitions; accumulating (ZeRO-3 only), each minibatch's gradient
partitions are held aside, and their mean is put back before the step. The trained fp32
weights are gathered into ``TrainResult.weights`` before the engine is released: the caller
saves those.

Where the backends differ (backward, where the EMA reads the gradient, holding a window's
sum aside, the step and its gradient norm, the weights to save) is one small adapter per
backend, :mod:`congrad.rounds.engines`, so the loop below reads the same for all of them.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from rich.progress import track
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from congrad.config.run import EMAConfig, TrainConfig
from congrad.core.gradient_ema import GradientEMA
from congrad.core.losses import lp_dpo_loss, sequence_logps
from congrad.data.encoding import PairBatch, collate_pairs, encode_pair, pad_token_id_of
from congrad.data.records import PreferencePair
from congrad.models.checkpointing import enable_gradient_checkpointing
from congrad.models.lora import merge_adapter
from congrad.parallel import distributed
from congrad.rounds import engines
from congrad.util.atomic import remove_stale_temporaries
from congrad.util.seeds import stable_seed


@dataclass(frozen=True)
class StepLog:
    """One minibatch, in schedule order; ``grad_norm`` (before clipping) and ``lr`` are those
    of optimizer step ``step`` (1-based) that it feeds. Rewards: ``beta * (policy - ref)``
    log-ratios, means over the minibatch; ``accuracy``: share with chosen > rejected reward."""

    step: int
    lang: str
    pairs: int
    loss: float
    grad_norm: float
    lr: float
    chosen_reward_mean: float
    rejected_reward_mean: float
    accuracy: float


@dataclass(frozen=True)
class TrainResult:
    """``steps`` optimizer steps; the mean losses are over pairs, overall and per language.
    ``weights``: under DeepSpeed, the trained weights gathered whole from its partitions
    before its engine let go of them (:func:`congrad.parallel.zero.full_state_dict`; on the main
    process's CPU, empty on the others): save these, not the model's own. Otherwise None."""

    steps: int
    log: tuple[StepLog, ...]
    mean_loss: float
    seconds: float
    lang_mean_loss: dict[str, float]
    weights: dict[str, torch.Tensor] | None = field(default=None, repr=False)


def language_schedule(
    pairs: Sequence[PreferencePair], batch_size: int, seed: int
) -> list[list[int]]:
    """Minibatches of pair indices, each of ONE language, covering every pair exactly once.

    Each language's pairs are shuffled and chunked (a language's last minibatch may be
    smaller); the chunks are interleaved in a seeded order that keeps each language's chunk
    order. Deterministic: SHA-256 of the seed and pair ids / languages, no global RNG.

    >>> pairs = [PreferencePair(f"p{i}", "en" if i < 3 else "de", "q", "a", "b") for i in range(5)]
    >>> schedule = language_schedule(pairs, batch_size=2, seed=0)
    >>> sorted(len(batch) for batch in schedule), sorted(i for b in schedule for i in b)
    ([1, 2, 2], [0, 1, 2, 3, 4])
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    chunks: dict[str, list[list[int]]] = {}
    slots: list[tuple[int, str]] = []  # a seeded order of (language) slots
    for lang in dict.fromkeys(pair.lang for pair in pairs):
        indices = [i for i, pair in enumerate(pairs) if pair.lang == lang]
        indices.sort(key=lambda i: (stable_seed(seed, "shuffle", pairs[i].pair_id), i))
        chunks[lang] = [indices[s : s + batch_size] for s in range(0, len(indices), batch_size)]
        slots += [(stable_seed(seed, "slot", lang, k), lang) for k in range(len(chunks[lang]))]
    return [chunks[lang].pop(0) for _, lang in sorted(slots)]  # each slot: its next chunk


def batch_logps(model: nn.Module, batch: PairBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed response log-probs ``(B,)`` of the chosen rows and of the rejected rows."""
    device = next(model.parameters()).device
    input_ids = batch.input_ids.to(device)
    mask = batch.attention_mask.to(device)
    logits = model(input_ids=input_ids, attention_mask=mask, use_cache=False).logits
    logps = sequence_logps(logits, input_ids, batch.response_mask.to(device))
    return logps[: batch.num_pairs], logps[batch.num_pairs :]


@torch.no_grad()
def reference_logps(
    model: nn.Module,
    tokenizer: Any,
    pairs: Sequence[PreferencePair],
    *,
    batch_size: int,
    max_length: int,
    lockstep: bool = False,
) -> dict[str, tuple[float, float]]:
    """``pair_id -> (chosen, rejected)`` summed response log-probs at the current weights:
    one no-grad forward per ``batch_size`` pairs (grouped by length), in eval mode. With
    several processes the batches are spread over the ranks and every rank gets all values.
    ``model`` must be the bare module, not a DDP wrapper (ranks run different numbers of
    forwards here, and DDP's forward may communicate). ``lockstep``: the model is FSDP-sharded,
    so every rank runs a forward in every wave (see
    :func:`congrad.parallel.distributed.map_in_waves`)."""
    encoded = [encode_pair(tokenizer, pair, max_length) for pair in pairs]
    order = sorted(range(len(pairs)), key=lambda i: len(encoded[i].chosen_input_ids))
    batches = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]

    def forward(indices: list[int]) -> list[tuple[float, float]]:
        batch = collate_pairs([encoded[i] for i in indices], pad_token_id_of(tokenizer))
        chosen, rejected = batch_logps(model, batch)
        return [(float(chosen[row]), float(rejected[row])) for row in range(len(indices))]

    values: dict[str, tuple[float, float]] = {}
    was_training = model.training
    model.eval()
    try:
        for number, batch_values in distributed.map_in_waves(batches, forward, lockstep=lockstep):
            for index, value in zip(batches[number], batch_values, strict=True):
                values[pairs[index].pair_id] = value
    finally:
        model.train(was_training)
    return {pair.pair_id: values[pair.pair_id] for pair in pairs}


def _minibatch_losses(
    model: nn.Module, batch: PairBatch, refs: torch.Tensor, train: TrainConfig
) -> tuple[torch.Tensor, list[tuple[float, float, float]]]:
    """Per-pair LP-DPO losses ``(B,)`` given ``refs`` ``(B, 2)`` (chosen, rejected), and per
    pair ``(loss, chosen reward, rejected reward)`` as floats for the log."""
    chosen, rejected = batch_logps(model, batch)
    ref_chosen, ref_rejected = refs.to(chosen).unbind(1)
    lengths = (batch.chosen_lengths.to(chosen.device), batch.rejected_lengths.to(chosen.device))
    losses = lp_dpo_loss(
        chosen, rejected, ref_chosen, ref_rejected, *lengths, beta=train.beta, alpha=train.alpha
    )
    chosen_rewards = train.beta * (chosen.detach() - ref_chosen)
    rejected_rewards = train.beta * (rejected.detach() - ref_rejected)
    rows = torch.stack([losses.detach(), chosen_rewards, rejected_rewards], 1).float().cpu()
    return losses, [(a, b, c) for a, b, c in rows.tolist()]


def _step_log(step: int, lang: str, rows: list[tuple[float, float, float]], lr: float) -> StepLog:
    """A minibatch's log line from its pairs' ``(loss, chosen reward, rejected reward)``."""
    count = len(rows)
    return StepLog(
        step=step,
        lang=lang,
        pairs=count,
        loss=math.fsum(r[0] for r in rows) / count,
        grad_norm=0.0,  # filled in after the window's clipping
        lr=lr,
        chosen_reward_mean=math.fsum(r[1] for r in rows) / count,
        rejected_reward_mean=math.fsum(r[2] for r in rows) / count,
        accuracy=sum(r[1] > r[2] for r in rows) / count,
    )


def _lr_factor(step: int, total: int, warmup: int) -> float:
    """LR factor: ``(s+1)/(W+1)`` for ``s < W`` warm-up steps, then ``(S-s)/(S-W)``."""
    return (step + 1) / (warmup + 1) if step < warmup else (total - step) / max(total - warmup, 1)


def train_round(
    model: nn.Module,
    tokenizer: Any,
    pairs: Sequence[PreferencePair],
    *,
    train: TrainConfig,
    ema: EMAConfig,
    seed: int,
    ref_logps: dict[str, tuple[float, float]] | None = None,
    schedule: Sequence[Sequence[int]] | None = None,
    progress: bool = False,
) -> tuple[TrainResult, GradientEMA]:
    """Train ``model`` in place for one epoch over ``pairs`` (see the module docstring).

    ``ref_logps``: ``pair_id -> (chosen, rejected)`` summed response log-probs at these same
    weights (from :func:`congrad.core.scoring.score_pairs`); ``None`` computes them here. Per
    minibatch of ``B`` pairs: one forward of ``(2B, T)`` rows, loss = the mean of the ``B``
    per-pair LP-DPO losses, one backward, one EMA update. ``seed`` seeds schedule and EMA.
    ``schedule``: the minibatches as lists of pair indices, each of one language (see
    :mod:`congrad.rounds.schedules`); default :func:`language_schedule`.
    """
    if not pairs:
        raise ValueError("train_round needs at least one preference pair, got none")
    if len({pair.pair_id for pair in pairs}) < len(pairs):
        raise ValueError("pair ids must be unique: reference log-probs are keyed by them")
    missing = [p.pair_id for p in pairs if ref_logps is not None and p.pair_id not in ref_logps]
    if missing:
        raise ValueError(f"ref_logps has no reference log-probs for pair {missing[0]!r}")
    started = time.perf_counter()
    world, me = distributed.world_size(), distributed.rank()  # sets up the process group
    accelerator = Accelerator(cpu=distributed.use_cpu(), mixed_precision=train.mixed_precision)
    engine = engines.engine_for(accelerator, train, world)  # DDP / FSDP2 or DeepSpeed ZeRO
    if schedule is None:
        schedule = language_schedule(pairs, train.batch_size, seed)
    for planned in schedule:
        if not planned or len({pairs[i].lang for i in planned}) != 1:
            raise ValueError("every minibatch of the schedule must hold pairs of one language")
    accumulation = train.gradient_accumulation_steps
    total_steps = math.ceil(len(schedule) / accumulation)
    warmup = math.ceil(train.warmup_ratio * total_steps)

    def references(lockstep: bool) -> dict[str, tuple[float, float]]:
        return reference_logps(  # the bare model: ranks run different numbers of forwards
            model,
            tokenizer,
            pairs,
            batch_size=train.batch_size,
            max_length=train.max_length,
            lockstep=lockstep,
        )

    if ref_logps is None and engine.references_before_prepare:  # before DeepSpeed partitions
        ref_logps = references(lockstep=False)
    parameters = [p for p in model.parameters() if p.requires_grad]
    groups = [  # no weight decay on norms and biases
        {"params": [p for p in parameters if p.ndim >= 2], "weight_decay": train.weight_decay},
        {"params": [p for p in parameters if p.ndim < 2], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=train.learning_rate)
    scheduler = LambdaLR(optimizer, lambda step: _lr_factor(step, total_steps, warmup))
    # Built on the whole model (ZeRO-3 leaves empty placeholders in the modules' weights)
    gradient_ema = GradientEMA(
        model, rank=ema.rank, iters=ema.iters, gamma=ema.gamma, include=ema.include, seed=seed
    )
    engine.prepare(model, optimizer, parameters)
    undo_checkpointing = enable_gradient_checkpointing(model, train)  # congrad.models.checkpointing
    rows: list[StepLog] = []
    pair_losses: dict[str, list[float]] = {}
    try:
        # Not earlier: the engine's parameter list must be taken before any forward, which
        # leaves FSDP2's root parameters swapped (congrad.rounds.engines.AccelerateEngine).
        if ref_logps is None:
            ref_logps = references(lockstep=distributed.is_sharded(model))
        encoded = [encode_pair(tokenizer, pair, train.max_length) for pair in pairs]
        model.zero_grad(set_to_none=True)
        model.train()
        quiet = not (progress and accelerator.is_local_main_process)
        for first in track(range(0, len(schedule), accumulation), "training", disable=quiet):
            window, step = schedule[first : first + accumulation], first // accumulation + 1
            lr = float(engine.optimizer.param_groups[0]["lr"])
            for indices in window:
                lang = pairs[indices[0]].lang
                # This rank's slice of the global minibatch, weighted so that DDP's mean over
                # the ranks is the minibatch's mean loss (module docstring).
                local, weight = distributed.split_evenly(indices, me, world), world / len(indices)
                if not local:  # fewer pairs than ranks: take part in the all-reduce with 0
                    local, weight = list(indices[:1]), 0.0
                batch = collate_pairs([encoded[i] for i in local], pad_token_id_of(tokenizer))
                refs = torch.tensor([ref_logps[pairs[i].pair_id] for i in local])
                losses, local_rows = _minibatch_losses(engine.prepared, batch, refs, train)
                gathered = distributed.gather(local_rows if weight else [])
                pair_rows = [row for part in gathered for row in part]  # in schedule order
                if not all(math.isfinite(r[0]) for r in pair_rows):  # the same on every rank
                    raise FloatingPointError(f"non-finite loss in step {step} ({lang})")
                if engine.backward(losses.sum() * weight):  # an fp16 overflow stays out
                    gradient_ema.update(lang, read=engine.gradient_reader)  # this minibatch's
                engine.accumulate(len(window))  # into the window's sum; the gradient is empty
                pair_losses.setdefault(lang, []).extend(r[0] for r in pair_rows)
                rows.append(_step_log(step, lang, pair_rows, lr))
            grad_norm = engine.step()  # the window's mean gradient: clipped, applied, emptied
            scheduler.step()
            rows[-len(window) :] = [replace(r, grad_norm=grad_norm) for r in rows[-len(window) :]]
        weights = engine.final_weights()  # DeepSpeed: while its engine still holds them
    finally:
        undo_checkpointing()
        model.zero_grad(set_to_none=True)
        accelerator.unwrap_model(engine.prepared, keep_fp32_wrapper=False)  # drops autocast
        model.eval()
        accelerator.free_memory()
    seconds = time.perf_counter() - started
    every_loss = [value for values in pair_losses.values() for value in values]
    mean_loss = math.fsum(every_loss) / len(every_loss)
    lang_mean_loss = {lang: math.fsum(v) / len(v) for lang, v in sorted(pair_losses.items())}
    result = TrainResult(total_steps, tuple(rows), mean_loss, seconds, lang_mean_loss, weights)
    return result, gradient_ema


def save_round_model(
    model: Any,
    tokenizer: Any,
    folder: str | os.PathLike[str],
    *,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> None:
    """Save weights (safetensors) and tokenizer to ``folder`` via a fsynced hidden sibling
    renamed into place (an old ``folder`` is renamed aside, then removed): ``folder`` never
    holds a half-written model, only the old complete one, briefly nothing, or the new one.
    A LoRA adapter is merged into the weights first (in place): the folder is a plain model.
    ``state_dict``: the weights to write instead of the model's own (an FSDP-sharded model's,
    gathered by :func:`congrad.parallel.distributed.full_state_dict`)."""
    model = merge_adapter(model)  # LoRA: save M_t = M_{t-1} + (alpha/r) B A (congrad.models.lora)
    target = Path(folder)
    # A save killed mid-way leaves a model-sized staging folder (.model.<pid>.*.tmp) that
    # no cleanup ran for: remove such leftovers, so crashes cost no disk.
    remove_stale_temporaries(target)
    staging = target.with_name(f".{target.name}.{os.getpid()}.{time.monotonic_ns()}.tmp")
    retired = staging.with_suffix(".old")
    staging.mkdir(parents=True)
    # transformers' from_pretrained records how a tokenizer was loaded ("is_local",
    # "local_files_only") and save_pretrained writes it out: a run resumed in a fresh
    # process, which reloads M_{t-1} from its folder, would save other bytes than an
    # uninterrupted one that kept it in memory. How it was loaded is no part of the model.
    for key in ("is_local", "local_files_only"):
        getattr(tokenizer, "init_kwargs", {}).pop(key, None)
    try:
        # save_pretrained edits a given state dict (drops tied duplicates): hand it a copy
        own = None if state_dict is None else dict(state_dict)
        model.save_pretrained(staging, state_dict=own)  # None: the model's own weights
        tokenizer.save_pretrained(staging)
        for path in [*staging.rglob("*"), staging]:
            _fsync(path)
        if target.exists():
            os.replace(target, retired)
        os.replace(staging, target)
        _fsync(target.parent)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(retired, ignore_errors=True)


def _fsync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
