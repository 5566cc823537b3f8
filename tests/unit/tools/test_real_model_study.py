"""The study script's position-debiased reading of verdicts, worked by hand."""

from __future__ import annotations

import importlib.util
import math

import pytest

from tests.conftest import REPO_ROOT

SCRIPT = REPO_ROOT / "benchmarks" / "real_model_study.py"
spec = importlib.util.spec_from_file_location("real_model_study", SCRIPT)
assert spec is not None and spec.loader is not None
study = importlib.util.module_from_spec(spec)
spec.loader.exec_module(study)


def _row(prompt: str, order: str, p_a: float, p_b: float) -> dict:
    return {"prompt_id": prompt, "order": order, "raw": f"p(A)={p_a} p(B)={p_b} p(tie)=0.01"}


def test_log_odds_reads_the_recorded_probabilities():
    assert study._log_odds("p(A)=0.5 p(B)=0.25 p(tie)=0.1") == pytest.approx(math.log(2))
    assert study._log_odds("Verdict: A") is None  # a text-mode verdict has no probabilities
    assert study._log_odds("p(A)=0.5 p(B)=0") is None


def test_debiased_win_rate_cancels_a_constant_first_slot_preference():
    rows = [
        # p1: always "A", but less so when M_0's answer is first: M_t preferred (a win)
        _row("p1", "candidate_first", 0.8, 0.1),
        _row("p1", "baseline_first", 0.6, 0.2),
        # p2: identical answers, identical probabilities: a tie
        _row("p2", "candidate_first", 0.7, 0.1),
        _row("p2", "baseline_first", 0.7, 0.1),
        # p3: the first slot wins by more when M_0 is first: a loss
        _row("p3", "candidate_first", 0.5, 0.3),
        _row("p3", "baseline_first", 0.9, 0.05),
        # p4: only one order recorded: not counted
        _row("p4", "candidate_first", 0.9, 0.05),
    ]
    rate, ties, counted = study.debiased_win_rate(rows)
    assert (counted, ties) == (3, 1)
    assert rate == pytest.approx((1 + 0.5 + 0) / 3)
