"""Code execution and secrets: nothing runs or unpickles what a file or config names.

Static checks over the package source (no pickle, no ``eval``/``exec``, every
``torch.load`` with ``weights_only=True``), the config's types (no field can name a Python
object to import), YAML loading (python tags refused), and ``trust_remote_code`` (off
unless the config turns it on, and then passed through).
"""

from __future__ import annotations

import ast
import types
import typing
from enum import Enum

import pytest
from pydantic import BaseModel

from congrad.config.run import ConfigError, RunConfig, load_config
from tests.conftest import REPO_ROOT

SOURCE = REPO_ROOT / "src" / "congrad"


def _calls(tree: ast.AST) -> list[ast.Call]:
    return [node for node in ast.walk(tree) if isinstance(node, ast.Call)]


def _name(call: ast.Call) -> str:
    func = call.func
    if isinstance(func, ast.Attribute):
        base = func.value.id if isinstance(func.value, ast.Name) else "?"
        return f"{base}.{func.attr}"
    return func.id if isinstance(func, ast.Name) else "?"


def test_no_module_unpickles_evaluates_or_executes_code():
    for path in sorted(SOURCE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                assert not any(
                    n.split(".")[0] in ("pickle", "dill", "cloudpickle", "marshal") for n in names
                ), f"{path.name} imports a pickle module"
        for call in _calls(tree):
            name = _name(call)
            assert name not in ("eval", "exec", "compile", "yaml.load", "yaml.unsafe_load"), (
                f"{path.name}:{call.lineno} calls {name}"
            )
            if name.endswith(".load") and name.split(".")[0] == "torch":
                keywords = {k.arg: k.value for k in call.keywords}
                flag = keywords.get("weights_only")
                assert isinstance(flag, ast.Constant) and flag.value is True, (
                    f"{path.name}:{call.lineno}: torch.load without weights_only=True"
                )
            if name in ("pd.read_pickle", "np.load"):
                keywords = {k.arg: k.value for k in call.keywords}
                allow = keywords.get("allow_pickle")
                assert name == "np.load" and isinstance(allow, ast.Constant) and not allow.value


ALLOWED_LEAVES = (str, int, float, bool, type(None))


def _leaf_types(annotation: object) -> list[object]:
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return [type(value) for value in typing.get_args(annotation)]
    if origin in (list, typing.Union, types.UnionType):
        return [t for arg in typing.get_args(annotation) for t in _leaf_types(arg)]
    return [annotation]


def _fields(model: type[BaseModel], prefix: str = ""):
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from _fields(annotation, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", annotation


# Free-form mappings (typed Any) whose values a validator restricts to YAML's plain data
# (congrad.config.base.check_plain_data); checked below that an object is refused.
PLAIN_DATA_CHECKED = {"generate.vllm.engine_args"}


def test_no_config_field_can_name_a_python_object():
    for key, annotation in _fields(RunConfig):
        if key in PLAIN_DATA_CHECKED:
            continue
        for leaf in _leaf_types(annotation):
            plain = leaf in ALLOWED_LEAVES
            choice = isinstance(leaf, type) and issubclass(leaf, Enum)
            assert plain or choice, f"{key}: {annotation} is not plain data"


def test_free_form_mappings_refuse_anything_but_plain_data():
    from pydantic import ValidationError

    for key in PLAIN_DATA_CHECKED:
        section, _, name = key.rpartition(".")
        nested: dict = {name: {"ok": [1, "two", None, {"three": 3.0}]}}
        for part in reversed(section.split(".")):
            nested = {part: nested}
        RunConfig(**nested)  # plain data passes
        nested_bad: dict = {name: {"hook": object()}}
        for part in reversed(section.split(".")):
            nested_bad = {part: nested_bad}
        with pytest.raises(ValidationError, match="plain data"):
            RunConfig(**nested_bad)


def test_yaml_python_tags_are_refused(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("rounds: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)
    with pytest.raises(ConfigError):
        load_config(None, ["rounds=!!python/object/apply:os.system ['echo pwned']"])


def test_remote_code_is_off_unless_turned_on(monkeypatch, tmp_path):
    assert load_config().model.trust_remote_code is False
    from congrad.models import loading as modeling

    seen: list[bool] = []

    class Refuse:
        @staticmethod
        def from_pretrained(source, **kwargs):
            seen.append(kwargs["trust_remote_code"])
            raise OSError("stop here")

    monkeypatch.setattr("transformers.AutoTokenizer", Refuse)
    monkeypatch.setattr(modeling, "check_model_source", lambda name: None)
    for flag in (False, True):
        config = load_config(None, [f"model.trust_remote_code={flag}"])
        with pytest.raises(modeling.ModelLoadError):
            modeling.load_model(config.model, tmp_path)
    assert seen == [False, True]


def test_atomic_writes_get_the_usual_file_mode(tmp_path):
    import os

    from congrad.util.atomic import write_text_atomic

    mask = os.umask(0)
    os.umask(mask)
    write_text_atomic(tmp_path / "a.txt", "x")
    with open(tmp_path / "b.txt", "w") as handle:  # what a plain open() gives
        handle.write("x")
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o666 & ~mask
    assert (tmp_path / "a.txt").stat().st_mode == (tmp_path / "b.txt").stat().st_mode


def test_a_pasted_key_in_api_key_env_is_refused_and_not_echoed():
    pasted = "sk-proj-abc123-DEF456"
    with pytest.raises(ConfigError) as caught:
        load_config(None, [f"evaluate.judge.api_key_env={pasted}"])
    assert "api_key_env" in str(caught.value) and pasted not in str(caught.value)
    assert load_config(None, ["evaluate.judge.api_key_env=MY_JUDGE_KEY"]).evaluate.judge
