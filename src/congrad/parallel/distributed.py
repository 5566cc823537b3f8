"""Ranks of a multi-process run (``torchrun`` / ``accelerate launch``), in one place.

In: the launcher's environment (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``,
``MASTER_PORT``). Out: this process's rank, the world size and device, a barrier, object
broadcast, and :func:`map_in_waves`, which spreads a list of independent work items over
the ranks and hands EVERY rank all results, in item order.

A process started without a launcher is a world of size 1: nothing here communicates and
every function reduces to the plain single-process computation, so there is one code path.
The process group is set up by accelerate's ``PartialState`` (NCCL on GPUs, gloo on CPUs)
the first time a rank question is asked in a launched process.

How congrad uses the ranks (the loop decides, :mod:`congrad.pipeline.runner`): prompts, pairs,
evaluation MCQ and verdicts, and the vLLM stages run on the main process alone, as a world of
one (:func:`solo`), while the others wait at a barrier; generation, judging and evaluation
answers with the HF backend, the CONGRAD scoring pass and training run on all ranks, each
on its share of the work. Only the main process writes artifacts, so every rank must see
the same ``output_dir`` (a shared file system when several nodes take part).

Work items are whole batches cut from the full list exactly as one process cuts them, and
a batch's numbers do not depend on which rank computes it: a run on N processes writes the
records a single process writes (to float tolerance across different devices).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from contextvars import ContextVar
from datetime import timedelta
from typing import Any, TypeVar, cast

import torch

from congrad.parallel.launch import deepspeed_requested

T = TypeVar("T")
R = TypeVar("R")

TIMEOUT_ENV = "CONGRAD_DIST_TIMEOUT"
"""Seconds a rank waits at a collective (default 4 hours): the other ranks wait while the
main process runs a main-only stage (judging with an API judge, evaluation), which can
take far longer than torch's default 10-30 minutes."""


_SOLO: ContextVar[bool] = ContextVar("congrad_solo", default=False)


def launched() -> bool:
    """Whether a launcher started this process as one of several (and it is not running a
    main-only stage, see :func:`solo`)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and not _SOLO.get()


@contextlib.contextmanager
def solo() -> Iterator[None]:
    """The main process runs a stage alone (the others wait at a barrier): inside, this
    process is a world of one, so the stage's broadcasts, gathers and waves reduce to the
    single-process computation instead of waiting for ranks that never come."""
    token = _SOLO.set(True)
    try:
        yield
    finally:
        _SOLO.reset(token)


def use_cpu() -> bool:
    """accelerate must be told to use CPU processes (gloo) when there is no GPU. Except
    under DeepSpeed (:mod:`congrad.parallel.zero`): accelerate only picks DeepSpeed for a run not
    marked CPU, so a GPU-less DeepSpeed run (the CPU tests) names gloo instead."""
    return not torch.cuda.is_available() and not deepspeed_requested()


def _state() -> Any:
    from accelerate import PartialState

    seconds = float(os.environ.get(TIMEOUT_ENV, 4 * 3600))
    options: dict[str, Any] = {"timeout": timedelta(seconds=seconds)}
    if deepspeed_requested() and not torch.cuda.is_available():
        options["backend"] = "gloo"
    return PartialState(cpu=use_cpu(), **options)


def world_size() -> int:
    return int(_state().num_processes) if launched() else 1


def rank() -> int:
    return int(_state().process_index) if launched() else 0


def is_main() -> bool:
    return rank() == 0


def device() -> torch.device:
    """This rank's device: its own GPU (``cuda:<local rank>``) or the CPU."""
    if launched():
        return torch.device(_state().device)
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def barrier() -> None:
    if launched():
        _state().wait_for_everyone()


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """The main process runs the block first (it may fill a cache, e.g. convert the
    offline model); the others run it after, reading what it left."""
    if not launched():
        yield
        return
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


def broadcast(value: T) -> T:
    """The main process's ``value``, on every rank (picklable objects)."""
    if not launched():
        return value
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def gather(value: T) -> list[T]:
    """Every rank's ``value``, in rank order, on every rank (picklable objects)."""
    if not launched():
        return [value]
    values: list[Any] = [None] * world_size()
    torch.distributed.all_gather_object(values, value)
    return values


def all_reduce_sum(tensors: Sequence[torch.Tensor]) -> None:
    """Replace each tensor by its sum over the ranks, in place."""
    if launched():
        for tensor in tensors:
            torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.SUM)


def map_in_waves(
    items: Sequence[T], work: Callable[[T], R], *, lockstep: bool = False
) -> Iterator[tuple[int, R]]:
    """Yield ``(index, work(items[index]))`` for every item, in index order, on every rank.

    Wave ``w`` gives item ``w * W + r`` to rank ``r``; after each wave the results are
    gathered, so a caller can log them wave by wave (a crash loses one wave) and every rank
    runs the same number of collectives. ``lockstep``: a rank with no item in the last wave
    works on item 0 anyway and drops the result, for work that itself communicates (the
    forward of an FSDP-sharded model gathers each layer's weights from all ranks). With one
    process: a plain loop.
    """
    count = world_size()
    if count == 1:
        for index, item in enumerate(items):
            yield index, work(item)
        return
    me = rank()
    for first in range(0, len(items), count):
        index = first + me
        mine = (index, work(items[index])) if index < len(items) else None
        if mine is None and lockstep:
            work(items[0])  # keeps this rank in step with the others' collectives
        for entry in gather(mine):
            if entry is not None:
                yield entry


def split_evenly(indices: Sequence[int], part: int, parts: int) -> list[int]:
    """Part ``part`` of ``parts`` contiguous, near-equal slices of ``indices`` (the first
    ``len % parts`` slices one longer); some are empty when there are fewer items than parts.

    >>> [split_evenly([10, 11, 12, 13, 14], p, 3) for p in range(3)]
    [[10, 11], [12, 13], [14]]
    """
    base, extra = divmod(len(indices), parts)
    start = part * base + min(part, extra)
    return list(indices[start : start + base + (1 if part < extra else 0)])


def is_sharded(model: torch.nn.Module) -> bool:
    """Whether ``model``'s parameters are FSDP2 shards (``DTensor``), as after
    ``fully_shard`` or accelerate's FSDP (version 2) preparation."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(parameter, DTensor) for parameter in model.parameters())


def full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The whole (unsharded) state dict of an FSDP2-sharded ``model``, on the CPU of the
    main process (other ranks get an empty dict). Collective: every rank must call it.
    (DeepSpeed's weights are gathered by :func:`congrad.rounds.train.train_round` itself, before
    its engine lets go of them: :func:`congrad.parallel.zero.full_state_dict`.)"""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return cast(dict[str, torch.Tensor], get_model_state_dict(model, options=options))
