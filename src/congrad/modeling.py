"""Load the model and tokenizer a config names.

In: :class:`~congrad.config.ModelConfig` (or a folder of a round's saved model). Out:
``(model, tokenizer)`` on the best available device, weights in the configured dtype,
in eval mode. ``smollm2`` resolves to the offline SmolLM2-135M-Instruct, ``tiny-random``
to :func:`congrad.testing.tiny_causal_lm`; anything else goes to ``from_pretrained``
with ``trust_remote_code`` only when the config turns it on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import torch

from congrad.config import ModelConfig

TINY_RANDOM = "tiny-random"


def pick_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def load_model(
    config: ModelConfig, path: str | Path | None = None, *, seed: int = 0
) -> tuple[Any, Any]:
    """The seed model (``path`` None) or a saved round's model folder at ``path``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = pick_device()
    dtype = resolve_dtype(config.dtype, device)
    if path is None and config.name_or_path == TINY_RANDOM:
        from congrad.testing import tiny_causal_lm

        model, tokenizer = tiny_causal_lm(seed=seed, dtype=dtype)
        return cast(Any, model).to(device).eval(), tokenizer
    if path is None:
        from congrad.offline_models import resolve_model_path

        source = resolve_model_path(config.name_or_path)
        if not Path(source).exists() and "/" not in source:
            raise FileNotFoundError(
                f"model.name_or_path={config.name_or_path!r} is neither a folder, a hub id "
                "(owner/name), 'smollm2' nor 'tiny-random'"
            )
    else:
        source = str(path)
    tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=config.trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(
        source, dtype=dtype, trust_remote_code=config.trust_remote_code
    )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token  # padding is always masked out
    return cast(Any, model).to(device).eval(), tokenizer
