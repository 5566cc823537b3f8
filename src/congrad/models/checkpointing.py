"""Gradient (activation) checkpointing for training, and off for scoring.

In: a transformers model (plain or wrapped by peft) and ``train.gradient_checkpointing``.
Out: the model with checkpointing switched on (:func:`enable_gradient_checkpointing`,
which returns the function that switches it back), or a scope in which no layer
checkpoints (:func:`checkpointing_disabled`).

Training recomputes each decoder layer's forward in the backward pass (torch's
non-reentrant checkpoint, ``use_reentrant=False``, which needs no input that requires
grad and so works with frozen LoRA base weights): activation memory drops from
``34 h`` bytes per token and layer to about the layer inputs, for about one more forward.
The gradients are the same up to float rounding (tested).

The one-pass scorer (:mod:`congrad.core.scoring`) hooks the tracked linears and needs each to
run once per forward; a recomputed layer would fire its hooks twice (transformers 5.17
checkpoints a layer's ``__call__``, hooks included). It runs in eval mode, where transformers
does not checkpoint, and besides switches every layer's flag off for its pass with
:func:`checkpointing_disabled`, so scoring a checkpointing model equals scoring a plain one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from torch import nn

from congrad.config.run import TrainConfig


def _flagged(model: nn.Module) -> list[Any]:
    """Modules that carry transformers' per-layer ``gradient_checkpointing`` flag."""
    return [
        m for m in model.modules() if isinstance(getattr(m, "gradient_checkpointing", None), bool)
    ]


def is_checkpointing(model: nn.Module) -> bool:
    """Whether any layer of ``model`` checkpoints its activations in training."""
    return any(m.gradient_checkpointing for m in _flagged(model))


def enable_gradient_checkpointing(model: Any, train: TrainConfig) -> Callable[[], None]:
    """Switch checkpointing on when ``train.gradient_checkpointing``; returns the undo.

    Uses ``activation_checkpointing_enable`` (transformers >= 5.2x) or
    ``gradient_checkpointing_enable`` (earlier), always with ``use_reentrant=False``.
    A model already checkpointing, or a config with it off, is left alone (no-op undo).
    """
    if not train.gradient_checkpointing or is_checkpointing(model):
        return lambda: None
    # transformers also hooks the input embeddings to output tensors that require grad;
    # the undo removes that hook too unless it was there before.
    had_input_hooks = bool(getattr(model, "_require_grads_hooks", None))
    kwargs = {"use_reentrant": False}
    if callable(getattr(model, "activation_checkpointing_enable", None)):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        disable = model.activation_checkpointing_disable
    elif callable(getattr(model, "gradient_checkpointing_enable", None)):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        disable = model.gradient_checkpointing_disable
    else:
        raise ValueError(
            f"train.gradient_checkpointing=true: {type(model).__name__} is not a transformers "
            "model that supports it; set train.gradient_checkpointing=false"
        )
    if not is_checkpointing(model):
        raise ValueError(
            f"train.gradient_checkpointing=true: {type(model).__name__} has no layer that "
            "checkpoints; set train.gradient_checkpointing=false"
        )

    def undo() -> None:
        disable()
        if not had_input_hooks and callable(getattr(model, "disable_input_require_grads", None)):
            model.disable_input_require_grads()

    return undo


@contextlib.contextmanager
def checkpointing_disabled(model: nn.Module) -> Iterator[None]:
    """No layer checkpoints inside the scope; each layer's flag is restored afterwards."""
    flags = [(module, module.gradient_checkpointing) for module in _flagged(model)]
    try:
        for module, _ in flags:
            module.gradient_checkpointing = False
        yield
    finally:
        for module, flag in flags:
            module.gradient_checkpointing = flag
