"""The training backends behind one small adapter, so :func:`congrad.rounds.train.train_round`
reads straight through (in the spirit of OpenRLHF's strategy objects).

In: the round's :class:`~accelerate.Accelerator` (which backend the launcher asked for), the
model, congrad's AdamW and its trainable parameters. Out: an engine that runs one
minibatch's backward into an EMPTY gradient, says where the gradient EMA reads it, holds it
aside in its accumulation window, steps the optimizer (returning the gradient norm before
clipping), and hands over the trained weights where the backend keeps them to itself.

Two backends (:func:`engine_for` picks one):

* :class:`AccelerateEngine`: one process, DDP, or FSDP version 2 (accelerate's, or a model
  the caller sharded with ``fully_shard``). The gradient lives in ``.grad``.
* :class:`ZeroEngine`: DeepSpeed ZeRO 2/3 (:mod:`congrad.parallel.zero`). The gradient lives
  in DeepSpeed's partitions; its engine owns backward, clipping and the step.

FSDP version 1 (flat parameters: no per-matrix ``.grad``) is refused by :func:`engine_for`.
Every method runs the same floating-point operations in the same order as the loop did
before it was split out (the tests compare with one-process references to 1e-6).

The loop, per accumulation window of ``n`` minibatches::

    for each minibatch:
        if engine.backward(loss):           # False: an fp16 overflow, kept out of the EMA
            ema.update(lang, read=engine.gradient_reader)
        engine.accumulate(n)                # the window's running sum takes it; gradient empty
    grad_norm = engine.step()
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, TypeAlias

import torch
from accelerate import Accelerator
from torch import nn

from congrad.config.run import TrainConfig
from congrad.models.lora import has_adapter
from congrad.parallel import distributed, zero

#: What :meth:`congrad.core.gradient_ema.GradientEMA.update` gets as ``read``: a tracked
#: weight's whole gradient of the last minibatch; ``None`` reads ``.grad`` (FSDP2 shards
#: gathered).
GradientReader: TypeAlias = Callable[[torch.Tensor], torch.Tensor | None] | None


def uses_deepspeed(accelerator: Accelerator) -> bool:
    """Whether the launcher asked for DeepSpeed ZeRO (:mod:`congrad.parallel.zero`). The EMA
    needs each
    tracked matrix's whole gradient per minibatch: DDP holds it, FSDP2 holds a ``DTensor``
    shard the EMA gathers, DeepSpeed a partition :func:`congrad.parallel.zero.full_grad` gathers.
    FSDP1's flat parameters hide it, so FSDP1 is refused, saying what to use instead."""
    kind = str(getattr(accelerator.distributed_type, "value", accelerator.distributed_type))
    plugin = getattr(accelerator.state, "fsdp_plugin", None)
    if "FSDP" in kind and getattr(plugin, "fsdp_version", 1) != 2:
        raise NotImplementedError(
            f"train_round supports DDP, FSDP version 2 and DeepSpeed ZeRO 2/3, not {kind} "
            "version 1: the gradient EMA must read each tracked matrix's gradient of every "
            "minibatch. Use configs/accelerate/fsdp2-*.yaml, zero*-*.yaml or ddp-*.yaml."
        )
    return "DEEPSPEED" in kind


def engine_for(accelerator: Accelerator, train: TrainConfig, world: int) -> TrainEngine:
    """The engine for the backend the launcher asked for, not yet prepared (call
    :meth:`TrainEngine.prepare`). Right after creating ``accelerator``: under DeepSpeed its
    plugin has just told transformers to partition every later load, which this undoes
    (:func:`congrad.parallel.zero.load_models_whole`). Refuses FSDP version 1."""
    if uses_deepspeed(accelerator):
        zero.load_models_whole()  # the plugin just told transformers to partition loads
        return ZeroEngine(accelerator, train, world)
    return AccelerateEngine(accelerator, train, world)


