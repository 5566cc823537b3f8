"""CONGRAD pair scores in one batched forward and backward (docs/design.md section 6).

In: a model and tokenizer at the round-start weights, preference pairs, and the
per-language :class:`~congrad.core.gradient_ema.GradientEMA`. Out: one
:class:`~congrad.data.records.PairScore` per pair: the cosine between the gradient of the
pair's LP-DPO loss (reference = the same weights) and the PCGrad consensus, over the
tracked matrices, plus the reference log-probs the next training round needs.

Goes beyond the paper, which runs one backward per sample. For a tracked linear layer
``y = x W^T`` the gradient of pair ``i`` is ``G_i = sum_t delta_t x_t^T`` over the pair's
tokens ``t`` (chosen and rejected rows together; ``delta = dloss_i/dy``). Hooks on the
tracked layers capture ``x`` in the forward and ``delta`` in ONE backward of
``sum_i loss_i``; rows never interact, so ``delta`` on pair ``i``'s rows is that pair's
own. Per layer, whichever is cheaper for the batch:

* ``materialize``: ``G_i`` by a batched matmul (``S m n`` per pair, S = 2T tokens),
  then ``|G_i|^2`` and ``<G_i, C>`` against the dense consensus in ``O(m n)``;
* ``ghost``: ``|G_i|^2 = sum_{t,s} (delta_t . delta_s)(x_t . x_s)`` (``S^2 (m + n)``) and
  ``<G_i, A B^T> = sum_t (delta_t A) . (x_t B)`` (``S k (m + n)``, ``k = r L``).

Weights are frozen and the gradient enters at the input embeddings, so no weight
gradient is ever computed. Padding rows carry ``delta = 0`` (masked explicitly too).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from typing import Any, Literal, cast

import torch
from torch import nn

from congrad.core.consensus import Consensus
from congrad.core.gradient_ema import GradientEMA, tracked_linears
from congrad.core.losses import lp_dpo_loss, sequence_logps
from congrad.data.encoding import PairBatch, collate_pairs, encode_pair, pad_token_id_of
from congrad.data.records import PairScore, PreferencePair
from congrad.models.checkpointing import checkpointing_disabled
from congrad.parallel.distributed import is_main, map_in_waves

ScoringMethod = Literal["auto", "materialize", "ghost"]
_MATERIALIZE_CHUNK_BYTES = 256 * 2**20


@contextlib.contextmanager
def frozen_for_scoring(model: nn.Module) -> Iterator[None]:
    """Eval mode, no weight gradients and no gradient checkpointing (each tracked layer
    must run once per forward) for the duration; all restored afterwards."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    was_training = model.training
    try:
        for parameter, _ in flags:
            parameter.requires_grad_(False)
        model.eval()
        with checkpointing_disabled(model):
            yield
    finally:
        for parameter, flag in flags:
            parameter.requires_grad_(flag)
        model.train(was_training)


