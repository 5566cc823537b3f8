"""The ``evaluate`` section of the run config (docs/design.md section 8): held-out prompts and
answering, the pairwise judge (:class:`EvalJudgeConfig`) and the multiple-choice alignment
tax (:class:`MCQConfig`).

In: YAML / override values. Out: frozen, validated sections used by
:mod:`congrad.pipeline.eval_stages`; part of :class:`congrad.config.run.RunConfig`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from congrad.config.base import Section, check_languages


class EvalJudgeConfig(Section):
    backend: Literal["self", "hf", "openai"] = "self"
    """``self`` (the seed model judges), ``hf`` (a local model, ``evaluate.judge.model``) or
    ``openai`` (any OpenAI-compatible chat endpoint, e.g. GPT-4o as in the paper)."""
    model: str | None = None
    """``openai``: the model name at the endpoint; ``hf``: a local folder or hub id."""
    mode: Literal["text", "logprob"] = "logprob"
    """Local judges: ``text`` writes an analysis ending in ``Verdict: A``, ``B`` or ``tie``;
    ``logprob`` reads the verdict from the next-token distribution after ``Verdict:``."""
    base_url: str | None = None
    """``openai``: the endpoint's base URL (unset: the OpenAI API)."""
    api_key_env: str = "OPENAI_API_KEY"
    """``openai``: the NAME of the environment variable holding the API key; the key
    itself is never read from or written to any file."""
    max_concurrency: int = Field(8, ge=1)
    """``openai``: requests in flight at once."""
    max_retries: int = Field(5, ge=0)
    """``openai``: retries of a failed request (exponential back-off) before stopping."""
    timeout: float = Field(60.0, gt=0)
    """``openai``: seconds before a request counts as failed."""
    temperature: float = Field(0.0, ge=0)
    """``openai``: sampling temperature of the judge."""
    max_tokens: int = Field(512, ge=1)
    """Tokens of a text verdict (``openai``, or ``text`` mode)."""
    min_mass: float = Field(0.05, ge=0, le=1)
    """Local ``logprob`` mode: below this probability on A/B/tie the verdict is unparsed."""
    batch_size: int = Field(8, ge=1)
    """Local judges: judge prompts per forward or generate call."""
    cache: str | None = None
    """Verdict cache (JSONL keyed by a hash of judge and prompt); unset:
    ``<output_dir>/judge_cache.jsonl``. A rerun or resume asks the judge nothing twice."""

    @model_validator(mode="after")
    def _names_its_model(self) -> EvalJudgeConfig:
        if self.backend in ("hf", "openai") and not self.model:
            raise ValueError(f"evaluate.judge.backend={self.backend} needs evaluate.judge.model")
        return self

    @field_validator("api_key_env")
    @classmethod
    def _names_a_variable(cls, value: str) -> str:
        if not value.replace("_", "A").isalnum() or value[0].isdigit():
            raise ValueError(
                "must be the name of an environment variable (letters, digits, _), "
                "not the key itself"
            )
        return value


class MCQConfig(Section):
    files: list[str] = Field(default_factory=list)
    """Multiple-choice files (``question, choices, answer, lang[, id]``; JSONL, CSV,
    Parquet, datasets folder) for the alignment tax; ``sample`` is the tiny built-in
    sample; empty skips it."""
    shots: int = Field(5, ge=0)
    """Worked examples (k) before each question, from the same language."""
    max_per_language: int | None = Field(None, ge=1)
    """Score at most this many questions per language (by id order); unset: all."""
    batch_size: int = Field(8, ge=1)
    """Questions per forward."""
    max_length: int = Field(2048, ge=8)
    """Token budget of a k-shot prompt; shots are dropped to fit."""


class EvaluateConfig(Section):
    prompts: list[str] = Field(default_factory=list)
    """Held-out prompt files (``prompt, lang[, id]``); empty: the built-in evaluation set
    (16 prompts in each of 13 languages)."""
    languages: list[str] | None = None
    """Languages to evaluate; unset: the training languages plus ``unseen_languages``."""
    unseen_languages: list[str] = Field(default_factory=lambda: ["hi", "vi", "ru"])
    """Languages never trained on, reported apart (the paper's Table 4)."""
    max_prompts: int | None = Field(None, ge=1)
    """At most this many prompts per language (by id order); unset: all."""
    max_new_tokens: int = Field(64, ge=1)
    """Answer budget in tokens."""
    temperature: float = Field(0.0, ge=0)
    """Answer sampling temperature (0: greedy); seeds derive from the run seed and ids."""
    batch_size: int = Field(16, ge=1)
    """Prompts per generate call."""
    bootstrap: int = Field(1000, ge=10)
    """Bootstrap resamples of the 95% win-rate intervals."""
    judge: EvalJudgeConfig = EvalJudgeConfig()
    """The pairwise judge comparing each round's answers with the seed model's."""
    mcq: MCQConfig = MCQConfig()
    """Multiple-choice accuracy per language (the alignment tax)."""

    @field_validator("languages", "unseen_languages")
    @classmethod
    def _known_languages(cls, value: list[str] | None) -> list[str] | None:
        check_languages(value)
        return value

    def eval_languages(self, trained: list[str]) -> list[str]:
        """The languages evaluated, trained ones first."""
        if self.languages is not None:
            return list(self.languages)
        return list(dict.fromkeys([*trained, *self.unseen_languages]))
