"""The errors a user can cause and fix: the CLI prints these as one clear line.

In: nothing. Out: :data:`USER_ERRORS`, the exception types whose message already says
what went wrong and what to do (bad config, bad data file, a stage run out of order).
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from congrad.artifacts import ArtifactError
from congrad.config import ConfigError
from congrad.config_base import LoRAError
from congrad.judges import JudgeSetupError, JudgeUnavailable
from congrad.loop import StageFailed, StageNotReady
from congrad.modeling import ModelLoadError
from congrad.offline_models import OfflineModelError
from congrad.planning import PlanError
from congrad.tables import DataError
from congrad.vllm_engine import VLLMUnavailable
from congrad.zero import ZeroConfigError

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
