"""The I/O edge of each loop stage: read the round's artifacts, call the pure core, write.

In: a :class:`~congrad.pipeline.context.RunContext` and a round number. Out: the stage's
files in the round folder and a dict of facts (counts per language) for its manifest.
Each ``run_<stage>`` is called by :meth:`~congrad.pipeline.runner.Runner.run_stage`,
which writes the manifest after it returns; nothing here decides stage order.

With several processes, ``run_generate``, ``run_judge`` (with the HF backend), ``run_filter``
and ``run_train`` run on every rank (:data:`congrad.pipeline.stage_graph.COLLECTIVE_STAGES`):
the work is shared, the main process alone keeps the partial logs and writes the files, and
the other ranks return no facts. The other stages (and generate / judge with vLLM) run on the main
process alone, as a world of one (:func:`congrad.parallel.distributed.solo`).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict
from typing import Any

from congrad.data.artifacts import read_jsonl, write_jsonl
from congrad.data.records import Completion, Judgment, PreferencePair, PromptRecord
from congrad.parallel import distributed
from congrad.pipeline.context import RunContext
from congrad.pipeline.stage_graph import StageFailed
from congrad.pipeline.stage_io import generation_backend, mcq_accuracy, partial_log
from congrad.util.seeds import stable_seed


def _per_lang(records: list[Any]) -> dict[str, int]:
    return dict(sorted(Counter(r.lang for r in records).items()))


def load_prompts(context: RunContext, round_index: int) -> list[PromptRecord]:
    return [
        PromptRecord(**row) for row in read_jsonl(context.folder(round_index) / "prompts.jsonl")
    ]


def load_completions(context: RunContext, round_index: int) -> list[Completion]:
    rows = read_jsonl(context.folder(round_index) / "completions.jsonl")
    return [Completion(**row) for row in rows]


def load_judgments(context: RunContext, round_index: int) -> list[Judgment]:
    rows = read_jsonl(context.folder(round_index) / "judgments.jsonl")
    return [
        Judgment(
            **{
                **row,
                "repeat_scores": tuple(row["repeat_scores"]),
                "outputs": tuple(row["outputs"]),
            }
        )
        for row in rows
    ]


def load_pairs(context: RunContext, round_index: int) -> list[PreferencePair]:
    return [
        PreferencePair(**row) for row in read_jsonl(context.folder(round_index) / "pairs.jsonl")
    ]


def run_prompts(context: RunContext, round_index: int) -> dict[str, Any]:
    from congrad.data.prompts import load_builtin_prompts, load_prompt_files, partition_rounds

    config = context.config
    languages = config.prompts.languages
    if config.prompts.files:
        prompts = load_prompt_files(config.prompts.files, languages)
    else:
        prompts = load_builtin_prompts("train", languages)
    rounds = partition_rounds(prompts, config.rounds, config.prompts.per_round, config.seed)
    chosen = rounds[round_index]
    write_jsonl(context.folder(round_index) / "prompts.jsonl", (p.to_dict() for p in chosen))
    return {"counts": _per_lang(chosen)}


def run_generate(context: RunContext, round_index: int) -> dict[str, Any]:
    from congrad.rounds.generate import generate_completions

    config = context.config
    prompts = load_prompts(context, round_index)
    main = distributed.is_main()
    log = partial_log(context, round_index, "generate") if main else None
    done = distributed.broadcast({row["completion_id"] for row in log.done} if log else set())
    backend = generation_backend(context, round_index, config.generate.batch_size)
    generate_completions(
        backend,
        prompts,
        config.generate,
        seed=config.seed,
        round_index=round_index,
        skip=done,
        on_done=(lambda batch: log.append(c.to_dict() for c in batch)) if log else None,
        progress=context.progress,
    )
    if log is None:  # another rank: the main process writes
        return {}
    completions = sorted(
        (Completion(**row) for row in log.done),
        key=lambda c: (c.lang, c.prompt_id, c.sample_index),
    )
    write_jsonl(
        context.folder(round_index) / "completions.jsonl", (c.to_dict() for c in completions)
    )
    log.remove()
    unfinished = Counter(c.lang for c in completions if not c.finished)
    return {"counts": _per_lang(completions), "cut_at_max_tokens": dict(sorted(unfinished.items()))}


def run_judge(context: RunContext, round_index: int) -> dict[str, Any]:
    from congrad.rounds.self_judge import judge_completions

    config = context.config
    completions = load_completions(context, round_index)
    main = distributed.is_main()
    log = partial_log(context, round_index, "judge") if main else None
    done = distributed.broadcast({row["completion_id"] for row in log.done} if log else set())
    backend = generation_backend(context, round_index, config.judge.batch_size)
    chunk = 4 * config.judge.batch_size  # logged chunk by chunk, so a crash loses little
    # Chunks are cut from ALL the completions, not from those left after a crash: the
    # judge batches a chunk by prompt length, and a padded batch's log-probs depend on
    # its neighbours in the last bits, so only the uninterrupted run's chunks give its
    # exact scores. A chunk logged whole is skipped; a partly logged one (a crash
    # mid-append) is judged whole again and only its missing judgments are appended.
    # Several processes: the chunks are spread over the ranks, a wave at a time.
    starts = [
        start
        for start in range(0, len(completions), chunk)
        if not all(c.completion_id in done for c in completions[start : start + chunk])
    ]

    def judge_chunk(start: int) -> list[Any]:
        return judge_completions(
            backend,
            completions[start : start + chunk],
            config=config.judge,
            seed=stable_seed("judge", config.seed, round_index),
            progress=False,
        )

    for _, judged in distributed.map_in_waves(starts, judge_chunk):
        if log is not None:
            log.append(j.to_dict() for j in judged if j.completion_id not in done)
            context.log(f"round {round_index}: judged {len(log.done)}/{len(completions)}")
    if log is None:  # another rank: the main process writes
        return {}
    order = {c.completion_id: i for i, c in enumerate(completions)}
    rows = sorted(log.done, key=lambda row: order[row["completion_id"]])
    write_jsonl(context.folder(round_index) / "judgments.jsonl", rows)
    log.remove()
    unparsed = Counter(row["lang"] for row in rows if row["score"] is None)
    return {"counts": _per_lang(completions), "unparsed": dict(sorted(unparsed.items()))}


def run_pairs(context: RunContext, round_index: int) -> dict[str, Any]:
    from congrad.rounds.pairs import build_pairs

    pairs, dropped = build_pairs(
        load_completions(context, round_index), load_judgments(context, round_index)
    )
    folder = context.folder(round_index)
    write_jsonl(folder / "pairs.jsonl", (p.to_dict() for p in pairs))
    write_jsonl(folder / "dropped.jsonl", (d.to_dict() for d in dropped))
    reasons: dict[str, dict[str, int]] = {}
    for d in dropped:
        reasons.setdefault(d.reason, {}).setdefault(d.lang, 0)
        reasons[d.reason][d.lang] += 1
    for lang in sorted({d.lang for d in dropped} - {p.lang for p in pairs}):
        lost = ", ".join(f"{n} {reason}" for reason, by in reasons.items() if (n := by.get(lang)))
        context.log(
            f"warning: round {round_index}: language {lang} has no preference pairs (prompts "
            f"dropped: {lost}; see dropped.jsonl); it sits out this round's training and the "
            "gradient consensus built from it"
        )
    return {"counts": _per_lang(pairs), "dropped": reasons}


def run_filter(context: RunContext, round_index: int) -> dict[str, Any]:
    from congrad.config.run import Strategy
    from congrad.core.gradient_ema import GradientEMA
    from congrad.rounds.filtering import filter_pairs

    config = context.config
    pairs = load_pairs(context, round_index)
    folder = context.folder(round_index)
    strategy = config.filter.strategy if round_index > 1 else Strategy.FULL
    previous_ema = context.folder(round_index - 1) / "ema.safetensors"
    result = filter_pairs(
        pairs,
        config,
        strategy,
        load_model=lambda: context.model_for(round_index),
        load_ema=lambda model, _: GradientEMA.load(previous_ema, model),
        progress=context.progress,
    )
    if not distributed.is_main():  # the scores were gathered; the main process writes
        return {}
    (folder / "scores.jsonl").unlink(missing_ok=True)
    if result.scores is not None:
        write_jsonl(folder / "scores.jsonl", (s.to_dict() for s in result.scores))
    write_jsonl(folder / "selection.jsonl", (s.to_dict() for s in result.selection))
    kept = Counter(s.lang for s in result.selection if s.kept)
    return {
        "strategy": str(strategy),
        "kept": dict(sorted(kept.items())),
        "counts": _per_lang(pairs),
    }


def run_train(context: RunContext, round_index: int) -> dict[str, Any]:
    from congrad.models.lora import attach_adapter, merge_adapter
    from congrad.rounds.train import save_round_model, train_round

    config = context.config
    folder = context.folder(round_index)
    kept_ids = {row["pair_id"] for row in read_jsonl(folder / "selection.jsonl") if row["kept"]}
    pairs = [p for p in load_pairs(context, round_index) if p.pair_id in kept_ids]
    if not pairs:
        raise StageFailed(
            f"round {round_index}: no preference pairs to train on (every language lost all "
            "its prompts to ties or unparsed judgments); see dropped.jsonl and judgments.jsonl"
        )
    ref_logps = None
    if (folder / "scores.jsonl").exists():
        ref_logps = {
            row["pair_id"]: (row["ref_chosen_logps"], row["ref_rejected_logps"])
            for row in read_jsonl(folder / "scores.jsonl")
        }
    schedule, schedule_facts = _schedule(context, pairs, round_index)
    model, tokenizer = context.model_for(round_index)
    context.set_model_round(None)  # the weights change in place: not M_{t-1} any more
    model = attach_adapter(model, config.model.lora)  # LoRA: a fresh adapter (congrad.models.lora)
    result, ema = train_round(
        model,
        tokenizer,
        pairs,
        train=config.train,
        ema=config.ema,
        seed=stable_seed("train", config.seed, round_index),
        ref_logps=ref_logps,
        schedule=schedule,
        progress=context.progress,
    )
    state_dict = result.weights  # DeepSpeed: gathered from its partitions (congrad.parallel.zero)
    if distributed.is_sharded(model):  # FSDP2: gather the weights; the shards are dropped
        state_dict = distributed.full_state_dict(model)
    if state_dict is not None:
        context.release_model()  # later stages reload M_t whole from its folder
    else:
        model = merge_adapter(model)  # LoRA: M_t = M_{t-1} + (alpha/r) B A, on EVERY rank
        context.set_model_round(round_index)
    if not distributed.is_main():  # every rank holds the same weights and EMA
        return {}
    save_round_model(model, tokenizer, folder / "model", state_dict=state_dict)
    ema.save(folder / "ema.safetensors")
    write_jsonl(folder / "train_log.jsonl", (asdict(step) for step in result.log))
    return {
        "counts": _per_lang(pairs),
        "steps": result.steps,
        "mean_loss": result.mean_loss,
        "loss_by_lang": result.lang_mean_loss,
        **schedule_facts,
    }


def _schedule(
    context: RunContext, pairs: list[PreferencePair], round_index: int
) -> tuple[list[list[int]] | None, dict[str, Any]]:
    """The minibatch order of ``train.schedule`` and what it was built from."""
    from congrad.rounds import schedules
    from congrad.rounds.train import language_schedule

    config = context.config
    seed = stable_seed("train", config.seed, round_index)
    kind = config.train.schedule
    if kind == "uab":
        probabilities = schedules.uab_probabilities(pairs)
        built = schedules.uab_schedule(pairs, config.train.batch_size, seed)
        facts: dict[str, Any] = {"language_probabilities": probabilities}
    elif kind == "lcl":
        accuracy = {lang: row["accuracy"] for lang, row in mcq_accuracy(context, 0).items()}
        built = schedules.lcl_schedule(pairs, config.train.batch_size, seed, accuracy)
        languages = sorted({p.lang for p in pairs})
        facts = {
            "seed_accuracy": accuracy,
            "dominant_languages": schedules.dominant_languages(languages, accuracy),
        }
    else:
        return language_schedule(pairs, config.train.batch_size, seed), {}
    counts = Counter(pairs[batch[0]].lang for batch in built)
    facts["minibatches_by_lang"] = dict(sorted(counts.items()))
    return built, {"schedule": kind, **facts}
