"""DeepSpeed ZeRO stages 2 and 3 under ``accelerate launch``, as congrad's trainer needs them.

In: accelerate's DeepSpeed plugin (``accelerate launch`` with a ``deepspeed_config``, which
sets ``ACCELERATE_USE_DEEPSPEED``) and congrad's config. Out: a refusal, before any stage
runs, of a launch the loop cannot honour (:func:`check_launch`); the plugin's DeepSpeed
config filled in for congrad's own training loop (:func:`configure`); each tracked matrix's
whole gradient of the last minibatch (:func:`full_grad`); a ZeRO-3 accumulation window held
aside and given back (:func:`hold_aside`, :func:`give_back`); and the trained weights
gathered whole (:func:`full_state_dict`).

Why ZeRO needs its own path: after ``engine.backward`` DeepSpeed has reduced each gradient
into the partitions it owns (stage 2: gradients and optimizer state partitioned; stage 3:
the weights too) and ``param.grad`` is empty. The EMA reads the whole averaged gradient
through DeepSpeed's public ``safe_get_full_grad``, ONE matrix at a time, before
``engine.step()`` clips and applies it: the exact gradient a DDP run's EMA sees, for one
matrix of transient memory and a gather per matrix per minibatch (like FSDP2,
:mod:`congrad.core.gradient_ema`).

What congrad's loop fixes in the DeepSpeed config (:func:`configure`):

* DeepSpeed's ``gradient_accumulation_steps`` is 1: congrad accumulates. DeepSpeed would
  sum a window's gradients into its partitions, and the per-minibatch gradient the EMA
  needs would no longer be there to read. Under ZeRO-3 congrad holds the window's sum aside
  in this rank's partitions (:func:`hold_aside`: DeepSpeed's ``safe_get_local_grad``), empties
  DeepSpeed's, and puts the sum back before the step (:func:`give_back`), exactly as the
  DDP path holds ``.grad`` aside. ZeRO-2 has no such public access to a rank's partition,
  so there ``train.gradient_accumulation_steps`` must be 1 (raise ``train.batch_size``).
* ``gradient_clipping`` is ``train.max_grad_norm`` (DeepSpeed clips inside ``step``).
* the batch sizes are bookkeeping for DeepSpeed only (congrad cuts the minibatches itself):
  ``ceil(train.batch_size / W)`` per rank.
* the optimizer is congrad's AdamW and the schedule congrad's (no ``optimizer`` or
  ``scheduler`` section); precision is ``train.mixed_precision`` (bf16 keeps fp32 master
  weights in the optimizer; fp16's dynamic loss scale is refused).

The trained weights saved as ``M_t`` are DeepSpeed's fp32 master copies, gathered one matrix
at a time (``safe_get_full_fp32_param``), so bf16 training saves what a DDP run saves.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

from congrad.config.run import RunConfig, TrainConfig
from congrad.errors import CongradError
from congrad.parallel.launch import deepspeed_requested as requested

if TYPE_CHECKING:  # importing this module stays torch-free (the CLI preflight imports it)
    import torch
    from torch import nn


class ZeroConfigError(CongradError, ValueError):
    """The DeepSpeed config asks for something congrad's training loop cannot honour."""


def _is_auto(value: Any) -> bool:
    return value is None or value == "auto"


def configure(ds_config: dict[str, Any], train: TrainConfig, world: int) -> None:
    """Fill ``ds_config`` (the plugin's ``deepspeed_config``, edited in place before
    ``accelerator.prepare``) for congrad's loop; raise :class:`ZeroConfigError` naming the
    setting when it asks for something the loop cannot do (module docstring)."""
    stage = int(ds_config.get("zero_optimization", {}).get("stage", 0))
    if stage not in (2, 3):
        raise ZeroConfigError(
            f"DeepSpeed zero_optimization.stage={stage} is not supported: use stage 2 or 3 "
            "(configs/accelerate/zero*-8gpu.yaml), or plain DDP (ddp-*.yaml) for stage 0/1."
        )
    if train.gradient_accumulation_steps != 1 and stage != 3:
        raise ZeroConfigError(
            f"train.gradient_accumulation_steps={train.gradient_accumulation_steps} with "
            "DeepSpeed ZeRO-2: it sums a window's gradients into its partitions, and only "
            "under ZeRO-3 can a rank's partition be read and set (safe_get_local_grad), which "
            "congrad needs to read each minibatch's gradient alone. Use ZeRO-3 "
            "(configs/accelerate/zero3-*.yaml), set it to 1 and raise train.batch_size (the "
            "global minibatch, spread over the ranks), or use FSDP version 2."
        )
    accumulation = ds_config.get("gradient_accumulation_steps", "auto")
    if not _is_auto(accumulation) and int(accumulation) != 1:
        raise ZeroConfigError(
            f"DeepSpeed gradient_accumulation_steps={accumulation}: leave it 'auto' (or 1); "
            "congrad's train.gradient_accumulation_steps decides."
        )
    for section in ("optimizer", "scheduler"):
        if section in ds_config:
            raise ZeroConfigError(
                f"the DeepSpeed config has a '{section}' section: remove it; congrad trains "
                "with its own AdamW and schedule (train.learning_rate, train.warmup_ratio)."
            )
    fp16 = ds_config.get("fp16", {}).get("enabled") in (True, "true")
    if fp16 or train.mixed_precision == "fp16":
        raise ZeroConfigError(
            "DeepSpeed fp16 (train.mixed_precision=fp16 or the config's fp16 section) is not "
            "supported: its dynamic loss scale would reach the gradient EMA. Use "
            "train.mixed_precision=bf16, or 'no'."
        )
    clipping = ds_config.get("gradient_clipping", "auto")
    if not _is_auto(clipping) and float(clipping) != train.max_grad_norm:
        raise ZeroConfigError(
            f"DeepSpeed gradient_clipping={clipping} but train.max_grad_norm="
            f"{train.max_grad_norm}: leave it 'auto'; congrad's setting decides."
        )
    per_rank = math.ceil(train.batch_size / world)
    ds_config.update(
        gradient_accumulation_steps=1,
        gradient_clipping=train.max_grad_norm,
        train_micro_batch_size_per_gpu=per_rank,
        train_batch_size=per_rank * world,
    )


