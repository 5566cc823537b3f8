"""`congrad filter --dataset`: CONGRAD as a selection tool for an existing dataset."""

from __future__ import annotations

import math

from congrad.cli import main
from congrad.core.gradient_ema import GradientEMA
from congrad.data.artifacts import read_jsonl, read_manifest
from congrad.models.tiny import tiny_causal_lm
from tests.conftest import make_pairs, write_preference_file


def test_filter_an_external_dataset(tmp_path, capsys):
    pairs = make_pairs(9)
    write_preference_file(tmp_path / "prefs.jsonl", pairs)
    out = tmp_path / "selected"
    args = ["filter", "--dataset", str(tmp_path / "prefs.jsonl"), "--output", str(out), "--quiet"]
    overrides = ["model.name_or_path=tiny-random", "ema.rank=4", "train.batch_size=2"]
    assert main([*args, *overrides, "filter.keep_fraction=0.5"]) == 0
    selection = read_jsonl(out / "selection.jsonl")
    scores = {s["pair_id"]: s for s in read_jsonl(out / "scores.jsonl")}
    assert [s["pair_id"] for s in selection] == [p.pair_id for p in pairs]
    for lang in ("en", "de", "zh"):
        rows_of_lang = [s for s in selection if s["lang"] == lang]
        kept = [s for s in rows_of_lang if s["kept"]]
        assert len(kept) == math.ceil(0.5 * len(rows_of_lang))
        kept_scores = [scores[s["pair_id"]]["cosine"] for s in kept]
        other = [scores[s["pair_id"]]["cosine"] for s in rows_of_lang if not s["kept"]]
        assert min(kept_scores) >= max(other, default=-2)
    model, _ = tiny_causal_lm(seed=0)
    ema = GradientEMA.load(out / "ema.safetensors", model)
    assert ema.languages == ["de", "en", "zh"]
    assert ema.counts() == {"de": 2, "en": 2, "zh": 2}  # 3 pairs each in minibatches of 2
    manifest = read_manifest(out, "filter")
    assert manifest["pairs"] == 9 and manifest["kept"] == {"de": 2, "en": 2, "zh": 2}


def test_bad_dataset_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "bad.jsonl").write_text(
        '{"lang": "en", "prompt": "q", "choosen": "a", "rejected": "b"}\n'
    )
    code = main(
        [
            "filter",
            "--dataset",
            str(tmp_path / "bad.jsonl"),
            "--output",
            str(tmp_path / "o"),
            "model.name_or_path=tiny-random",
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "line 1" in err and "did you mean 'chosen'" in err
    assert not (tmp_path / "o").exists()
