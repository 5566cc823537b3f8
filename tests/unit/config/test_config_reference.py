"""docs/configuration.md is what scripts/config_reference.py makes of the config's docstrings:
up to date, complete, with defaults and choices a YAML user can type back in."""

from __future__ import annotations

import importlib.util
import re
import typing
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

import pytest
import yaml
from pydantic import BaseModel, ConfigDict, Field
from pydantic_core import to_jsonable_python

from congrad.config import RunConfig, load_config


def _repo_root() -> Path:
    for folder in Path(__file__).resolve().parents:
        if (folder / "pyproject.toml").is_file():
            return folder
    raise AssertionError(f"no pyproject.toml above {__file__}")


ROOT = _repo_root()
DOC = ROOT / "docs" / "configuration.md"
REGENERATE = "run `python scripts/config_reference.py` and commit docs/configuration.md"

_spec = importlib.util.spec_from_file_location(
    "congrad_config_reference", ROOT / "scripts" / "config_reference.py"
)
assert _spec is not None and _spec.loader is not None
reference = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(reference)


def _table_rows(markdown: str) -> dict[str, tuple[str, str, str]]:
    """``key -> (type, default, description)`` of every table row, cells as written."""
    rows = {}
    for line in markdown.splitlines():
        if line.startswith("| `"):
            cells = [cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1]]
            assert len(cells) == 4, line
            rows[cells[0].strip("`")] = (cells[1], cells[2], cells[3])
    return rows


def _get(config: BaseModel, key: str) -> Any:
    node: Any = config
    for part in key.split("."):
        node = getattr(node, part)
    return node


def _config_fields(model: type[BaseModel], prefix: str = "") -> list[tuple[str, Any]]:
    """Every field under ``model`` as (dotted key, FieldInfo), walked without the script."""

    def models_in(annotation: Any) -> list[type[BaseModel]]:
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            return [annotation]
        return [found for arg in typing.get_args(annotation) for found in models_in(arg)]

    found = []
    for name, field in model.model_fields.items():
        found.append((prefix + name, field))
        for sub in models_in(field.annotation):
            found += _config_fields(sub, f"{prefix}{name}.")
    return found


@pytest.fixture(scope="module")
def rendered() -> str:
    return reference.render()


@pytest.fixture(scope="module")
def rows(rendered) -> dict[str, tuple[str, str, str]]:
    return _table_rows(rendered)


def test_the_committed_reference_matches_the_code(rendered):
    written = DOC.read_text(encoding="utf-8") if DOC.exists() else ""
    assert written == rendered, f"docs/configuration.md is stale: {REGENERATE}"


def test_every_config_field_has_a_docstring():
    undocumented = [
        key for key, field in _config_fields(RunConfig) if not (field.description or "").strip()
    ]
    assert not undocumented, f"write a docstring under each of these fields: {undocumented}"


def test_every_key_has_a_row_with_a_description(rows):
    keys = {
        key
        for key, field in _config_fields(RunConfig)
        if not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel))
    }
    assert set(rows) == keys, f"rows missing: {sorted(keys - set(rows))}"
    assert all(description for _, _, description in rows.values())


class _Undocumented(BaseModel):
    model_config = ConfigDict(use_attribute_docstrings=True)

    documented: int = 1
    """Has a docstring."""
    forgotten: int = 2


def test_an_undocumented_field_stops_the_generator():
    with pytest.raises(ValueError, match=r"^forgotten \(_Undocumented.forgotten\) has no doc"):
        reference.render(_Undocumented)


def test_hand_checked_rows_and_headings(rendered, rows):
    assert rows["train.learning_rate"] == ("`float` > 0", "`5.0e-06`", "AdamW learning rate.")
    # 'no' quoted: a bare no is YAML's false, which the Literal refuses
    assert rows["train.mixed_precision"][:2] == ("one of `'no'`, `bf16`, `fp16`", "`'no'`")
    assert rows["filter.strategy"][:2] == (
        "one of `full`, `rand`, `max-len`, `min-len`, `max-reward`, `min-reward`, "
        "`max-congrad`, `min-congrad`",
        "`max-congrad`",
    )
    assert rows["generate.vllm.dtype"][:2] == (
        "one of `auto`, `float32`, `bfloat16`, `float16`, or `None`",
        "`null`",
    )
    assert rows["generate.vllm.max_model_len"][:2] == ("`int` ≥ 1, or `None`", "`null`")
    assert rows["generate.vllm.engine_args"][:2] == ("`dict[str, Any]`", "`{}`")
    assert rows["ema.include"][:2] == ("`list[str] \\| None`", "`null`")
    assert rows["model.lora.dropout"][0] == "`float` ≥ 0, < 1"
    assert rows["prompts.languages"][:2] == (
        "`list[str]` non-empty",
        "`[en, de, fr, es, it, pt, zh, ja, ko, ar]`",
    )
    # a docstring over two lines, reST literals as Markdown code, "<" kept inside code
    assert rows["evaluate.judge.cache"][2] == (
        "Verdict cache (JSONL keyed by a hash of judge and prompt); unset: "
        "`<output_dir>/judge_cache.jsonl`. A rerun or resume asks the judge nothing twice."
    )
    assert (
        rows["output_dir"][2] == "Run folder: config.yaml, round_&lt;t>/ artifacts, summary.json."
    )
    headings = [line for line in rendered.splitlines() if line.startswith("#")]
    assert headings[:4] == [
        "# Configuration reference",
        "## Top-level keys",
        "## model",
        "### model.lora",
    ]
    for heading in (
        "## generate",
        "### generate.vllm",
        "## train",
        "## evaluate",
        "### evaluate.judge",
        "### evaluate.mcq",
    ):
        assert heading in headings
    assert f"{len(rows)} keys in {len(headings) - 1} sections" in rendered