def check_launch(config: RunConfig) -> None:
    """Before any stage runs: refuse a DeepSpeed launch whose config congrad's loop cannot
    honour (:func:`configure` on a copy of the config accelerate will build from the
    launcher's environment; LoRA), rather than after round 1's generation. No-op without
    DeepSpeed."""
    if not requested():
        return
    if config.model.lora.enabled:
        raise ZeroConfigError(
            "model.lora with DeepSpeed is not supported: the adapter could not be merged into "
            "DeepSpeed's partitions. Use LoRA with DDP (configs/accelerate/ddp-*.yaml; the "
            "adapter's gradients are small) or DeepSpeed without LoRA."
        )
    import copy

    from accelerate.utils import DeepSpeedPlugin

    plugin = DeepSpeedPlugin()  # reads ACCELERATE_DEEPSPEED_* as the Accelerator will
    load_models_whole()  # building the plugin registered its config with transformers
    from congrad.parallel import distributed

    configure(copy.deepcopy(plugin.deepspeed_config), config.train, distributed.world_size())


def load_models_whole() -> None:
    """Keep later ``from_pretrained`` calls plain. accelerate's DeepSpeed plugin registers
    its config with transformers, which then loads every model partitioned (``zero.Init``)
    and generates with ``synced_gpus`` under stage 3; congrad's other stages load the round's
    model whole on each rank and spread their work unevenly. Call after each Accelerator."""
    from transformers.integrations import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()


def full_grad(parameter: torch.Tensor) -> torch.Tensor | None:
    """The whole gradient of ``parameter`` averaged over the ranks, after
    ``engine.backward`` and before ``engine.step``. Collective under stage 3 (and a
    reduction under stage 2): every rank calls it for the same parameters in the same
    order."""
    from deepspeed.utils import safe_get_full_grad

    return cast("torch.Tensor | None", safe_get_full_grad(parameter))


def hold_aside(
    engine: Any, parameters: Sequence[torch.Tensor], running: list[Any], window: int
) -> None:
    """ZeRO-3, inside an accumulation window, after the EMA read this minibatch's gradient:
    add this rank's gradient partitions divided by ``window`` (the window's minibatch count)
    to ``running`` (one partition per parameter, ``None`` at first) and empty DeepSpeed's,
    so the next minibatch's gradient is read alone. One extra partition of gradients."""
    from deepspeed.utils import safe_get_local_grad

    for index, parameter in enumerate(parameters):
        local = safe_get_local_grad(parameter)
        if local is not None:
            share = local.detach().div(window)  # a new tensor: DeepSpeed reuses its buffer
            running[index] = share if running[index] is None else running[index].add_(share)
    engine.optimizer.zero_grad()


def give_back(parameters: Sequence[torch.Tensor], running: list[Any]) -> None:
    """Put the window's summed partitions back for ``engine.step()`` (ZeRO-3)."""
    from deepspeed.utils import safe_set_local_grad

    for parameter, grad in zip(parameters, running, strict=True):
        if grad is not None:
            safe_set_local_grad(parameter, grad)


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole trained weights on the CPU of the main process (other ranks get an empty
    dict): each parameter's fp32 master copy, gathered from the optimizer's partitions one
    at a time, and the persistent buffers (never partitioned). Collective: every rank calls
    it after the last ``engine.step()``, while the engine still holds the partitions."""
    from deepspeed.utils import safe_get_full_fp32_param

    from congrad.parallel import distributed

    keep = distributed.is_main()
    state: dict[str, torch.Tensor] = {}
    for name, parameter in model.named_parameters(remove_duplicate=False):
        whole = safe_get_full_fp32_param(parameter)
        if whole is None:  # congrad trains every weight under DeepSpeed (no LoRA, no freezing)
            raise RuntimeError(f"DeepSpeed holds no fp32 master for {name!r}: is it frozen?")
        if keep:
            state[name] = whole.detach().to("cpu", copy=True)
    if keep:
        parameter_names = {name for name, _ in model.named_parameters(remove_duplicate=False)}
        for name, value in model.state_dict().items():
            if name not in parameter_names:
                state[name] = value.detach().to("cpu", copy=True)
    return state
