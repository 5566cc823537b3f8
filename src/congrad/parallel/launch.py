"""What the launcher asked for, read from the environment it sets (no torch import).

In: the process environment. Out: whether ``accelerate launch`` was given a DeepSpeed
config (it sets ``ACCELERATE_USE_DEEPSPEED=true`` on every rank), which both the process
group setup (:mod:`congrad.parallel.distributed`) and the ZeRO config
(:mod:`congrad.parallel.zero`) need to know.
"""

from __future__ import annotations

import os

DEEPSPEED_ENV = "ACCELERATE_USE_DEEPSPEED"


def deepspeed_requested() -> bool:
    """Whether the launcher asked for DeepSpeed (``accelerate launch`` with a DeepSpeed
    config sets ``ACCELERATE_USE_DEEPSPEED=true`` on every rank)."""
    return os.environ.get(DEEPSPEED_ENV, "false").lower() == "true"
