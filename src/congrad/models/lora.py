"""LoRA adapters for CONGRAD rounds (peft, optional: ``pip install 'congrad[lora]'``).

In: a plain causal LM at the round-start weights M_{t-1} and a
:class:`~congrad.config.run.LoRAConfig`. Out: the same model wrapped as a peft model with a
FRESH adapter (:func:`attach_adapter`), and after training the plain model with that
adapter merged into its weights (:func:`merge_adapter`), which is M_t.

How rounds use adapters (docs/design.md section 4 says "with LoRA: the LoRA A/B
matrices"). Each round trains a fresh adapter on M_{t-1} and merges it when saving M_t,
so every saved round is a plain model folder (vLLM, evaluation and the next round load it
as any model), and the DPO reference stays M_{t-1} exactly as in the paper. We do not
stack adapters: a stack would make M_t's forward depend on t adapters and the reference
on t - 1 of them, for no gain over merging (the merged sum is the same function up to the
weights' rounding: in bf16 the merged weights are rounded once, where an unmerged stack
would add the adapter's output in full precision).

What is tracked. With LoRA the base weights are frozen, so the gradient EMA and the
CONGRAD scores track the trainable ``lora_A`` ``(r, n)`` and ``lora_B`` ``(m, r)``
linears (:data:`LORA_INCLUDE`, the default of
:func:`congrad.core.gradient_ema.tracked_linears` on a model with adapters). peft computes
``y = W x + s B A x`` with ``s = alpha / r`` as two ``nn.Linear`` calls, so the one-pass
scorer's hooks (``G = sum_t delta_t x_t^T`` per linear) apply unchanged.

Why A's initialisation is the same every round. A fresh adapter has ``B = 0``. For a
pair's loss with full-weight gradient ``G`` (``m x n``) at that layer, the adapter's
gradients are then ``dL/dA = s B^T G = 0`` and ``dL/dB = s G A^T``: a scored pair's
gradient is ``s G A^T``, the full gradient projected by ``A``. The EMA that round t
scores against was accumulated while training round t - 1's adapter, whose ``A`` started
from its own initialisation. Inner products ``<s G_i A^T, s G_k A'^T>`` compare
gradients only when ``A' = A`` (then ``A^T A`` is near a multiple of the identity and
the score is a random-projection sketch of the full-gradient cosine, as in LESS);
independent draws give a near-zero, meaningless number. So ``A`` is drawn from
``model.lora.init_seed`` and the layer's name (never the global RNG), identically in
every round and process. The A half of every scored gradient is zero; it still counts
in the EMA and its Gram matrix (A moves once B does).
"""

from __future__ import annotations

import contextlib
import math
import re
import warnings
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from congrad.config.base import LoRAError  # torch-free, for congrad.errors
from congrad.config.run import LoRAConfig
from congrad.util.seeds import stable_seed

ADAPTER = "default"
#: Weight-name patterns of the tracked matrices of a model with an adapter.
LORA_INCLUDE = [f"*.lora_A.{ADAPTER}.weight", f"*.lora_B.{ADAPTER}.weight"]
_LORA_LINEAR = re.compile(rf"\.lora_([AB])\.{ADAPTER}$")
_PEFT_PREFIX = "base_model.model."


_MISSING_PEFT = (
    "model.lora.enabled=true needs peft: pip install 'congrad[lora]' "
    "(or set model.lora.enabled=false)"
)


def check_lora_available(lora: LoRAConfig) -> None:
    """Raise :class:`LoRAError` before any work when LoRA is on and peft is missing
    (looks the package up without importing it)."""
    import importlib.util

    if lora.enabled and importlib.util.find_spec("peft") is None:
        raise LoRAError(_MISSING_PEFT)


def require_peft() -> Any:
    """The ``peft`` module, or a :class:`LoRAError` saying how to install it."""
    try:
        import peft
    except ImportError:
        raise LoRAError(_MISSING_PEFT) from None
    return peft


