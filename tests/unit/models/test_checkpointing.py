"""Gradient checkpointing: same loss, gradients and training; off for scoring; bf16 weights."""

from __future__ import annotations

import copy

import pytest
import torch

from congrad import GradientEMA, score_pairs
from congrad.config.run import EMAConfig, LoRAConfig, TrainConfig
from congrad.core.losses import lp_dpo_loss, sequence_logps
from congrad.data.encoding import collate_pairs, encode_pair
from congrad.models.checkpointing import (
    checkpointing_disabled,
    enable_gradient_checkpointing,
    is_checkpointing,
)
from congrad.models.tiny import tiny_causal_lm
from congrad.rounds.train import train_round
from tests.conftest import fill_ema, make_pairs

ON = TrainConfig(gradient_checkpointing=True)
OFF = TrainConfig()


def _loss(model, tokenizer, pairs):
    batch = collate_pairs([encode_pair(tokenizer, p, 64) for p in pairs], 0)
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    logps = sequence_logps(logits, batch.input_ids, batch.response_mask)
    n = batch.num_pairs
    return lp_dpo_loss(
        logps[:n],
        logps[n:],
        logps[:n].detach() - 0.3,
        logps[n:].detach(),
        batch.chosen_lengths,
        batch.rejected_lengths,
        beta=0.1,
        alpha=0.01,
    ).mean()


def _count_calls(model, name: str) -> list[int]:
    calls = [0]
    dict(model.named_modules())[name].register_forward_hook(
        lambda *_: calls.__setitem__(0, calls[0] + 1)
    )
    return calls


def _lora(model):
    from congrad.models.lora import attach_adapter

    pytest.importorskip("peft")
    return attach_adapter(model, LoRAConfig(enabled=True, r=4, alpha=8.0))


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_loss_and_gradients_equal_with_and_without_checkpointing(lora):
    model, tokenizer = tiny_causal_lm(seed=2)
    model = _lora(model) if lora else model
    pairs = make_pairs(4)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    layer = next(n for n, _ in model.named_modules() if n.endswith("layers.0.self_attn.q_proj"))
    calls = _count_calls(model, layer)
    plain_loss = _loss(model, tokenizer, pairs)
    plain = torch.autograd.grad(plain_loss, trainable)
    assert calls == [1]
    undo = enable_gradient_checkpointing(model, ON)
    assert is_checkpointing(model)
    checkpointed_loss = _loss(model, tokenizer, pairs)
    checkpointed = torch.autograd.grad(checkpointed_loss, trainable)
    assert calls == [3]  # forward, then recomputed in the backward: checkpointing is real
    torch.testing.assert_close(checkpointed_loss, plain_loss, rtol=1e-6, atol=1e-7)
    for a, b in zip(checkpointed, plain, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    undo()
    assert not is_checkpointing(model)
    assert not getattr(model, "_require_grads_hooks", None)  # no hook left behind
    assert enable_gradient_checkpointing(model, OFF)() is None and not is_checkpointing(model)


@pytest.mark.slow
def test_training_with_checkpointing_equals_training_without(tiny):
    pairs = make_pairs(4)
    results = []
    for config in (OFF, ON):
        model = copy.deepcopy(tiny[0])
        result, ema = train_round(
            model,
            tiny[1],
            pairs,
            train=config.model_copy(update={"learning_rate": 1e-3, "batch_size": 2}),
            ema=EMAConfig(rank=4, iters=2),
            seed=0,
        )
        assert not is_checkpointing(model) and not model.training
        results.append((model.state_dict(), ema.gram(), result.mean_loss))
    (state_off, gram_off, loss_off), (state_on, gram_on, loss_on) = results
    assert loss_on == pytest.approx(loss_off, rel=1e-6)
    torch.testing.assert_close(gram_on, gram_off, rtol=1e-4, atol=1e-8)
    for key, value in state_off.items():
        torch.testing.assert_close(state_on[key], value, rtol=1e-4, atol=1e-6)


def test_scoring_a_checkpointing_model_equals_scoring_a_plain_one(tiny):
    model, tokenizer = copy.deepcopy(tiny[0]), tiny[1]
    pairs = make_pairs(6)
    ema = GradientEMA(model, rank=3)
    fill_ema(model, tokenizer, pairs, ema)
    kwargs = dict(beta=0.1, alpha=0.01, batch_size=3, max_length=48)
    plain = score_pairs(model, tokenizer, pairs, ema, **kwargs)
    enable_gradient_checkpointing(model, ON)
    model.train()  # as the trainer leaves it mid-round; scoring must not checkpoint
    with checkpointing_disabled(model):
        assert not is_checkpointing(model)
    assert is_checkpointing(model)  # restored
    scored = score_pairs(model, tokenizer, pairs, ema, **kwargs)
    assert is_checkpointing(model) and model.training
    for a, b in zip(scored, plain, strict=True):
        assert a.cosine == pytest.approx(b.cosine, rel=1e-6, abs=1e-9)
        assert a.ref_chosen_logps == pytest.approx(b.ref_chosen_logps, rel=1e-6)


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_bf16_weights_train(lora):
    model, tokenizer = tiny_causal_lm(seed=3, dtype=torch.bfloat16)
    model = _lora(model) if lora else model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    # bf16 weights without autocast (accelerate's mixed precision is process-wide state,
    # fixed by the first Accelerator of a test session).
    config = TrainConfig(learning_rate=1e-2, batch_size=3, gradient_checkpointing=True)
    result, ema = train_round(
        model, tokenizer, make_pairs(3), train=config, ema=EMAConfig(rank=2), seed=0
    )
    assert all(torch.isfinite(torch.tensor(row.loss)) for row in result.log)
    assert torch.isfinite(ema.gram()).all()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and changed <= trainable
    if lora:  # adapters train in fp32 beside bf16 base weights
        assert {p.dtype for n, p in model.named_parameters() if n in trainable} == {torch.float32}
