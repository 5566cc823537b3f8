"""Config: defaults, YAML, overrides, clear errors, every shipped YAML validates."""

from __future__ import annotations

import pytest

from congrad.config.run import (
    ConfigError,
    RunConfig,
    Strategy,
    config_changes,
    config_to_yaml,
    load_config,
    parse_override,
)
from tests.conftest import REPO_ROOT

CONFIG_ROOT = REPO_ROOT / "configs"
# configs/accelerate/ holds `accelerate launch` configs
# (tests/unit/parallel/test_accelerate_configs.py)
CONFIGS = sorted(p for p in CONFIG_ROOT.rglob("*.yaml") if p.parent.name != "accelerate")


def test_defaults_are_valid_and_round_trip(tmp_path):
    config = load_config()
    path = tmp_path / "c.yaml"
    path.write_text(config_to_yaml(config))
    assert load_config(path) == config


def test_overrides_parse_yaml_scalars():
    config = load_config(
        None, ["train.learning_rate=5e-7", "filter.strategy=rand", "prompts.languages=[en, de]"]
    )
    assert config.train.learning_rate == 5e-7
    assert config.filter.strategy is Strategy.RAND
    assert config.prompts.languages == ["en", "de"]
    assert parse_override("rounds=3") == ("rounds", 3)


def test_unknown_key_suggests_closest():
    with pytest.raises(ConfigError, match=r"did you mean 'train\.learning_rate'"):
        load_config(None, ["train.learnin_rate=1"])
    with pytest.raises(ConfigError, match=r"did you mean 'filter\.keep_fraction'"):
        load_config(None, ["filter.keep_fractoin=0.3"])


@pytest.mark.parametrize(
    "override, key",
    [
        ("filter.keep_fraction=0", "filter.keep_fraction"),
        ("filter.keep_fraction=1.5", "filter.keep_fraction"),
        ("ema.rank=0", "ema.rank"),
        ("filter.strategy=best", "filter.strategy"),
        ("generate.num_samples=1", "generate.num_samples"),
        ("ema.gamma=1.0", "ema.gamma"),
    ],
)
def test_invalid_values_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, [override])


@pytest.mark.parametrize("text", ["rounds", "=3", "a..b=1", "train.lr"])
def test_malformed_override(text):
    with pytest.raises(ConfigError, match="must look like"):
        parse_override(text)


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(tmp_path / "list.yaml")
    (tmp_path / "broken.yaml").write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "broken.yaml")


def test_config_changes_lists_dotted_keys():
    base = load_config()
    changed = load_config(None, ["rounds=5", "ema.rank=8"])
    assert config_changes(base, changed) == ["ema.rank", "rounds"]
    assert config_changes(base, base) == []


def test_strategy_facts():
    assert Strategy.MAX_CONGRAD.needs_gradients and not Strategy.MAX_REWARD.needs_gradients
    assert Strategy.MAX_LEN.keeps_largest and not Strategy.MIN_CONGRAD.keeps_largest


def test_configs_are_found():
    assert any(path.name == "smoke.yaml" for path in CONFIGS)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_validates(path):
    assert isinstance(load_config(path), RunConfig)


def test_every_field_is_documented_in_code_and_the_config_reference():
    from congrad.config.run import _valid_keys

    reference = (REPO_ROOT / "docs" / "configuration.md").read_text()
    for key in _valid_keys():
        section, _, name = key.rpartition(".")
        node: object = RunConfig()
        for part in section.split(".") if section else ():
            node = getattr(node, part)
        model = type(node)
        assert model.model_fields[name].description, f"{key} has no docstring"
        assert f"`{key}`" in reference, f"docs/configuration.md lacks {key}"


def test_a_misspelt_section_suggests_the_section():
    with pytest.raises(ConfigError, match="did you mean 'train'"):
        load_config(None, ["trian.learning_rate=1e-6"])
