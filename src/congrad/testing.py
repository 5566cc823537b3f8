"""The tiny random model and tokenizer for tests and demos (public API; the code lives in
:mod:`congrad.models.tiny`)."""

from congrad.models.tiny import tiny_causal_lm, tiny_llama_config, tiny_tokenizer

__all__ = ["tiny_causal_lm", "tiny_llama_config", "tiny_tokenizer"]