def test_every_default_typed_back_in_gives_the_default_config(rows):
    defaults = RunConfig()
    for key, (_, default, _) in rows.items():
        text = default.strip("`").replace("\\|", "|")
        assert load_config(None, [f"{key}={text}"]) == defaults, (key, text)


def test_every_listed_choice_is_accepted_as_written(rows):
    checked = 0
    for key, (type_cell, _, _) in rows.items():
        if not type_cell.startswith("one of "):
            continue
        for choice in re.findall(r"`([^`]*)`", type_cell):
            text = "null" if choice == "None" else choice
            # what some choices need: lcl multiple-choice files, an hf or openai judge a model
            needs = ["evaluate.mcq.files=[sample]", "evaluate.judge.model=m"]
            config = load_config(None, [f"{key}={text}", *needs])
            assert to_jsonable_python(_get(config, key)) == yaml.safe_load(text), (key, choice)
            checked += 1
    assert checked >= 25


class _Color(StrEnum):
    RED = "red"
    OFF = "off"


class _Leaf(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    depth: int = Field(3, ge=1, lt=10)
    """How deep | how far."""


class _Toy(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    name: str
    """Required;
        folded over ``two`` lines."""
    color: _Color = _Color.OFF
    """A colour."""
    mode: Literal["yes", "fast"] | None = None
    """A mode."""
    tags: list[str] = Field(default_factory=lambda: ["a", "b"], min_length=2)
    """Tags, <b>bold</b>."""
    extra: dict[str, Any] = Field(default_factory=dict)
    """Free-form."""
    leaf: _Leaf = _Leaf(depth=5)
    """A section whose default is not its class's."""
    spare: _Leaf | None = None
    """An optional section."""
    many: list[_Leaf] = Field(default_factory=list)
    """A list of sections."""


def test_the_generator_on_every_kind_of_field():
    found = reference.sections(_Toy)
    assert [(section.key, section.title) for section in found] == [
        ("", "Top-level keys"),
        ("leaf", "leaf"),
        ("spare", "spare"),
        ("many[]", "many[]"),
    ]
    assert found[1].description == "A section whose default is not its class's."
    rows = {row.key: row[1:] for section in found for row in section.rows}
    assert rows == {
        "name": ("`str`", "required", "Required; folded over `two` lines."),
        "color": ("one of `red`, `'off'`", "`'off'`", "A colour."),
        "mode": ("one of `'yes'`, `fast`, or `None`", "`null`", "A mode."),
        "tags": ("`list[str]` at least 2 items", "`[a, b]`", "Tags, <b>bold</b>."),
        "extra": ("`dict[str, Any]`", "`{}`", "Free-form."),
        "leaf.depth": ("`int` ≥ 1, < 10", "`5`", "How deep | how far."),
        "spare": ("a section (below), or `None`", "`null`", "An optional section."),
        "spare.depth": ("`int` ≥ 1, < 10", "`3`", "How deep | how far."),
        "many": ("`list[_Leaf]`", "`[]`", "A list of sections."),
        "many[].depth": ("`int` ≥ 1, < 10", "`3`", "How deep | how far."),
    }
    text = reference.render(_Toy)
    assert "| `leaf.depth` | `int` ≥ 1, < 10 | `5` | How deep \\| how far. |" in text
    assert "| Tags, &lt;b>bold&lt;/b>. |" in text
    assert "\n## many[]\n\nThe keys of `many[]` (see `many` above).\n" in text
    assert text == reference.render(_Toy)  # deterministic


def test_check_mode_reports_a_stale_file_and_writing_fixes_it(tmp_path, capsys, rendered):
    out = tmp_path / "configuration.md"
    *kept, last_row = rendered.splitlines(keepends=True)
    out.write_text("".join(kept), encoding="utf-8")  # a key added since it was written
    assert reference.main(["--check", "--output", str(out)]) == 1
    captured = capsys.readouterr()
    assert f"\n+{last_row}" in captured.out  # a unified diff adding the row
    assert "run python scripts/config_reference.py" in captured.err
    assert reference.main(["--output", str(out)]) == 0
    assert out.read_text(encoding="utf-8") == rendered
    assert reference.main(["--check", "--output", str(out)]) == 0
