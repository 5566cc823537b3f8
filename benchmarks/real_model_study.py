"""The real-model study of docs/evidence.md section 2: CONGRAD's loop on SmolLM2-135M.

Runs (unless ``--analyse-only``) ``congrad compare`` over full, rand, max-reward and
max-congrad for 3 rounds on the bundled offline SmolLM2-135M-Instruct, the paper's 10
languages and the built-in prompts (2 per language and round, 4 samples each), evaluated
on 4 held-out prompts per language (13 languages: the 10 plus the unseen hi, vi, ru) and
the built-in multiple-choice sample, the model judging itself (logprob mode). Then it
reads the artifacts and prints, beside the report ``congrad report`` writes:

* the win rate of M_t over M_0 per strategy and round, as congrad computes it;
* how the self-judge behaves: which letter it picks in each order (position bias), and
  its tie and unparsed rates, in training (scores) and in evaluation (verdicts);
* a position-debiased reading of the same verdicts: for each prompt, the judge's log-odds
  ``log p(A) - log p(B)`` with M_t's answer first minus the same with M_0's answer first
  (``> 0``: M_t preferred once the constant preference for the first slot cancels). Read
  from the probabilities the verdict rows record (``raw``, 3 significant digits), so it
  is coarse; it is an analysis of this study, not a congrad metric;
* how many evaluation answers changed from M_0's, MCQ accuracy, and seconds per stage.

    python benchmarks/real_model_study.py --output runs/study     # ~1 hour on 2 CPU cores
    python benchmarks/real_model_study.py --output runs/study --analyse-only
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
from collections import Counter
from pathlib import Path
from typing import Any

STRATEGIES = ("full", "rand", "max-reward", "max-congrad")
OVERRIDES = ["rounds=3", "evaluate.max_prompts=4", "evaluate.mcq.files=[sample]"]
_PROBABILITY = re.compile(r"p\((A|B|tie)\)=([0-9.eE+-]+)")


def run_study(output: Path) -> None:
    from congrad.config.run import load_config
    from congrad.tools.compare import run_comparison

    config = load_config(None, [f"output_dir={output}", *OVERRIDES])
    run_comparison(config, list(STRATEGIES), seeds=1, keeps=None, progress=True)


def _rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def _answers(round_folder: Path) -> dict[str, str]:
    return {r["prompt_id"]: r["response"] for r in _rows(round_folder / "eval_answers.jsonl")}


def _log_odds(raw: str) -> float | None:
    """``log p(A) - log p(B)`` from a logprob verdict's ``raw`` text, None if absent."""
    found = dict(_PROBABILITY.findall(raw or ""))
    if "A" not in found or "B" not in found:
        return None
    p_a, p_b = float(found["A"]), float(found["B"])
    return math.log(p_a) - math.log(p_b) if p_a > 0 and p_b > 0 else None


def debiased_win_rate(verdicts: list[dict[str, Any]]) -> tuple[float, int, int]:
    """Mean over prompts of 1 / 0.5 / 0 by the sign of the debiased log-odds (exactly 0,
    as for identical answers, is a tie); and how many prompts were ties and counted."""
    by_prompt: dict[str, dict[str, float | None]] = {}
    for row in verdicts:
        by_prompt.setdefault(row["prompt_id"], {})[row["order"]] = _log_odds(row.get("raw", ""))
    scores, ties = [], 0
    for orders in by_prompt.values():
        first, second = orders.get("candidate_first"), orders.get("baseline_first")
        if first is None or second is None:
            continue
        difference = first - second
        ties += difference == 0.0
        scores.append(1.0 if difference > 0 else 0.5 if difference == 0.0 else 0.0)
    return (statistics.fmean(scores) if scores else math.nan), ties, len(scores)


