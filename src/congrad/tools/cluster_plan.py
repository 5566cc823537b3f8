"""Per-GPU training memory of a :class:`~congrad.tools.memory_plan.MemoryPlan` on N GPUs, by engine
(``congrad plan --gpus N``).

In: a memory plan (one device's bytes of weights, gradients, AdamW states, fp32 masters,
one minibatch's activations, the EMAs) and a GPU count. Out: the bytes each GPU holds while
training under DDP, DeepSpeed ZeRO-2 and FSDP2 / ZeRO-3 (what congrad's trainer runs, see
docs/distributed.md, "On a GPU cluster"), as rows and a rich table.

Per GPU, with ``S = W + G + O + M`` the model state (weights, gradients, AdamW, masters):

* every engine: a rank's share of the minibatch, ``ceil(B / N)`` of ``B`` pairs (the
  activations are linear in the pairs), and the WHOLE EMA: every rank keeps all languages'
  factors, identical on every rank.
* DDP: ``S`` plus DDP's gradient buckets, one more gradient-sized buffer (accelerate's
  default, ``gradient_as_bucket_view=False``).
* ZeRO-2: whole weights, ``(G + O + M) / N``, and one tracked gradient matrix gathered
  whole (fp32) for the EMA at a time. DeepSpeed's reduce buckets are left out.
* FSDP2 / ZeRO-3: ``S / N``, one decoder layer's linear weights gathered for its forward and
  backward (prefetching may hold two), and one tracked gradient matrix gathered whole.

Estimates, like the plan's activations; congrad's other stages (scoring, HF generation) load
the whole model on each rank, so ``W`` must fit one GPU for them (or use vLLM with tensor
parallelism).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from congrad.tools.memory_plan import GB, GIB, MemoryPlan, PlanError

if TYPE_CHECKING:
    from rich.table import Table


def _ceil_div(count: int, parts: int) -> int:
    return -(-count // parts)


def per_gpu_bytes(plan: MemoryPlan, gpus: int) -> list[tuple[str, int, str]]:
    """``(engine, bytes per GPU, what is sharded)`` for DDP, ZeRO-2 and FSDP2 / ZeRO-3
    (LoRA: DDP alone, the only engine congrad trains adapters with)."""
    if gpus < 1:
        raise PlanError(f"--gpus must be >= 1, got {gpus}")
    share = _ceil_div(plan.batch_size, gpus)
    per_rank_batch = plan.batch_bytes * share // plan.batch_size  # linear in the pairs: exact
    common = per_rank_batch + plan.ema_bytes
    state = plan.state_bytes
    rows = [("DDP", state + plan.gradient_bytes + common, "nothing; + gradient buckets")]
    if plan.lora_r is not None:
        return rows
    gathered_matrix = 4 * max(m * n for _, m, n in plan.tracked)  # fp32, for the EMA
    layer = plan.dtype_bytes * sum(m * n for _, m, n in plan.tracked)
    sharded_rest = _ceil_div(plan.gradient_bytes + plan.optimizer_bytes + plan.master_bytes, gpus)
    rows.append(
        (
            "DeepSpeed ZeRO-2",
            plan.weights_bytes + sharded_rest + gathered_matrix + common,
            "gradients, AdamW, masters",
        )
    )
    rows.append(
        (
            "FSDP2 / ZeRO-3",
            _ceil_div(state, gpus) + layer + gathered_matrix + common,
            "weights too; + one layer gathered",
        )
    )
    return rows


def per_gpu_table(plan: MemoryPlan, gpus: int) -> Table:
    """:func:`per_gpu_bytes` as a rich table."""
    from rich.table import Table

    share = _ceil_div(plan.batch_size, gpus)
    table = Table(
        title=f"per GPU, training on {gpus} GPUs ({share} of {plan.batch_size} pairs per rank)",
        caption="Every rank keeps the whole EMA. Scoring and HF generation load the whole "
        "model on each rank.",
    )
    for column in ("engine", "GB", "GiB", "sharded"):
        table.add_column(column, justify="right" if column in ("GB", "GiB") else "left")
    for engine, size, sharded in per_gpu_bytes(plan, gpus):
        table.add_row(engine, f"{size / GB:,.2f}", f"{size / GIB:,.2f}", sharded)
    return table
