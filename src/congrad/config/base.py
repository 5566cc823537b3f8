"""The building blocks of congrad's typed config (:mod:`congrad.config.run`), shared by its
section modules: the error types (a bad config; a LoRA setting that cannot be applied), the
strict frozen section base, and the validators of language lists and of free-form plain data.

In: field values. Out: ``ValueError`` messages that pydantic turns into a
:class:`ConfigError` naming the key (:func:`congrad.config.run.load_config`).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from congrad.errors import CongradError
from congrad.util.languages import check_language_code


class ConfigError(CongradError, ValueError):
    """A config file or override is invalid; the message says which key and what to do."""


class LoRAError(CongradError, RuntimeError):
    """LoRA is configured but cannot be applied (peft missing, target modules absent);
    the message says what to change."""


class Section(BaseModel):
    """A config section: unknown keys refused, values frozen, fields documented by the
    docstring under each (``use_attribute_docstrings``)."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


def check_languages(codes: list[str] | None) -> None:
    """Raise a ValueError naming every invalid code (congrad.util.languages) of a language list."""
    problems = [problem for code in codes or [] if (problem := check_language_code(code))]
    if problems:
        raise ValueError("; ".join(problems))


def check_plain_data(value: Any, where: str, depth: int = 0) -> None:
    """Refuse anything but YAML's plain data (str, number, bool, null, list, mapping)."""
    if depth > 8:
        raise ValueError(f"{where} is nested too deeply")
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"{where}: key {key!r} must be text")
            check_plain_data(item, f"{where}.{key}", depth + 1)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            check_plain_data(item, f"{where}[{index}]", depth + 1)
    elif value is not None and not isinstance(value, str | int | float | bool):
        raise ValueError(f"{where} must be plain data, not {type(value).__name__}")