def has_adapter(model: nn.Module) -> bool:
    """Whether ``model`` carries LoRA linears (``...lora_A.default``)."""
    return any(_LORA_LINEAR.search(name) for name, _ in model.named_modules())


def adapter_linears(model: nn.Module) -> dict[str, tuple[str, nn.Linear]]:
    """``name -> ("A" or "B", linear)`` for every LoRA linear of ``model``, names as
    in the base model (without peft's ``base_model.model.`` prefix)."""
    found = {}
    for name, module in model.named_modules():
        match = _LORA_LINEAR.search(name)
        if match and isinstance(module, nn.Linear):
            found[name.removeprefix(_PEFT_PREFIX)] = (match.group(1), module)
    return found


@torch.no_grad()
def reset_adapter(model: nn.Module, seed: int) -> None:
    """A fresh adapter: each ``A`` uniform in ``[-1/sqrt(n), 1/sqrt(n)]`` (the
    distribution of peft's default Kaiming init) from a generator seeded by ``seed`` and
    the layer's name, each ``B`` zero. Deterministic across rounds, devices and processes.
    """
    linears = adapter_linears(model)
    if not linears:
        raise ValueError("reset_adapter: the model has no LoRA linears")
    for name, (kind, linear) in linears.items():
        weight = linear.weight
        if kind == "B":
            weight.zero_()
            continue
        generator = torch.Generator().manual_seed(stable_seed("lora-A", seed, name))
        bound = 1.0 / math.sqrt(weight.shape[1])
        values = torch.rand(weight.shape, generator=generator, dtype=torch.float64)
        weight.copy_(((2 * values - 1) * bound).to(weight.dtype))


def attach_adapter(model: Any, lora: LoRAConfig) -> Any:
    """``model`` itself when ``lora.enabled`` is false; else a peft model around it with a
    fresh adapter (:func:`reset_adapter`). peft edits ``model`` in place (its target
    linears become LoRA layers) until :func:`merge_adapter` or :func:`detach_adapter`."""
    if not lora.enabled:
        return model
    peft = require_peft()
    if isinstance(model, peft.PeftModel) or has_adapter(model):
        raise ValueError("the model already carries a LoRA adapter; merge or detach it first")
    config = peft.LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        bias="none",
    )
    try:
        with warnings.catch_warnings(), torch.random.fork_rng(devices=[]):
            # peft's own init draws from the global RNG (then overwritten below), and reads
            # transformers' deprecated is_gradient_checkpointing.
            warnings.filterwarnings("ignore", category=FutureWarning)
            wrapped = peft.get_peft_model(model, config)
    except ValueError as error:  # "Target modules {...} not found in the base model"
        names = sorted(
            {
                name.rsplit(".", 1)[-1]
                for name, m in model.named_modules()
                if isinstance(m, nn.Linear)
            }
        )
        raise LoRAError(
            f"model.lora.target_modules={list(lora.target_modules)} do not fit this model "
            f"({str(error).splitlines()[0][:200]}); its linear layers are named {names}"
        ) from None
    reset_adapter(wrapped, lora.init_seed)
    return wrapped


def merge_adapter(model: Any) -> Any:
    """The plain model with the adapter merged into its weights (``W + (alpha/r) B A``);
    a model without an adapter is returned as is. The peft wrapper is spent afterwards:
    use the returned model (the same object peft wrapped)."""
    if not has_adapter(model):
        return model
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        return model.merge_and_unload()


def detach_adapter(model: Any) -> Any:
    """The plain model with the adapter removed unmerged: the base weights as they were."""
    if not has_adapter(model):
        return model
    return model.unload()


@contextlib.contextmanager
def adapter_attached(model: Any, lora: LoRAConfig) -> Iterator[Any]:
    """A fresh adapter on ``model`` for the duration (scoring at M_{t-1}), removed
    unmerged afterwards; ``model`` itself when LoRA is off."""
    wrapped = attach_adapter(model, lora)
    try:
        yield wrapped
    finally:
        if wrapped is not model:
            detach_adapter(wrapped)