def analyse(output: Path) -> str:
    runs = output / "runs"
    lines = ["### Win rate of M_t over M_0 (congrad's verdicts; debiased log-odds)", ""]
    lines += [
        "| strategy | round | win rate seen | win rate unseen | debiased seen "
        "| debiased unseen | identical-answer prompts | answers changed |",
        "|---|---|---|---|---|---|---|---|",
    ]
    letters: Counter[tuple[str, str]] = Counter()
    seconds: dict[str, list[float]] = {}
    accuracy_rows = []
    counted_manifests: set[int] = set()
    for strategy in STRATEGIES:
        folder = runs / strategy
        if not (folder / "round_0/eval_answers.jsonl").exists():
            continue  # not run (yet)
        seed_answers = _answers(folder / "round_0")
        for round_index in (1, 2, 3):
            round_folder = folder / f"round_{round_index}"
            if not (round_folder / "winrates.json").exists():
                continue
            winrates = json.loads((round_folder / "winrates.json").read_text())
            verdicts = _rows(round_folder / "eval_verdicts.jsonl")
            for row in verdicts:
                letters[(row["order"], str(row.get("choice")))] += 1
            seen, unseen = set(winrates["seen"]), set(winrates["unseen"])
            cells = []
            for group in (seen, unseen):
                rates = [v["win_rate"] for k, v in winrates["languages"].items() if k in group]
                cells.append(f"{statistics.fmean(rates):.3f}")
            for group in (seen, unseen):
                rate, _, counted = debiased_win_rate([v for v in verdicts if v["lang"] in group])
                cells.append(f"{rate:.3f} ({counted} prompts)")
            answers = _answers(round_folder)
            changed = sum(answers[k] != seed_answers[k] for k in answers)
            _, identical, _ = debiased_win_rate(verdicts)
            lines.append(
                f"| {strategy} | {round_index} | {' | '.join(cells)} | {identical} "
                f"| {changed}/{len(answers)} |"
            )
        for round_index in (0, 1, 2, 3):
            mcq = folder / f"round_{round_index}/eval_mcq.jsonl"
            if mcq.exists():
                rows = _rows(mcq)
                accuracy_rows.append(
                    (strategy, round_index, sum(r["correct"] for r in rows), len(rows))
                )
        for manifest in folder.glob("round_*/*.manifest.json"):
            if manifest.stat().st_ino in counted_manifests:
                continue  # a stage shared (hard-linked) between runs ran once
            counted_manifests.add(manifest.stat().st_ino)
            facts = json.loads(manifest.read_text())
            seconds.setdefault(manifest.name.split(".")[0], []).append(facts["seconds"])
    lines += ["", "### The self-judge's letters in evaluation (all strategies and rounds)", ""]
    lines += ["| order | A | B | tie | unparsed |", "|---|---|---|---|---|"]
    for order in ("candidate_first", "baseline_first"):
        counts = [letters[(order, c)] for c in ("A", "B", "tie", "None")]
        lines.append(f"| {order} | " + " | ".join(str(c) for c in counts) + " |")
    lines += ["", "### Training self-judge (scores 1-10 by logprob), per strategy and round", ""]
    lines += [
        "| strategy | round | judged | unparsed | mean score | mean best - worst |",
        "|---|---|---|---|---|---|",
    ]
    for strategy in STRATEGIES:
        for round_index in (1, 2, 3):
            path = runs / strategy / f"round_{round_index}/judgments.jsonl"
            pairs_path = path.with_name("pairs.jsonl")
            if not path.exists() or not pairs_path.exists():
                continue
            judged = _rows(path)
            scores = [r["score"] for r in judged if r["score"] is not None]
            margins = [p["chosen_score"] - p["rejected_score"] for p in _rows(pairs_path)]
            lines.append(
                f"| {strategy} | {round_index} | {len(judged)} | {len(judged) - len(scores)} "
                f"| {statistics.fmean(scores):.2f} | {statistics.fmean(margins):.3f} |"
            )
    lines += ["", "### Multiple-choice sample accuracy (30 questions, en de fr es zh)", ""]
    lines += ["| strategy | round | correct |", "|---|---|---|"]
    lines += [f"| {s} | {r} | {c}/{n} |" for s, r, c, n in accuracy_rows]
    lines += ["", "### Seconds per stage (over the rounds and strategies that ran it)", ""]
    lines += ["| stage | runs | median s | max s |", "|---|---|---|---|"]
    for stage, values in sorted(seconds.items()):
        lines.append(
            f"| {stage} | {len(values)} | {statistics.median(values):.1f} | {max(values):.1f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path("runs/study"))
    parser.add_argument("--analyse-only", action="store_true")
    args = parser.parse_args()
    if not args.analyse_only:
        run_study(args.output)
    text = analyse(args.output)
    (args.output / "study.md").write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
