"""The I/O edge of evaluation (docs/design.md section 8): answers, multiple choice, verdicts.

In: a :class:`~congrad.pipeline.context.RunContext` and a round number ``t`` (0 is the
seed model M_0).
Out, in ``round_<t>/``:

- ``eval_answers.jsonl`` (stage ``answers``): M_t's answer to every held-out prompt of the
  evaluated languages, one per prompt; sampling seeds derive from the run seed and the
  prompt id alone, so every round answers with the same random numbers (greedy by default).
- ``eval_mcq.jsonl`` (stage ``mcq``): M_t's k-shot multiple-choice answer to every
  question of the configured files (:mod:`congrad.evaluation.mcq`), for the alignment tax.
- ``eval_verdicts.jsonl`` and ``winrates.json`` (stage ``verdicts``, t >= 1): each prompt
  judged twice, M_t's answer first (``candidate_first``) and M_0's first
  (``baseline_first``), so a judge's position bias cancels; the win rates with bootstrap
  intervals per language, averaged over the trained languages (``average``) and over the
  unseen ones (``average_unseen``), from :mod:`congrad.evaluation.winrate`.

Each ``run_<stage>`` is called by :meth:`~congrad.pipeline.runner.Runner.run_stage`, which
writes the manifest after it returns. Verdicts go through a cache keyed by a hash of judge
and prompt (:class:`~congrad.evaluation.judges.VerdictCache`), so a rerun, a resume after a
judge outage, or another run comparing the same answers asks the judge nothing twice.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from congrad.config.run import ModelConfig, RunConfig
from congrad.data.artifacts import fingerprint, read_jsonl, write_jsonl
from congrad.data.records import PromptRecord
from congrad.evaluation.verdict_summary import summarise_verdicts, verdict_winner
from congrad.parallel import distributed
from congrad.pipeline.context import RunContext
from congrad.pipeline.stage_graph import StageFailed
from congrad.pipeline.stage_io import generation_backend, partial_log
from congrad.util.atomic import write_text_atomic
from congrad.util.seeds import stable_seed

if TYPE_CHECKING:
    from congrad.evaluation.judges import PairwiseJudge

ORDERS = ("candidate_first", "baseline_first")


def load_eval_prompts(config: RunConfig) -> list[PromptRecord]:
    """The held-out prompts of the evaluated languages, at most ``max_prompts`` each (by id).

    Unset ``evaluate.languages`` means the trained languages plus those unseen languages
    the evaluation set has; a language asked for explicitly must be there.
    """
    from congrad.data.prompts import PromptDataError, load_builtin_prompts, load_prompt_files

    evaluate = config.evaluate
    if evaluate.prompts:
        records, source = load_prompt_files(evaluate.prompts), ", ".join(evaluate.prompts)
    else:
        records, source = load_builtin_prompts("eval"), "the built-in evaluation prompts"
    present = {record.lang for record in records}
    wanted = evaluate.eval_languages(config.prompts.languages)
    if evaluate.languages is None:
        trained = set(config.prompts.languages)
        wanted = [lang for lang in wanted if lang in trained or lang in present]
    missing = [lang for lang in wanted if lang not in present]
    if missing:
        raise PromptDataError(
            f"{source} have no prompts in {', '.join(missing)}; add evaluation prompts in "
            "those languages (evaluate.prompts) or set evaluate.languages"
        )
    chosen: list[PromptRecord] = []
    for lang in wanted:
        group = sorted((r for r in records if r.lang == lang), key=lambda r: r.prompt_id)
        chosen.extend(group[: evaluate.max_prompts])
    return chosen


def run_answers(context: RunContext, round_index: int) -> dict[str, Any]:
    from congrad.backends.generation import SamplingParams

    config, evaluate = context.config, context.config.evaluate
    prompts = load_eval_prompts(config)
    # Several processes (HF backend): the batches are spread over the ranks, a wave at a
    # time, and the main process alone keeps the log and writes.
    log = partial_log(context, round_index, "answers") if distributed.is_main() else None
    done = distributed.broadcast({row["prompt_id"] for row in log.done} if log else set())
    # generation_backend(t) serves round t's starting weights M_{t-1}: here M_t is wanted.
    backend = generation_backend(context, round_index + 1, evaluate.batch_size)
    params = SamplingParams(evaluate.max_new_tokens, evaluate.temperature, 1.0)
    # Batches are cut from ALL the prompts, not from those left after a crash: a padded
    # batch's logits depend on its neighbours in the last bits, so only the uninterrupted
    # run's batches surely give its answers. A batch logged whole is skipped; a partly
    # logged one (a crash mid-append) is answered whole and only its missing rows logged.
    starts = [
        start
        for start in range(0, len(prompts), evaluate.batch_size)
        if any(p.prompt_id not in done for p in prompts[start : start + evaluate.batch_size])
    ]

    def answer(start: int) -> list[dict[str, Any]]:
        batch = prompts[start : start + evaluate.batch_size]
        seeds = [stable_seed("evaluate", config.seed, p.prompt_id) for p in batch]
        texts = [backend.chat_prompt(p.prompt) for p in batch]
        generations = backend.generate(texts, params, seeds)
        return [
            {
                "prompt_id": p.prompt_id,
                "lang": p.lang,
                "prompt": p.prompt,
                "response": g.text,
                "num_tokens": g.num_tokens,
                "finished": g.finished,
            }
            for p, g in zip(batch, generations, strict=True)
            if p.prompt_id not in done
        ]

    answered: Any = distributed.map_in_waves(starts, answer)
    if context.progress:
        from rich.progress import track

        answered = track(
            answered, description=f"round {round_index}: evaluation answers", total=len(starts)
        )
    for _, rows in answered:
        if log is not None:
            log.append(rows)
    if log is None:  # another rank: the main process writes
        return {}
    wanted = {p.prompt_id for p in prompts}
    rows = sorted(
        (row for row in log.done if row["prompt_id"] in wanted),
        key=lambda row: (row["lang"], row["prompt_id"]),
    )
    write_jsonl(context.folder(round_index) / "eval_answers.jsonl", rows)
    log.remove()
    cut = Counter(row["lang"] for row in rows if not row["finished"])
    return {
        "counts": dict(sorted(Counter(row["lang"] for row in rows).items())),
        "cut_at_max_tokens": dict(sorted(cut.items())),
    }


def run_mcq(context: RunContext, round_index: int) -> dict[str, Any]:
    from congrad.data.mcq_files import load_mcq
    from congrad.evaluation.mcq import accuracy_by_lang, score_mcq

    config, mcq = context.config, context.config.evaluate.mcq
    languages = config.evaluate.eval_languages(config.prompts.languages)
    questions = [q for q in load_mcq(mcq.files) if q.lang in languages]
    if not questions:
        raise StageFailed(
            f"evaluate.mcq.files ({', '.join(mcq.files)}) hold no question in the evaluated "
            f"languages ({', '.join(languages)})"
        )
    chosen = []
    for lang in dict.fromkeys(q.lang for q in questions):
        group = sorted((q for q in questions if q.lang == lang), key=lambda q: q.question_id)
        chosen.extend(group[: mcq.max_per_language])
    model, tokenizer = context.model_after(round_index)
    results = score_mcq(
        model,
        tokenizer,
        chosen,
        shots=mcq.shots,
        seed=config.seed,
        batch_size=mcq.batch_size,
        max_length=mcq.max_length,
        progress=context.progress,
    )
    write_jsonl(context.folder(round_index) / "eval_mcq.jsonl", (r.to_dict() for r in results))
    present = {q.lang for q in chosen}
    return {
        "accuracy": accuracy_by_lang(results),
        "languages_without_questions": [lang for lang in languages if lang not in present],
    }


def run_verdicts(context: RunContext, round_index: int) -> dict[str, Any]:
    from congrad.evaluation.judges import VerdictCache, judge_prompts
    from congrad.evaluation.pairwise import pairwise_prompt

    config = context.config
    candidate = _answers(context, round_index)
    baseline = _answers(context, 0)
    if set(candidate) != set(baseline):
        raise StageFailed(
            f"round {round_index} and round 0 answered different prompts; delete "
            f"round_{round_index}/answers.manifest.json and round_0/answers.manifest.json "
            "to regenerate both"
        )
    slots, texts = [], []
    for prompt_id, answer in candidate.items():
        for order in ORDERS:
            mine, theirs = answer, baseline[prompt_id]
            first, second = (mine, theirs) if order == "candidate_first" else (theirs, mine)
            slots.append((answer, order))
            texts.append(pairwise_prompt(answer["prompt"], first["response"], second["response"]))
    judge = pairwise_judge(context)
    cache = VerdictCache(judge_cache_path(config))
    replies, stats = judge_prompts(judge, texts, cache, progress=context.progress)
    rows = [
        {
            "prompt_id": answer["prompt_id"],
            "lang": answer["lang"],
            "order": order,
            "choice": reply.verdict.choice,
            "winner": verdict_winner(reply.verdict.choice, order),
            "reason": reply.verdict.reason,
            "raw": reply.raw,
        }
        for (answer, order), reply in zip(slots, replies, strict=True)
    ]
    folder = context.folder(round_index)
    write_jsonl(folder / "eval_verdicts.jsonl", rows)
    summary = summarise_verdicts(config, rows)
    write_text_atomic(folder / "winrates.json", _json(summary))
    unparsed = Counter(row["lang"] for row in rows if row["winner"] is None)
    return {
        "judge_calls": stats.calls,
        "cache_hits": stats.cache_hits,
        "unparsed": dict(sorted(unparsed.items())),
        "average_win_rate": summary["average"]["win_rate"],
    }


def _answers(context: RunContext, round_index: int) -> dict[str, dict[str, Any]]:
    rows = read_jsonl(context.folder(round_index) / "eval_answers.jsonl")
    return {row["prompt_id"]: row for row in rows}


def _json(data: Any) -> str:
    import json

    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def judge_cache_path(config: RunConfig) -> Path:
    cache = config.evaluate.judge.cache
    return Path(cache) if cache else Path(config.output_dir) / "judge_cache.jsonl"


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")


def judge_cache_name(name_or_path: str) -> str:
    """What names a local judge's weights in its verdict cache key. A model folder (or
    file) is named by its path AND its weight files' names, sizes and modification times,
    so weights replaced in place (a retrained model saved to the same folder) get new
    verdicts instead of the old ones from the cache; a hub id or built-in name as it is."""
    path = Path(name_or_path)
    if not path.exists():
        return name_or_path
    stamps = []
    for file in sorted(path.rglob("*")) if path.is_dir() else [path]:
        if file.suffix in WEIGHT_SUFFIXES:
            stat = file.stat()
            where = file.name if file == path else str(file.relative_to(path))
            stamps.append((where, stat.st_size, stat.st_mtime_ns))
    return f"{name_or_path} (weights {fingerprint(stamps)})"


def pairwise_judge(context: RunContext) -> PairwiseJudge:
    """The configured judge: an OpenAI-compatible endpoint, a local model, or M_0."""
    from congrad.backends.generation import HFBackend
    from congrad.evaluation.judges import LocalJudge, OpenAIJudge

    config, judge = context.config, context.config.evaluate.judge
    if judge.backend == "openai":
        assert judge.model is not None  # the config validates it
        return OpenAIJudge(
            model=judge.model,
            base_url=judge.base_url,
            api_key_env=judge.api_key_env,
            max_concurrency=judge.max_concurrency,
            max_retries=judge.max_retries,
            timeout=judge.timeout,
            temperature=judge.temperature,
            max_tokens=judge.max_tokens,
        )
    if judge.backend == "self":
        model, tokenizer = context.model_after(0)
        name = judge_cache_name(config.model.name_or_path)  # the cache key trusts it
        if name == "tiny-random":
            name += f" (seed {config.seed})"
    else:
        from congrad.models.loading import load_model

        assert judge.model is not None
        model_config = ModelConfig(
            name_or_path=judge.model,
            dtype=config.model.dtype,
            trust_remote_code=config.model.trust_remote_code,
        )
        model, tokenizer = load_model(model_config, seed=config.seed)
        name = judge_cache_name(judge.model)
    return LocalJudge(
        HFBackend(model, tokenizer, batch_size=judge.batch_size),
        name=name,
        mode=judge.mode,
        max_new_tokens=judge.max_tokens,
        min_mass=judge.min_mass,
        batch_size=judge.batch_size,
    )