class TrainEngine(ABC):
    """One backend's backward, gradient read, accumulation and step, for congrad's loop.

    Holds the accelerator, the training settings (the clipping norm), and after
    :meth:`prepare` the model as the forward must run it (``prepared``: a DDP wrapper, a
    DeepSpeedEngine, or the model itself), the optimizer as prepared, the trainable
    parameters the window's gradient is held aside for, and that running sum
    (``running``: one tensor or ``None`` per parameter, emptied by :meth:`step`).
    """

    #: Whether the reference log-probs must be measured before :meth:`prepare` (a backend
    #: that casts and partitions the weights); otherwise after it (an FSDP2-sharded forward
    #: must then run in lockstep on every rank).
    references_before_prepare: bool = False

    prepared: Any
    optimizer: Any
    parameters: list[nn.Parameter]
    running: list[Any]

    def __init__(self, accelerator: Accelerator, train: TrainConfig, world: int) -> None:
        self.accelerator, self.train, self.world = accelerator, train, world

    def prepare(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, parameters: list[nn.Parameter]
    ) -> None:
        """Wrap ``model`` and ``optimizer`` (built on ``parameters``, the trainable ones) for
        this backend, refusing what it cannot train (LoRA with DeepSpeed or FSDP). Before any
        training forward (see :class:`AccelerateEngine`)."""
        self.parameters = parameters
        self._prepare(model, optimizer)
        self.running = [None] * len(self.parameters)

    @abstractmethod
    def _prepare(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None: ...

    @abstractmethod
    def backward(self, loss: torch.Tensor) -> bool:
        """Backpropagate one minibatch's ``loss`` into an empty gradient (the window's sum
        is held aside); whether that gradient may enter the EMA (False: an fp16 overflow)."""

    @property
    @abstractmethod
    def gradient_reader(self) -> GradientReader:
        """What :meth:`congrad.core.gradient_ema.GradientEMA.update` reads the last
        minibatch's gradient with, after :meth:`backward` and before :meth:`accumulate`."""

    @abstractmethod
    def accumulate(self, window: int) -> None:
        """Move the last minibatch's gradient, divided by ``window`` (its accumulation
        window's minibatch count), into the window's running sum, leaving the backend's
        gradient empty for the next minibatch."""

    @abstractmethod
    def step(self) -> float:
        """Put the window's sum back, clip it to ``train.max_grad_norm``, take the optimizer
        step and empty the gradients; the gradient norm before clipping."""

    def final_weights(self) -> dict[str, torch.Tensor] | None:
        """The trained weights where only the backend holds them (collective: every rank
        calls it after the last :meth:`step`); ``None``: the model's own are trained."""
        return None


def _unscale(parameters: list[nn.Parameter], loss_scale: float) -> bool:
    """Divide ``.grad`` by the fp16 loss scale (1 without fp16); whether all is finite."""
    grads = [p.grad for p in parameters if p.grad is not None and loss_scale != 1.0]
    for grad in grads:
        grad.div_(loss_scale)
    return not grads or bool(torch.stack([grad.isfinite().all() for grad in grads]).all())


def _accumulate(parameters: list[nn.Parameter], running: list[Any], window: int) -> None:
    """Move ``.grad / window`` into the window's running sum; every ``.grad`` ends None."""
    for index, parameter in enumerate(parameters):
        if parameter.grad is not None:
            grad = parameter.grad.div_(window)  # window 1: exact no-op, no copy
            running[index] = grad if running[index] is None else running[index].add_(grad)
            parameter.grad = None


class AccelerateEngine(TrainEngine):
    """Plain accelerate: one process, DDP (``accelerator.prepare`` wraps the model), or FSDP
    version 2 (accelerate's, which shards in ``prepare``, or a model the caller already
    sharded with ``fully_shard``: then only the optimizer is prepared, no DDP wrapper).

    Holds the window's running sum of ``.grad`` tensors (one extra gradient buffer when
    accumulating) and the fp16 loss scale of the last backward. Each minibatch is
    backpropagated into an EMPTY ``.grad`` and divided by the loss scale (a power of two, so
    exactly; 1 without fp16), so the EMA reads exactly its gradient of its mean loss whatever
    the accumulation or loss scale; :meth:`accumulate` moves it, divided by the window's
    minibatch count, into the sum. :meth:`step` multiplies the sum back by the scale (the
    scaler unscales in clipping and skips an overflowed step), clips and steps.
    """

    _scale = 1.0

    def _prepare(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        accelerator = self.accelerator
        if distributed.is_sharded(model):  # sharded by the caller (fully_shard): no DDP wrapper
            self.prepared, self.optimizer = model, accelerator.prepare(optimizer)
        else:
            self.prepared, self.optimizer = accelerator.prepare(model, optimizer)
        if distributed.is_sharded(model):  # fully_shard put DTensor parameters in their place
            if has_adapter(model):
                raise NotImplementedError(
                    "LoRA with FSDP is not supported: the adapter could not be merged into "
                    "sharded weights. Use LoRA with DDP (the adapter's gradients are small) or "
                    "FSDP alone."
                )
            # Here, not after a forward: after one FSDP2 leaves the ROOT module's parameters
            # unsharded (plain tensors swapped in until the next backward), so this list must
            # be taken before any forward, or it would name the wrong tensors.
            self.parameters = [p for p in model.parameters() if p.requires_grad]

    def backward(self, loss: torch.Tensor) -> bool:
        accelerator = self.accelerator
        accelerator.backward(loss)
        self._scale = float(accelerator.scaler.get_scale()) if accelerator.scaler else 1.0
        return _unscale(self.parameters, self._scale)  # .grad: exactly this minibatch's

    @property
    def gradient_reader(self) -> GradientReader:
        return None  # .grad, an FSDP2 shard gathered whole (congrad.core.gradient_ema)

    def accumulate(self, window: int) -> None:
        _accumulate(self.parameters, self.running, window)

    def step(self) -> float:
        scale = self._scale
        for parameter, grad in zip(self.parameters, self.running, strict=True):
            parameter.grad = grad if grad is None or scale == 1.0 else grad.mul_(scale)
        norm = self.accelerator.clip_grad_norm_(self.parameters, self.train.max_grad_norm)
        grad_norm = float(norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.running = [None] * len(self.parameters)
        return grad_norm


class ZeroEngine(TrainEngine):
    """DeepSpeed ZeRO 2/3 (:mod:`congrad.parallel.zero`): ``accelerator.prepare`` returns a
    DeepSpeedEngine, which owns backward, clipping, the step and the partitions; ``.grad``
    stays empty.

    Holds the engine (``prepared``) and, when accumulating (ZeRO-3 only,
    :func:`congrad.parallel.zero.configure`), the window's running sum of this rank's gradient
    PARTITIONS. The reference log-probs are measured before :meth:`prepare`, which casts and
    partitions the weights. Each minibatch is one ``engine.backward``; the EMA reads each
    tracked matrix's whole gradient from the partitions (:func:`congrad.parallel.zero.full_grad`,
    one matrix at a time, collective); :meth:`accumulate` holds the partitions aside and
    empties DeepSpeed's (:func:`congrad.parallel.zero.hold_aside`); :meth:`step` puts their
    mean back and lets the engine clip and step. :meth:`final_weights` gathers the trained
    fp32 master weights while the engine still holds them: after it is released they read
    as zeros, so the caller saves these, not the model's own.
    """

    references_before_prepare = True

    def _prepare(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        if has_adapter(model):
            raise NotImplementedError(
                "LoRA with DeepSpeed is not supported: use LoRA with DDP (configs/accelerate/"
                "ddp-*.yaml; the adapter's gradients are small) or DeepSpeed without LoRA."
            )
        config = self.accelerator.state.deepspeed_plugin.deepspeed_config
        zero.configure(config, self.train, self.world)
        self.prepared, self.optimizer = self.accelerator.prepare(model, optimizer)
        self._model = model

    def backward(self, loss: torch.Tensor) -> bool:
        self.prepared.backward(loss)
        return True  # no fp16 under DeepSpeed (congrad.parallel.zero.configure)

    @property
    def gradient_reader(self) -> GradientReader:
        return zero.full_grad

    def accumulate(self, window: int) -> None:
        if window > 1:  # ZeRO-3 (congrad.parallel.zero.configure refuses ZeRO-2)
            zero.hold_aside(self.prepared, self.parameters, self.running, window)

    def step(self) -> float:
        zero.give_back(self.parameters, self.running)  # nothing held aside: a no-op
        self.prepared.step()  # clips to train.max_grad_norm, steps, zeroes the partitions
        self.running = [None] * len(self.parameters)
        return float(self.prepared.get_global_grad_norm())

    def final_weights(self) -> dict[str, torch.Tensor] | None:
        return zero.full_state_dict(self._model)
