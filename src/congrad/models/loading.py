"""Load the model and tokenizer a config names.

Nothing heavy at import: torch and transformers load inside the functions.

In: :class:`~congrad.config.run.ModelConfig` (or a folder of a round's saved model). Out:
``(model, tokenizer)`` on the best available device, weights in the configured dtype,
in eval mode. ``smollm2`` resolves to the offline SmolLM2-135M-Instruct, ``tiny-random``
to :func:`congrad.models.tiny.tiny_causal_lm`; anything else goes to ``from_pretrained``
with ``trust_remote_code`` only when the config turns it on.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from congrad.config.run import ModelConfig
from congrad.errors import CongradError

if TYPE_CHECKING:
    import torch

TINY_RANDOM = "tiny-random"
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


class ModelLoadError(CongradError, RuntimeError):
    """The configured model cannot be found or loaded; the message says what to give."""


def check_model_source(name_or_path: str) -> None:
    """Refuse, before any work starts, a model that is neither built in, an existing
    folder, nor shaped like a hub id (``owner/name``)."""
    from congrad.models.offline import is_offline_alias

    if name_or_path == TINY_RANDOM or is_offline_alias(name_or_path):
        return
    if Path(name_or_path).expanduser().exists() or _HUB_ID.fullmatch(name_or_path):
        return
    raise ModelLoadError(
        f"model.name_or_path={name_or_path!r} is not an existing folder, a hub id "
        "(owner/name), 'smollm2' or 'tiny-random'"
    )


def pick_device() -> torch.device:
    """The GPU if there is one (this rank's own under a multi-process launcher), else CPU."""
    from congrad.parallel.distributed import device

    return device()


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    import torch

    if name == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def load_model(
    config: ModelConfig, path: str | Path | None = None, *, seed: int = 0
) -> tuple[Any, Any]:
    """The seed model (``path`` None) or a saved round's model folder at ``path``."""
    from transformers import AutoModelForCausalLM

    device = pick_device()
    dtype = resolve_dtype(config.dtype, device)
    if path is None and config.name_or_path == TINY_RANDOM:
        from congrad.models.tiny import tiny_causal_lm

        model, tokenizer = tiny_causal_lm(seed=seed, dtype=dtype)
        return cast(Any, model).to(device).eval(), tokenizer
    source = seed_model_source(config.name_or_path) if path is None else str(path)
    tokenizer = load_tokenizer(config, source)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            source, dtype=dtype, trust_remote_code=config.trust_remote_code
        )
    except OSError as error:  # transformers reports missing files and hub failures so
        raise _load_error(source, error) from None
    return cast(Any, model).to(device).eval(), tokenizer


def seed_model_source(name_or_path: str) -> str:
    """The folder or hub id from_pretrained loads the seed model from (an offline alias
    resolved to its cached folder), after :func:`check_model_source`. Not ``tiny-random``,
    which is built in memory."""
    from congrad.models.offline import resolve_model_path

    check_model_source(name_or_path)
    return resolve_model_path(name_or_path)


def load_tokenizer(config: ModelConfig, source: str | Path) -> Any:
    """The tokenizer of the model at ``source`` (a folder or hub id), without its weights;
    a missing pad token is the EOS token (padding is always masked out)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(
            str(source), trust_remote_code=config.trust_remote_code
        )
    except OSError as error:
        raise _load_error(str(source), error) from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _load_error(source: str, error: OSError) -> ModelLoadError:
    return ModelLoadError(
        f"could not load model {source!r}: {error}. Give a local model folder, a hub id "
        "you can reach, 'smollm2' or 'tiny-random' as model.name_or_path."
    )
