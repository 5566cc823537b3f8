"""LoRA rounds (congrad.models.lora): fixed-seed adapters, tracked A/B matrices, exact scores,
merge."""

from __future__ import annotations

import math

import pytest
import torch

from congrad import GradientEMA, score_pairs
from congrad.config.run import LoRAConfig, load_config
from congrad.core.gradient_ema import tracked_linears
from congrad.core.reference import pair_loss, per_pair_scores
from congrad.models.lora import (
    LORA_INCLUDE,
    LoRAError,
    adapter_attached,
    adapter_linears,
    attach_adapter,
    check_lora_available,
    detach_adapter,
    has_adapter,
    merge_adapter,
)
from congrad.models.tiny import tiny_causal_lm
from tests.conftest import fill_ema, make_pairs

pytest.importorskip("peft")

LORA = LoRAConfig(enabled=True, r=4, alpha=8.0)
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _perturb_b(model, seed: int = 3, scale: float = 0.05) -> None:
    """Give every B a seeded non-zero value, as after some training."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for kind, linear in adapter_linears(model).values():
            if kind == "B":
                noise = torch.randn(linear.weight.shape, generator=generator, dtype=torch.float64)
                linear.weight.copy_(scale * noise)


def _pair_loss(model, tokenizer, pair) -> torch.Tensor:
    """One pair's LP-DPO loss at reference = policy (the scored loss)."""
    return pair_loss(model, tokenizer, pair, beta=0.1, alpha=0.01, max_length=64)[0]


def test_config_defaults_and_validation():
    config = load_config(None, ["model.lora.enabled=true", "model.lora.r=8"])
    assert config.model.lora.enabled and config.model.lora.r == 8
    assert config.model.lora.target_modules == list(PROJECTIONS)
    assert not load_config().model.lora.enabled
    with pytest.raises(ValueError, match=r"model\.lora\.r"):
        load_config(None, ["model.lora.r=0"])
    with pytest.raises(ValueError, match=r"model\.dtype=float32"):
        load_config(None, ["model.dtype=float16", "train.mixed_precision=fp16"])
    load_config(None, ["model.dtype=float16", "train.mixed_precision=fp16", "model.lora.enabled=1"])


def test_fresh_adapter_is_the_same_every_round_and_leaves_outputs_unchanged():
    first, tokenizer = tiny_causal_lm(seed=0)
    second, _ = tiny_causal_lm(seed=1)  # other base weights, as M_{t-1} differs each round
    ids = tokenizer("Explain why the sky is blue.", return_tensors="pt").input_ids
    plain_logits = first(input_ids=ids).logits
    a, b = attach_adapter(first, LORA), attach_adapter(second, LORA)
    linears_a, linears_b = adapter_linears(a), adapter_linears(b)
    assert len(linears_a) == 2 * len(PROJECTIONS) * 2  # A and B, 7 projections, 2 layers
    assert linears_a.keys() == linears_b.keys()
    for name, (kind, linear) in linears_a.items():
        weight = linear.weight
        torch.testing.assert_close(weight, linears_b[name][1].weight, rtol=0, atol=0)
        if kind == "B":
            assert not weight.any()
        else:  # peft's Kaiming-uniform range, and really random
            assert weight.abs().max() <= 1 / math.sqrt(weight.shape[1])
            assert weight.std() > 0.3 / math.sqrt(weight.shape[1])
    torch.testing.assert_close(a(input_ids=ids).logits, plain_logits, rtol=0, atol=0)
    other = attach_adapter(tiny_causal_lm(seed=0)[0], LORA.model_copy(update={"init_seed": 1}))
    name = next(n for n, (kind, _) in linears_a.items() if kind == "A")
    assert not torch.equal(adapter_linears(other)[name][1].weight, linears_a[name][1].weight)
    global_state = torch.random.get_rng_state()
    attach_adapter(tiny_causal_lm(seed=2)[0], LORA)
    assert torch.equal(torch.random.get_rng_state(), global_state)  # no global RNG used


def test_b_gradient_at_init_is_the_full_gradient_projected_by_a():
    """B = 0: dL/dA = 0 and dL/dB = (alpha / r) G A^T, with G the full weight's gradient."""
    model, tokenizer = tiny_causal_lm(seed=4, dtype=torch.float64)
    pair = make_pairs(2)[1]
    names = [
        f"model.layers.{i}.{part}.{proj}"
        for i in range(2)
        for part, proj in [("self_attn", "q_proj"), ("self_attn", "o_proj"), ("mlp", "down_proj")]
    ]
    modules = dict(model.named_modules())
    full = torch.autograd.grad(
        _pair_loss(model, tokenizer, pair), [modules[n].weight for n in names]
    )
    wrapped = attach_adapter(model, LORA)
    linears = adapter_linears(wrapped)
    lora_weights = [linears[f"{n}.lora_{k}.default"][1].weight for n in names for k in "AB"]
    grads = torch.autograd.grad(_pair_loss(wrapped, tokenizer, pair), lora_weights)
    scaling = LORA.alpha / LORA.r
    for index, (name, grad_w) in enumerate(zip(names, full, strict=True)):
        grad_a, grad_b = grads[2 * index], grads[2 * index + 1]
        a = lora_weights[2 * index]
        assert not grad_a.any(), name
        assert grad_w.abs().max() > 0
        torch.testing.assert_close(grad_b, scaling * grad_w @ a.T, rtol=1e-9, atol=1e-12)


