"""Text generation backends: the protocol, HF transformers and vLLM
(:mod:`~congrad.backends.generation`), and vLLM engine helpers: import, engine arguments,
shutdown (:mod:`~congrad.backends.vllm_engine`)."""
