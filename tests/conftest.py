"""Shared fixtures: the tiny model, multilingual pairs and an EMA filled by real steps; a
preference-file writer; the environment ``accelerate launch`` gives DeepSpeed ranks."""

from __future__ import annotations

from pathlib import Path

import pytest

from congrad import GradientEMA, PreferencePair, collate_pairs, encode_pair, lp_dpo_loss
from congrad.core.losses import sequence_logps
from congrad.models.tiny import tiny_causal_lm

REPO_ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("unit", "e2e", "distributed")
"""Test folders and their markers: ``pytest -m unit`` runs the unit layer alone."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test by the folder it lives in (tests/unit, tests/e2e, tests/distributed)."""
    tests = Path(__file__).resolve().parent
    for item in items:
        layer = Path(item.path).resolve().relative_to(tests).parts[0]
        if layer in LAYERS:
            item.add_marker(getattr(pytest.mark, layer))


LANGS = ("en", "de", "zh")
TEXTS = {
    "en": ("Explain why the sky is blue.", "Sunlight scatters off air molecules.", "Blue."),
    "de": ("Warum ist der Himmel blau?", "Das Sonnenlicht wird an der Luft gestreut.", "Weil."),
    "zh": ("为什么天空是蓝色的？", "阳光被空气分子散射，蓝光散射最多。", "不知道。"),
}


def make_pairs(count: int = 9) -> list[PreferencePair]:
    """Pairs of varied lengths in three languages (deterministic)."""
    pairs = []
    for i in range(count):
        lang = LANGS[i % len(LANGS)]
        prompt, good, bad = TEXTS[lang]
        pairs.append(
            PreferencePair(
                pair_id=f"{lang}-{i}",
                lang=lang,
                prompt=prompt * (1 + i % 2),
                chosen=" ".join([good] * (1 + i % 3)),
                rejected=bad * (1 + i % 4),
            )
        )
    return pairs


def write_preference_file(path, pairs: list[PreferencePair]) -> None:
    """``pairs`` as a preference dataset file (``id, lang, prompt, chosen, rejected``), the
    input of ``congrad filter --dataset``."""
    from congrad.data.artifacts import write_jsonl

    columns = ("lang", "prompt", "chosen", "rejected")
    write_jsonl(path, ({"id": p.pair_id, **{c: getattr(p, c) for c in columns}} for p in pairs))


def fill_ema(model, tokenizer, pairs, ema: GradientEMA, steps: int = 6) -> None:
    """Run single-language LP-DPO backward passes and fold each into the EMA."""
    model.train()
    for step in range(steps):
        lang = LANGS[step % len(LANGS)]
        subset = [p for p in pairs if p.lang == lang]
        batch = collate_pairs([encode_pair(tokenizer, p, 64) for p in subset], 0)
        model.zero_grad()
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        logps = sequence_logps(logits, batch.input_ids, batch.response_mask)
        n = batch.num_pairs
        # A reference shifted per step gives non-trivial, step-dependent gradients.
        loss = lp_dpo_loss(
            logps[:n],
            logps[n:],
            logps[:n].detach() - 0.5 * step,
            logps[n:].detach(),
            batch.chosen_lengths,
            batch.rejected_lengths,
            beta=0.1,
            alpha=0.01,
        ).mean()
        loss.backward()
        ema.update(lang)
    model.zero_grad()


@pytest.fixture(scope="session")
def tiny():
    return tiny_causal_lm(seed=0)


@pytest.fixture(scope="session")
def pairs():
    return make_pairs()


@pytest.fixture()
def filled_ema(tiny, pairs):
    model, tokenizer = tiny
    ema = GradientEMA(model, rank=4, iters=3, gamma=0.9)
    fill_ema(model, tokenizer, pairs, ema)
    return ema


def accelerate_launch_environment(path: Path) -> dict[str, str]:
    """The ``ACCELERATE_*`` variables ``accelerate launch --config_file PATH`` gives each rank
    of a DeepSpeed config (accelerate's own code; launching needs the GPUs themselves)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env

    parser = launch_command_parser()
    args = parser.parse_args(["--config_file", str(path), "-m", "congrad.cli", "run"])
    args, defaults, _ = _validate_launch_command(args)
    args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)
    _, env = prepare_deepspeed_cmd_env(args)
    return {key: value for key, value in env.items() if key.startswith("ACCELERATE_")}
