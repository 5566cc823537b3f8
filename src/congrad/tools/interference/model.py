"""The benchmark's tokenizer and small causal LM, built and pre-trained from scratch.

In: an :class:`~congrad.tools.interference.data.InterferenceSpec`, model sizes, a seed and
the pre-training corpus. Out: a word-level ``PreTrainedTokenizerFast`` (one token per
synthetic word; no chat template, see :func:`build_tokenizer`) and a ``LlamaForCausalLM``.

Why not :func:`congrad.models.tiny.tiny_causal_lm`: its byte-level BPE splits the synthetic
words into several pieces each, so a symbol would not be one token and a response's
length would depend on how a word happens to split. The architecture is the same
(Llama, few layers, small hidden size).

Shared meaning across scripts is built in at initialisation: the input and output
embedding of word ``(lang, k)`` is ``alignment * u_k + (1 - alignment) * w_{lang,k} +
v_lang``, a symbol vector shared by every language, a word-specific vector and a script
vector (all Gaussian, std 0.1). ``alignment = 1`` models a multilingual LM whose languages
share representations; ``0`` one whose languages share nothing but the transformer
weights. Pre-training (plain next-token loss on
:func:`~congrad.tools.interference.data.pretrain_corpus`) then teaches the format, each
script and both the shared and the language's own answers, without deciding between them.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any, cast

import torch

from congrad.tools.interference.data import InterferenceSpec, vocabulary
from congrad.util.seeds import stable_seed

SPECIAL_TOKENS = ["<|pad|>", "<|unk|>", "<|end|>"]


def build_tokenizer(spec: InterferenceSpec) -> Any:
    """A word-level tokenizer over every language's words (whitespace-split), without a
    chat template: a pair is encoded as prompt words, then response words and the end
    token, so the answer symbol is predicted right at the prompt's last symbol."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = [word for lang_words in vocabulary(spec).values() for word in lang_words]
    table = {token: index for index, token in enumerate(SPECIAL_TOKENS + words)}
    backend = Tokenizer(models.WordLevel(table, unk_token="<|unk|>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<|end|>", pad_token="<|pad|>", unk_token="<|unk|>"
    )


def build_model(
    spec: InterferenceSpec,
    tokenizer: Any,
    *,
    seed: int,
    hidden_size: int = 64,
    num_layers: int = 2,
    alignment: float = 1.0,
) -> Any:
    """A random ``LlamaForCausalLM`` with script-aligned embeddings (module docstring)."""
    from transformers import LlamaForCausalLM

    from congrad.models.tiny import tiny_llama_config

    if not 0 <= alignment <= 1:
        raise ValueError(f"alignment must lie in [0, 1], got {alignment}")
    config = tiny_llama_config(tokenizer, hidden_size, num_layers, max_positions=64)
    generator = torch.Generator().manual_seed(stable_seed(seed, "bench-model"))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(stable_seed(seed, "bench-weights"))
        model = cast(Any, LlamaForCausalLM(config))
    words = vocabulary(spec)
    width = spec.symbols + 1  # symbols and the filler
    with torch.no_grad():
        for matrix in (model.get_input_embeddings().weight, model.get_output_embeddings().weight):
            shared = 0.1 * torch.randn(width, hidden_size, generator=generator)
            for lang_words in words.values():
                own = 0.1 * torch.randn(width, hidden_size, generator=generator)
                script = 0.1 * torch.randn(hidden_size, generator=generator)
                ids = tokenizer.convert_tokens_to_ids(lang_words)
                matrix[ids] = alignment * shared + (1 - alignment) * own + script
    return model


def _encode_text(tokenizer: Any, prompt: str, response: str) -> list[int]:
    """Prompt, response, end token: the sequence :func:`congrad.data.encoding.encode_pair`
    builds for a tokenizer without a chat template."""
    ids = tokenizer(f"{prompt} {response}", add_special_tokens=False)["input_ids"]
    return [int(i) for i in ids] + [int(tokenizer.eos_token_id)]


def _lm_batch(rows: Sequence[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    for index, row in enumerate(rows):
        input_ids[index, : len(row)] = torch.tensor(row)
        labels[index, : len(row)] = torch.tensor(row)
    return input_ids, labels


def pretrain(
    model: Any,
    tokenizer: Any,
    corpus: Sequence[tuple[str, str]],
    *,
    steps: int,
    batch_size: int = 32,
    learning_rate: float = 3e-3,
    seed: int,
) -> list[float]:
    """Next-token training on ``corpus`` (batches drawn with a seeded ``random.Random``);
    returns the loss of every step. The model is left in eval mode."""
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    rng = random.Random(stable_seed(seed, "pretrain-batches"))
    encoded = [_encode_text(tokenizer, prompt, response) for prompt, response in corpus]
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.0)
    losses = []
    model.train()
    for step in range(steps):
        input_ids, labels = _lm_batch(rng.sample(encoded, batch_size), tokenizer.pad_token_id)
        mask = (input_ids != tokenizer.pad_token_id).long()
        loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for group in optimizer.param_groups:  # linear decay to 0
            group["lr"] = learning_rate * (1 - step / steps)
        optimizer.step()
        losses.append(loss.item())
    model.zero_grad(set_to_none=True)
    model.eval()
    return losses
