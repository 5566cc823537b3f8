"""``congrad bench interference --quick`` end to end through the CLI."""

from __future__ import annotations

import csv
import json

import pytest

from congrad.tools.interference.data import (
    EVAL_KINDS,
    InterferenceSpec,
)

SMALL = InterferenceSpec(warmup_pairs=20, candidate_pairs=40, eval_pairs=10, pretrain_texts=8)


@pytest.mark.slow
def test_quick_cli_run_writes_consistent_artifacts(tmp_path, capsys):
    from congrad.cli import main
    from congrad.tools.interference.cli import quick_config

    output = tmp_path / "bench"
    assert main(["bench", "interference", "--quick", "--output", str(output)]) == 0
    printed = capsys.readouterr().out
    assert "Separation of planted pairs" in printed
    names = {p.name for p in output.iterdir()}
    assert {"results.json", "separation.csv", "accuracy.csv", "tables.md"} <= names
    assert {"separation_auc.png", "ema_sweep.png", "accuracy_attribute.png"} <= names
    assert not [n for n in names if n.endswith(".tmp")]
    for png in (n for n in names if n.endswith(".png")):
        assert (output / png).read_bytes().startswith(b"\x89PNG")
    results = json.loads((output / "results.json").read_text())
    config = quick_config()
    spec = config.spec
    langs = spec.codes

    # accuracy rows: every regime x trained strategy x language at the headline setting,
    # plus max-/min-congrad at every other EMA setting of the first regime
    def setting(row):
        return row["rank"], row["gamma"], row["warmup_lr"]

    headline = [r for r in results["accuracy"] if setting(r) == (4, 0.9, 3e-3)]
    assert len(headline) == len(config.regimes) * len(config.trained) * len(langs)
    swept = [r for r in results["accuracy"] if setting(r) != (4, 0.9, 3e-3)]
    assert {setting(r) for r in swept} == {(2, 0.9, 3e-3), (4, 0.5, 3e-3), (4, 0.9, 1e-3)}
    assert {r["regime"] for r in swept} == {"attribute"}
    for row in results["accuracy"]:
        expected_kept = spec.candidate_pairs if row["strategy"] == "full" else 12
        assert row["kept"] == expected_kept
        assert 0 <= row["kept_planted"] <= round(spec.planted_fraction * spec.candidate_pairs)
        assert all(0 <= row[kind] <= 1 for kind in EVAL_KINDS)
    for row in results["separation"]:
        assert 0 <= row["auc"] <= 1 and 0 <= row["precision"] <= 1
    # max- and min-congrad rank the same cosines in opposite directions
    by_key = {
        (r["regime"], *setting(r), r["strategy"], r["lang"]): r for r in results["separation"]
    }
    mirrored = 0
    for (regime, rank, gamma, lr, strategy, lang), row in by_key.items():
        if strategy == "max-congrad" and (regime, rank, gamma, lr, "min-congrad", lang) in by_key:
            other = by_key[(regime, rank, gamma, lr, "min-congrad", lang)]
            assert row["auc"] + other["auc"] == pytest.approx(1.0)
            mirrored += 1
    assert mirrored > 0
    # the trained kept sets are the scored selections: planted share = 1 - precision
    matched = 0
    for row in headline:
        key = (row["regime"], 4, 0.9, 3e-3, row["strategy"], row["lang"])
        if key in by_key:
            precision = by_key[key]["precision"]
            assert row["kept_planted"] / row["kept"] == pytest.approx(1 - precision)
            matched += 1
    assert matched > 0
    with open(output / "accuracy.csv", newline="") as handle:
        assert len(list(csv.DictReader(handle))) == len(results["accuracy"])
    assert (output / "tables.md").read_text() in printed
