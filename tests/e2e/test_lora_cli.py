"""A 2-round LoRA run end to end through the CLI (configs/smoke.yaml + model.lora.enabled)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from congrad.cli import main
from congrad.config.run import load_config
from congrad.data.artifacts import read_jsonl
from congrad.data.records import PreferencePair
from tests.conftest import REPO_ROOT

pytest.importorskip("peft")

SMOKE = str(REPO_ROOT / "configs" / "smoke.yaml")
LORA = ["model.lora.enabled=true", "model.lora.r=4", "train.gradient_checkpointing=true"]


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("lora-smoke")
    assert main(["run", "--config", SMOKE, "--quiet", f"output_dir={tmp}", *LORA]) == 0
    return tmp


@pytest.mark.slow
def test_rounds_track_lora_matrices_and_save_plain_merged_models(lora_run):
    from congrad.models.tiny import tiny_causal_lm

    for r in (1, 2):
        with safe_open(str(lora_run / f"round_{r}" / "ema.safetensors"), "pt") as handle:
            header = json.loads(handle.metadata()["congrad"])
        names = list(header["tracked"])
        assert len(names) == 2 * 7 * 2  # A and B of 7 projections in 2 layers
        assert all(n.endswith((".lora_A.default.weight", ".lora_B.default.weight")) for n in names)
        folder = lora_run / f"round_{r}" / "model"
        assert not (folder / "adapter_config.json").exists()
    seed_weights = tiny_causal_lm(seed=0)[0].state_dict()
    weights = [load_file(lora_run / f"round_{r}" / "model" / "model.safetensors") for r in (1, 2)]
    for saved in weights:  # plain keys, every base weight present, no adapter left
        assert set(saved) == set(seed_weights)
    changed = [k for k in seed_weights if not torch.equal(weights[1][k], seed_weights[k])]
    assert changed and all(k.endswith("_proj.weight") for k in changed)  # only targets move
    assert any(not torch.equal(weights[1][k], weights[0][k]) for k in changed)


@pytest.mark.slow
def test_round_two_filters_by_congrad_scores_over_lora_matrices(lora_run):
    from congrad import score_pairs
    from congrad.core.gradient_ema import GradientEMA
    from congrad.core.pcgrad import seeded_orders
    from congrad.models.loading import load_model
    from congrad.models.lora import attach_adapter

    folder = lora_run / "round_2"
    scores = {row["pair_id"]: row for row in read_jsonl(folder / "scores.jsonl")}
    selection = read_jsonl(folder / "selection.jsonl")
    assert {row["pair_id"] for row in selection} == set(scores)
    for lang in {row["lang"] for row in selection}:
        rows = [row for row in selection if row["lang"] == lang]
        kept = [scores[row["pair_id"]]["cosine"] for row in rows if row["kept"]]
        dropped = [scores[row["pair_id"]]["cosine"] for row in rows if not row["kept"]]
        assert len(kept) == len(rows) // 2 and min(kept) >= max(dropped)  # max-congrad, rho 0.5
    # The loop's scores are those of M_1 (a plain folder) with a fresh fixed-seed adapter
    # against round 1's EMA of adapter gradients: recomputed here from the files alone.
    config = load_config(SMOKE, [f"output_dir={lora_run}", *LORA])
    model, tokenizer = load_model(config.model, lora_run / "round_1" / "model")
    model = attach_adapter(model, config.model.lora)
    ema = GradientEMA.load(lora_run / "round_1" / "ema.safetensors", model)
    pairs = [PreferencePair(**row) for row in read_jsonl(folder / "pairs.jsonl")]
    again = score_pairs(
        model,
        tokenizer,
        pairs,
        ema,
        beta=config.train.beta,
        alpha=config.train.alpha,
        batch_size=config.filter.batch_size,
        max_length=config.train.max_length,
        orders=seeded_orders(ema.languages, config.seed),
    )
    for score in again:
        assert score.cosine == pytest.approx(scores[score.pair_id]["cosine"], rel=1e-5, abs=1e-7)
    assert len({round(s.cosine, 5) for s in again}) > len(again) // 2  # informative scores


def test_missing_peft_is_a_clear_error_before_any_work(tmp_path, monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "peft" else real(name, *a)
    )
    code = main(["run", "--config", SMOKE, "--quiet", f"output_dir={tmp_path / 'run'}", *LORA])
    assert code == 2
    assert "congrad[lora]" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # refused before the run folder was made


@pytest.mark.slow
def test_standalone_filter_scores_over_a_fresh_adapter(tmp_path):
    from congrad.models.lora import attach_adapter
    from congrad.models.tiny import tiny_causal_lm
    from tests.conftest import make_pairs, write_preference_file

    pairs = make_pairs(9)
    write_preference_file(tmp_path / "prefs.jsonl", pairs)
    out = tmp_path / "selected"
    args = ["filter", "--dataset", str(tmp_path / "prefs.jsonl"), "--output", str(out), "--quiet"]
    overrides = ["model.name_or_path=tiny-random", "ema.rank=4", "train.batch_size=2", *LORA[:2]]
    assert main([*args, *overrides]) == 0
    from congrad.core.gradient_ema import GradientEMA

    config = load_config(None, overrides)
    model = attach_adapter(tiny_causal_lm(seed=0)[0], config.model.lora)
    ema = GradientEMA.load(out / "ema.safetensors", model)
    for name in ema.tracked_names:  # at B = 0 only B has a gradient: s G A^T
        dense = ema.matrices("en")[name].dense()
        assert (dense.abs().max() > 0) == (".lora_B." in name), name
    cosines = [row["cosine"] for row in read_jsonl(out / "scores.jsonl")]
    assert len(cosines) == 9 and len({round(c, 5) for c in cosines}) > 4