class _LayerStatistics:
    """Accumulates per-pair ``<G_i, C>`` and ``|G_i|^2`` over the tracked layers."""

    def __init__(
        self,
        consensus: Consensus,
        token_mask: torch.Tensor,
        method: ScoringMethod,
        dense_cache: dict[str, torch.Tensor],
    ) -> None:
        self.consensus = consensus
        self.token_mask = token_mask  # (2B, T)
        self.num_pairs = token_mask.shape[0] // 2
        self.method = method
        self.dense_cache = dense_cache
        self.dots = torch.zeros(self.num_pairs, dtype=torch.float64)
        self.sq_norms = torch.zeros(self.num_pairs, dtype=torch.float64)
        self.chosen_methods: dict[str, str] = {}

    def _pick(self, name: str, tokens: int, rows: int, cols: int, rank: int) -> str:
        if self.method != "auto":
            return self.method
        pairs = self.num_pairs
        form_dense = 0 if name in self.dense_cache else rows * cols * rank
        materialize = pairs * tokens * rows * cols + form_dense
        ghost = pairs * (tokens * tokens + tokens * rank) * (rows + cols)
        return "materialize" if materialize <= ghost else "ghost"

    def add(self, name: str, inputs: torch.Tensor, output_grad: torch.Tensor) -> None:
        """Fold in one layer: ``inputs`` ``(2B, T, n)``, ``output_grad`` ``(2B, T, m)``."""
        mask = self.token_mask.to(output_grad.device).unsqueeze(-1)
        delta = output_grad.float() * mask
        x = inputs.float()
        pairs = self.num_pairs
        # Pair i's tokens: its chosen row followed by its rejected row, S = 2T.
        delta = torch.cat([delta[:pairs], delta[pairs:]], dim=1)  # (B, S, m)
        x = torch.cat([x[:pairs], x[pairs:]], dim=1)  # (B, S, n)
        left, right = self.consensus.factors[name]
        left, right = left.to(x.device), right.to(x.device)
        rows, cols, rank = delta.shape[-1], x.shape[-1], left.shape[1]
        method = self._pick(name, x.shape[1], rows, cols, rank)
        self.chosen_methods[name] = method
        if method == "materialize":
            dense = self.dense_cache.get(name)
            if dense is None:
                dense = left @ right.T
            chunk = max(1, _MATERIALIZE_CHUNK_BYTES // (4 * rows * cols))
            dots, sq_norms = [], []
            for start in range(0, pairs, chunk):
                grads = delta[start : start + chunk].transpose(1, 2) @ x[start : start + chunk]
                sq_norms.append(grads.pow(2).sum(dim=(1, 2)))
                dots.append((grads * dense).sum(dim=(1, 2)))
            self.dots += torch.cat(dots).double().cpu()
            self.sq_norms += torch.cat(sq_norms).double().cpu()
        else:
            delta_gram = delta @ delta.transpose(1, 2)  # (B, S, S)
            input_gram = x @ x.transpose(1, 2)
            sq_norms_ghost = (delta_gram * input_gram).sum(dim=(1, 2))
            dots_ghost = ((delta @ left) * (x @ right)).sum(dim=(1, 2))
            self.dots += dots_ghost.double().cpu()
            self.sq_norms += sq_norms_ghost.double().cpu()


def _register_hooks(
    modules: dict[str, nn.Linear], statistics: _LayerStatistics
) -> list[torch.utils.hooks.RemovableHandle]:
    calls: dict[str, int] = {}

    def make_hook(name: str) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> None:
            calls[name] = calls.get(name, 0) + 1
            if calls[name] > 1:
                raise NotImplementedError(
                    f"tracked layer {name} ran twice in one forward (weight sharing or "
                    "activation recomputation); one-pass scoring needs one call per layer"
                )
            if output.requires_grad:
                inputs = args[0].detach()
                output.register_hook(lambda grad: statistics.add(name, inputs, grad))

        return hook

    return [module.register_forward_hook(make_hook(name)) for name, module in modules.items()]


def _score_batch(
    model: nn.Module,
    batch: PairBatch,
    modules: dict[str, nn.Linear],
    consensus: Consensus,
    *,
    beta: float,
    alpha: float,
    method: ScoringMethod,
    dense_cache: dict[str, torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    device = next(model.parameters()).device
    input_ids = batch.input_ids.to(device)
    attention_mask = batch.attention_mask.to(device)
    response_mask = batch.response_mask.to(device)
    statistics = _LayerStatistics(consensus, attention_mask.bool(), method, dense_cache)
    embedding_layer = cast(nn.Module, cast(Any, model).get_input_embeddings())
    embeddings = embedding_layer(input_ids).detach().requires_grad_(True)
    handles = _register_hooks(modules, statistics)
    try:
        with torch.enable_grad():
            logits = model(
                inputs_embeds=embeddings, attention_mask=attention_mask, use_cache=False
            ).logits
            logps = sequence_logps(logits, input_ids, response_mask)
            pairs = batch.num_pairs
            chosen, rejected = logps[:pairs], logps[pairs:]
            losses = lp_dpo_loss(
                chosen,
                rejected,
                chosen.detach(),
                rejected.detach(),
                batch.chosen_lengths.to(device),
                batch.rejected_lengths.to(device),
                beta=beta,
                alpha=alpha,
            )
            del logits
            torch.autograd.grad(losses.sum(), embeddings)
    finally:
        for handle in handles:
            handle.remove()
    missing = set(modules) - set(statistics.chosen_methods)
    if missing:
        raise RuntimeError(f"no gradient reached tracked layers {sorted(missing)[:3]}")
    return statistics.dots, statistics.sq_norms, chosen.detach().cpu(), rejected.detach().cpu()


def score_pairs(
    model: nn.Module,
    tokenizer: Any,
    pairs: Sequence[PreferencePair],
    ema: GradientEMA,
    *,
    beta: float,
    alpha: float,
    batch_size: int,
    max_length: int,
    orders: Sequence[Sequence[int]] | None = None,
    method: ScoringMethod = "auto",
    dense_cache_bytes: int = 2**30,
    progress: bool = False,
) -> list[PairScore]:
    """Score every pair by ``cos(grad loss_i, c)`` at the model's current weights.

    Args:
        pairs: records to score; returned scores follow this order.
        ema: per-language EMAs computed on this model's tracked matrices.
        beta, alpha: LP-DPO hyperparameters (they scale ``dot`` and ``grad_norm`` but
            never change the ranking, since the policy equals the reference here).
        batch_size: pairs per forward/backward (``2 * batch_size`` sequences).
        max_length: token budget of one prompt + response (see :mod:`congrad.data.encoding`).
        orders: PCGrad visiting orders (:func:`congrad.core.pcgrad.pcgrad_weights`).
        method: per-layer statistic ``"auto"`` (cheaper per layer), ``"materialize"`` or
            ``"ghost"``; all give the same numbers up to float rounding.
        dense_cache_bytes: budget for keeping dense per-layer consensus matrices between
            batches (the materialize path); past it they are re-formed per batch.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not pairs:
        return []
    modules = tracked_linears(model, ema.include)
    shapes = {name: tuple(module.weight.shape) for name, module in modules.items()}
    if shapes != ema.shapes:
        raise ValueError("the EMA was computed on a model whose tracked matrices differ")
    consensus = Consensus.from_ema(ema, orders)
    dense_cache: dict[str, torch.Tensor] = {}
    budget = dense_cache_bytes
    for name, (rows, cols) in shapes.items():
        if method != "ghost" and 4 * rows * cols <= budget:
            device = modules[name].weight.device
            dense_cache[name] = consensus.dense(name).to(device)
            budget -= 4 * rows * cols
    encoded = [encode_pair(tokenizer, pair, max_length) for pair in pairs]
    pad_id = pad_token_id_of(tokenizer)
    # Batch pairs of similar length together to waste little compute on padding.
    order = sorted(
        range(len(pairs)),
        key=lambda i: max(len(encoded[i].chosen_input_ids), len(encoded[i].rejected_input_ids)),
    )
    batches = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]

    def score(indices: list[int]) -> list[PairScore]:
        batch = collate_pairs([encoded[i] for i in indices], pad_id)
        dots, sq_norms, chosen_logps, rejected_logps = _score_batch(
            model,
            batch,
            modules,
            consensus,
            beta=beta,
            alpha=alpha,
            method=method,
            dense_cache=dense_cache,
        )
        scores = []
        for row, index in enumerate(indices):
            grad_norm = math.sqrt(max(float(sq_norms[row]), 0.0))
            dot = float(dots[row])
            denominator = grad_norm * consensus.norm
            scores.append(
                PairScore(
                    pair_id=pairs[index].pair_id,
                    lang=pairs[index].lang,
                    cosine=dot / denominator if denominator > 0 else 0.0,
                    dot=dot,
                    grad_norm=grad_norm,
                    ref_chosen_logps=float(chosen_logps[row]),
                    ref_rejected_logps=float(rejected_logps[row]),
                    chosen_length=encoded[index].chosen_length,
                    rejected_length=encoded[index].rejected_length,
                    truncated=encoded[index].truncated,
                )
            )
        return scores

    # Several processes: the batches are spread over the ranks (each scores whole batches,
    # so a pair's numbers do not depend on the process count) and gathered on every rank.
    results: dict[int, PairScore] = {}
    scored: Any = map_in_waves(batches, score)
    if progress and is_main():
        from rich.progress import track

        scored = track(scored, description="scoring pairs", total=len(batches))
    with frozen_for_scoring(model):
        for number, batch_scores in scored:
            results.update(zip(batches[number], batch_scores, strict=True))
    return [results[i] for i in range(len(pairs))]