def test_tracked_matrices_are_the_adapter_linears(tiny):
    model, _ = tiny_causal_lm(seed=0)
    plain_names = list(tracked_linears(model))
    wrapped = attach_adapter(model, LORA)
    names = list(tracked_linears(wrapped))
    assert len(names) == 2 * len(plain_names)
    assert all(n.endswith((".lora_A.default.weight", ".lora_B.default.weight")) for n in names)
    assert names == list(tracked_linears(wrapped, LORA_INCLUDE))
    ema = GradientEMA(wrapped, rank=64)
    shapes = ema.shapes
    q = "base_model.model.model.layers.0.self_attn.q_proj"
    assert shapes[f"{q}.lora_A.default.weight"] == (4, 64)
    assert shapes[f"{q}.lora_B.default.weight"] == (64, 4)
    with pytest.raises(ValueError, match="lora_A"):  # a base-weight pattern selects nothing
        tracked_linears(wrapped, ["*.mlp.down_proj.weight"])


@pytest.mark.parametrize("fresh", [True, False], ids=["fresh-adapter", "trained-adapter"])
@pytest.mark.parametrize("method", ["materialize", "ghost"])
def test_scores_on_a_lora_model_match_per_pair_autograd(fresh, method):
    model, tokenizer = tiny_causal_lm(seed=5, dtype=torch.float64)
    pairs = make_pairs(6)
    wrapped = attach_adapter(model, LORA)
    _perturb_b(wrapped)  # so the EMA's A half is non-zero, as after a round of training
    ema = GradientEMA(wrapped, rank=3)
    fill_ema(wrapped, tokenizer, pairs, ema)
    if fresh:  # round t scores M_{t-1} with a fresh adapter: B = 0
        wrapped = attach_adapter(detach_adapter(wrapped), LORA)
    kwargs = dict(beta=0.1, alpha=0.01, max_length=48)
    scores = score_pairs(wrapped, tokenizer, pairs, ema, batch_size=4, method=method, **kwargs)
    reference = per_pair_scores(wrapped, tokenizer, pairs, ema, **kwargs)
    for score, ref in zip(scores, reference, strict=True):
        assert score.cosine == pytest.approx(ref["cosine"], rel=1e-6, abs=1e-9)
        assert score.grad_norm == pytest.approx(ref["grad_norm"], rel=1e-6)
        assert score.dot == pytest.approx(ref["dot"], rel=1e-6, abs=1e-12)
    assert len({round(s.cosine, 6) for s in scores}) == len(scores)  # not degenerate


def test_merge_gives_the_plain_model_of_the_adapter_function():
    model, tokenizer = tiny_causal_lm(seed=6)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    ids = tokenizer("Warum ist der Himmel blau?", return_tensors="pt").input_ids
    wrapped = attach_adapter(model, LORA)
    _perturb_b(wrapped)
    adapted_logits = wrapped(input_ids=ids).logits
    expected = {}
    for name, (kind, linear) in adapter_linears(wrapped).items():
        if kind == "A":
            layer = name.removesuffix(".lora_A.default")
            b = adapter_linears(wrapped)[f"{layer}.lora_B.default"][1].weight
            expected[f"{layer}.weight"] = base[f"{layer}.weight"] + 2.0 * b @ linear.weight
    merged = merge_adapter(wrapped)
    assert merged is model and not has_adapter(merged)
    state = merged.state_dict()
    assert state.keys() == base.keys()
    for key, value in state.items():
        torch.testing.assert_close(value, expected.get(key, base[key]), rtol=1e-6, atol=1e-7)
    assert any(not torch.equal(state[k], base[k]) for k in expected)
    torch.testing.assert_close(merged(input_ids=ids).logits, adapted_logits, rtol=1e-5, atol=1e-5)


def test_scoring_scope_leaves_the_base_untouched():
    model, _ = tiny_causal_lm(seed=7)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    with adapter_attached(model, LORA) as wrapped:
        assert has_adapter(wrapped)
        _perturb_b(wrapped)
    assert not has_adapter(model) and model.state_dict().keys() == base.keys()
    for key, value in model.state_dict().items():
        assert torch.equal(value, base[key]), key
    with adapter_attached(model, LoRAConfig()) as same:  # LoRA off: the model itself
        assert same is model


def test_clear_errors(monkeypatch):
    model, _ = tiny_causal_lm(seed=0)
    with pytest.raises(LoRAError, match=r"target_modules.*q_proj"):
        attach_adapter(model, LORA.model_copy(update={"target_modules": ["c_attn"]}))
    wrapped = attach_adapter(model, LORA)
    with pytest.raises(ValueError, match="already carries"):
        attach_adapter(wrapped, LORA)
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(LoRAError, match=r"congrad\[lora\]"):
        check_lora_available(LORA)
    check_lora_available(LoRAConfig())  # off: nothing to check
