"""The run config: typed sections (pydantic, unknown keys refused), loaded from YAML with
dotted ``key=value`` overrides and validated before anything heavy runs.

Modules: :mod:`~congrad.config.base` (the section base class, :class:`ConfigError`, shared
validators), :mod:`~congrad.config.evaluation` (the ``evaluate`` section) and
:mod:`~congrad.config.run` (every other section, :class:`RunConfig`, loading and
overrides). The names users need are re-exported here.
"""

from congrad.config.base import ConfigError
from congrad.config.evaluation import EvalJudgeConfig, EvaluateConfig, MCQConfig
from congrad.config.run import (
    LORA_TARGETS,
    PAPER_LANGUAGES,
    VLLM_RESOURCE_KEYS,
    EMAConfig,
    FilterConfig,
    GenerateConfig,
    JudgeConfig,
    LoRAConfig,
    ModelConfig,
    PromptsConfig,
    RunConfig,
    Strategy,
    TrainConfig,
    VLLMConfig,
    config_changes,
    config_to_yaml,
    load_config,
    parse_override,
    set_dotted,
)

__all__ = [
    "LORA_TARGETS",
    "PAPER_LANGUAGES",
    "VLLM_RESOURCE_KEYS",
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
