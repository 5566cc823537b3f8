"""A tiny random causal LM and tokenizer, built offline in about a second.

In: a seed. Out: ``(model, tokenizer)``: a 2-layer Llama-style ``LlamaForCausalLM`` with
random weights and a byte-level BPE tokenizer trained in-process on a small multilingual
text (so every Unicode string encodes), wrapped as a ``PreTrainedTokenizerFast`` with a
chat template. For tests, examples and users' own tests; nothing is downloaded.
"""

from __future__ import annotations

from typing import Any, cast

import torch

_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}<|end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

_CORPUS = [
    "The quick brown fox jumps over the lazy dog. Explain how photosynthesis works.",
    "Der schnelle braune Fuchs springt über den faulen Hund. Erkläre die Photosynthese.",
    "Le renard brun rapide saute par-dessus le chien paresseux. Explique la photosynthèse.",
    "El rápido zorro marrón salta sobre el perro perezoso. Explica la fotosíntesis.",
    "La volpe marrone veloce salta sopra il cane pigro. Spiega la fotosintesi.",
    "A rápida raposa marrom pula sobre o cão preguiçoso. Explique a fotossíntese.",
    "敏捷的棕色狐狸跳过了懒狗。请解释光合作用是如何进行的。",
    "素早い茶色の狐がのろまな犬を飛び越える。光合成の仕組みを説明してください。",
    "빠른 갈색 여우가 게으른 개를 뛰어넘는다. 광합성이 어떻게 작동하는지 설명하세요.",
    "الثعلب البني السريع يقفز فوق الكلب الكسول. اشرح كيف يعمل التمثيل الضوئي.",
    "तेज़ भूरी लोमड़ी आलसी कुत्ते के ऊपर कूदती है। प्रकाश संश्लेषण समझाइए।",
    "Con cáo nâu nhanh nhẹn nhảy qua con chó lười. Hãy giải thích quang hợp.",
    "Быстрая бурая лиса перепрыгивает через ленивую собаку. Объясните фотосинтез.",
]

SPECIAL_TOKENS = ["<|pad|>", "<|bos|>", "<|eos|>", "<|user|>", "<|assistant|>", "<|end|>"]


def tiny_tokenizer(vocab_size: int = 512) -> Any:
    """A byte-level BPE ``PreTrainedTokenizerFast`` with a chat template (deterministic)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(_CORPUS * 4, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|bos|>",
        eos_token="<|end|>",
        pad_token="<|pad|>",
        additional_special_tokens=["<|user|>", "<|assistant|>"],
    )
    tokenizer.chat_template = _CHAT_TEMPLATE
    return tokenizer


def tiny_llama_config(
    tokenizer: Any, hidden_size: int, num_layers: int, *, max_positions: int
) -> Any:
    """A small ``LlamaConfig`` (4 query and 2 key-value heads, MLP twice the hidden size,
    untied embeddings) for ``tokenizer``'s vocabulary and special tokens."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_positions,
        initializer_range=0.1,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )


def tiny_causal_lm(
    seed: int = 0,
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    dtype: torch.dtype = torch.float32,
) -> tuple[Any, Any]:
    """``(model, tokenizer)``: a random tiny ``LlamaForCausalLM`` and its tokenizer.

    The weights depend only on ``seed`` (the global RNG state is saved and restored).
    """
    from transformers import LlamaForCausalLM

    tokenizer = tiny_tokenizer()
    config = tiny_llama_config(tokenizer, hidden_size, num_layers, max_positions=1024)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = cast(Any, LlamaForCausalLM(config)).to(dtype)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer
