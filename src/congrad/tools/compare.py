"""``congrad compare``: every strategy of the paper from one base config, then a report.

In: a validated base :class:`~congrad.config.run.RunConfig`, strategy names (docs/design.md
section 7), the number of ``rand`` seeds and the keep fractions to sweep. Out, under the
base ``output_dir``: ``compare.json`` (the plan), ``runs/<name>/`` (one ordinary, resumable
run folder per planned run, trained and evaluated), ``judge_cache.jsonl`` shared by all
runs, and ``report/`` (:mod:`congrad.reporting.report`).

Runs: each filtering strategy (``full``, ``rand``, ``max-/min-len``, ``max-/min-reward``,
``max-/min-congrad``) once per keep fraction (``full`` once), ``rand`` once per seed (its
``filter.seed``; the report averages them); ``uab`` and ``lcl`` train on the full data with
their schedules (``train.schedule``); ``mono`` is one run per language on that language
alone (``mono-<lang>``), evaluated on it.

Sharing: every multilingual strategy's round 1 is identical (round 1 is unfiltered), and so
is the seed model's evaluation. Before a run starts, :func:`share_completed` hard-links the
artifacts of each round-0/round-1 stage whose fingerprint (settings + input digests, see
:mod:`congrad.pipeline.runner`) equals that of a finished stage in an earlier run: what is provably
the same computation is done once. ``uab`` and ``lcl`` share everything up to their own
training; ``mono`` shares nothing but the verdict cache. Links are safe because artifacts
are only ever replaced (written to a temporary file and renamed), never edited in place.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from congrad.config.run import ConfigError, RunConfig, Strategy, config_changes, set_dotted
from congrad.data.artifacts import manifest_path, read_manifest
from congrad.pipeline.runner import Runner, prepare_run_dir
from congrad.pipeline.stage_graph import OUTPUTS, STAGES, StageNotReady
from congrad.util.atomic import write_text_atomic

SCHEDULE_BASELINES = ("uab", "lcl")
COMPARE_STRATEGIES = (*(s.value for s in Strategy), *SCHEDULE_BASELINES, "mono")
SHAREABLE = (
    (0, "answers"),
    (0, "mcq"),
    *((1, stage) for stage in STAGES),
    (1, "answers"),
    (1, "mcq"),
    (1, "verdicts"),
)


@dataclass(frozen=True)
class PlannedRun:
    """One run of the comparison: its folder name, its report row and its overrides."""

    name: str
    strategy: str
    keep_fraction: float | None = None
    seed_index: int | None = None
    lang: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_strategies(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in COMPARE_STRATEGIES]
    if unknown or not names:
        raise ConfigError(
            f"--strategies: unknown {', '.join(unknown) or '(none given)'}; "
            f"choose from {', '.join(COMPARE_STRATEGIES)}"
        )
    return list(dict.fromkeys(names))


def parse_keeps(text: str | None) -> list[float] | None:
    if text is None:
        return None
    try:
        keeps = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"--keep must be comma-separated fractions, got {text!r}") from None
    bad = [k for k in keeps if not 0 < k <= 1]
    if bad or not keeps:
        raise ConfigError(f"--keep fractions must lie in (0, 1], got {text!r}")
    return list(dict.fromkeys(keeps))


def plan_runs(
    base: RunConfig, strategies: Sequence[str], *, seeds: int = 1, keeps: list[float] | None = None
) -> list[PlannedRun]:
    """The runs of a comparison, in execution order (multilingual ones first)."""
    keeps = keeps or [base.filter.keep_fraction]
    plan = []
    overrides: dict[str, Any]
    for name in strategies:
        if name == "mono":
            continue
        if name in SCHEDULE_BASELINES:
            overrides = {"filter.strategy": "full", "train.schedule": name}
            plan.append(PlannedRun(name, name, overrides=overrides))
            continue
        if name == "full":
            plan.append(PlannedRun("full", "full", overrides={"filter.strategy": "full"}))
            continue
        for keep in keeps:
            for seed_index in range(seeds if name == "rand" else 1):
                run_name = name + (f"-keep{keep:g}" if len(keeps) > 1 else "")
                run_name += f"-seed{seed_index}" if name == "rand" and seeds > 1 else ""
                overrides = {"filter.strategy": name, "filter.keep_fraction": keep}
                if name == "rand":
                    overrides["filter.seed"] = base.seed + seed_index
                plan.append(
                    PlannedRun(
                        run_name,
                        name,
                        keep,
                        seed_index if name == "rand" else None,
                        overrides=overrides,
                    )
                )
    if "mono" in strategies:
        for lang in base.prompts.languages:
            overrides = {
                "filter.strategy": "full",
                "prompts.languages": [lang],
                "evaluate.languages": [lang],
            }
            plan.append(PlannedRun(f"mono-{lang}", "mono", lang=lang, overrides=overrides))
    return plan


def run_config(base: RunConfig, root: Path, planned: PlannedRun) -> RunConfig:
    """The base config with the run's overrides, its own folder and the shared verdict cache."""
    data = base.model_dump(mode="json")
    overrides = {
        **planned.overrides,
        "output_dir": str(root / "runs" / planned.name),
        "evaluate.judge.cache": base.evaluate.judge.cache or str(root / "judge_cache.jsonl"),
    }
    for key, value in overrides.items():
        set_dotted(data, key, value)
    try:
        return RunConfig.model_validate(data)
    except ValueError as error:
        raise ConfigError(f"run {planned.name}: {error}") from None


def _link_tree(source: Path, target: Path) -> None:
    """Hard-link ``source`` (a file or folder) at ``target``; copy across file systems."""
    if source.is_dir():
        target.mkdir(parents=True, exist_ok=True)
        for child in source.iterdir():
            _link_tree(child, target / child.name)
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.link")
    temporary.unlink(missing_ok=True)
    try:
        os.link(source, temporary)
    except OSError:
        shutil.copy2(source, temporary)
    os.replace(temporary, target)


def share_completed(runner: Runner, donors: Sequence[Path]) -> list[tuple[int, str]]:
    """Link finished round-0/1 stages of ``donors`` (run folders) whose fingerprints equal
    what ``runner`` expects; returns the (round, stage) pairs shared. The manifest is linked
    last, so an interrupted share leaves the stage incomplete, to be redone."""
    shared = []
    for round_index, stage in SHAREABLE:
        if runner.is_complete(stage, round_index):
            continue
        try:
            expected = runner.expected_fingerprint(stage, round_index)
        except StageNotReady:
            continue
        for donor in donors:
            folder = donor / f"round_{round_index}"
            manifest = read_manifest(folder, stage)
            if manifest is None or manifest.get("fingerprint") != expected:
                continue
            target = runner.folder(round_index)
            for name in OUTPUTS[stage]:
                relative = Path(name.rstrip("?")).parts[0]  # model/model.safetensors -> model
                if (folder / relative).exists():
                    _link_tree(folder / relative, target / relative)
            _link_tree(manifest_path(folder, stage), manifest_path(target, stage))
            shared.append((round_index, stage))
            break
    return shared


def _write_plan(root: Path, base: RunConfig, plan: list[PlannedRun], force: bool) -> None:
    path = root / "compare.json"
    base_data = base.model_dump(mode="json")
    if path.exists() and not force:
        try:
            previous = RunConfig.model_validate(
                json.loads(path.read_text(encoding="utf-8"))["base_config"]
            )
        except (KeyError, TypeError, ValueError):  # JSON and validation errors are ValueErrors
            raise ConfigError(
                f"{path} is not a comparison plan congrad can read; use another output_dir, "
                "or --force to overwrite it"
            ) from None
        # As for one run: evaluation settings may change (their stages rerun by fingerprint).
        changed = [k for k in config_changes(previous, base) if not k.startswith("evaluate.")]
        if changed:
            raise ConfigError(
                f"{root} holds a comparison with another base config (changed: "
                f"{', '.join(changed)}); use another output_dir, or --force to rerun what "
                "the change affects"
            )
    root.mkdir(parents=True, exist_ok=True)
    document = {"base_config": base_data, "runs": [p.to_dict() for p in plan]}
    write_text_atomic(path, json.dumps(document, indent=2, ensure_ascii=False) + "\n")


def run_comparison(
    base: RunConfig,
    strategies: Sequence[str],
    *,
    seeds: int = 1,
    keeps: list[float] | None = None,
    force: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> Path:
    """Train and evaluate every planned run (resumably), then write the report."""
    from congrad.reporting.report import build_report

    root = Path(base.output_dir)
    plan = plan_runs(base, strategies, seeds=seeds, keeps=keeps)
    configs = [run_config(base, root, planned) for planned in plan]  # all valid before work
    _write_plan(root, base, plan, force)
    finished: list[Path] = []
    for planned, config in zip(plan, configs, strict=True):
        log(f"[bold]{planned.name}[/bold]: {config.output_dir}")
        prepare_run_dir(config, force=force)
        with Runner(config, progress=progress, log=log) as runner:
            shared = share_completed(runner, finished)
            if shared:
                log(f"{planned.name}: shared " + ", ".join(f"round {r} {s}" for r, s in shared))
            runner.run_all()
            runner.evaluate()
        finished.append(Path(config.output_dir))
    return build_report(root)
