"""The errors a user can cause and fix: the CLI prints these as one clear line.

In: nothing. Out: :data:`USER_ERRORS`, the exception types whose message already says
what went wrong and what to do (bad config, bad data file, a stage run out of order).
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from congrad.backends.vllm_engine import VLLMUnavailable
from congrad.config.base import LoRAError
from congrad.config.run import ConfigError
from congrad.data.artifacts import ArtifactError
from congrad.data.tables import DataError
from congrad.evaluation.judges import JudgeSetupError, JudgeUnavailable
from congrad.models.loading import ModelLoadError
from congrad.models.offline import OfflineModelError
from congrad.parallel.zero import ZeroConfigError
from congrad.pipeline.stage_graph import StageFailed, StageNotReady
from congrad.tools.memory_plan import PlanError

USER_ERRORS: tuple[type[Exception], ...] = (
    ArtifactError,
    ConfigError,
    DataError,
    JudgeSetupError,
    JudgeUnavailable,
    LoRAError,
    StageFailed,
    StageNotReady,
    ModelLoadError,
    OfflineModelError,
    PlanError,
    FileNotFoundError,
    VLLMUnavailable,
    ZeroConfigError,
)
