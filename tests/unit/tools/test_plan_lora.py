"""`congrad plan` with LoRA and gradient checkpointing: hand-worked bytes, the real EMA, CLI."""

from __future__ import annotations

import pytest
import torch

from congrad import GradientEMA
from congrad.cli import main
from congrad.config.run import LoRAConfig
from congrad.models.tiny import tiny_causal_lm
from congrad.tools.memory_plan import PlanError, memory_plan
from tests.unit.tools.test_plan import LLAMA3_8B, TINY, _model_folder

SMALL = {"languages": 3, "batch_size": 1, "max_length": 8, "dtype_bytes": 2}


def test_tiny_lora_plan_by_hand():
    # weights (out, in): q (4, 4), k (2, 4), v (2, 4), o (4, 4), gate/up (8, 4), down (4, 8);
    # sum (m + n) over them = 8 + 6 + 6 + 8 + 12 + 12 + 12 = 64.
    plan = memory_plan(TINY, rank=3, lora_r=2, **SMALL)
    assert plan.adapter_parameters == 2 * 64 == 128  # A (2, n) and B (m, 2) per projection
    # EMA rank min(3, 2) = 2: A's factors 4*2*(2 + n), B's 4*2*(m + 2); 7 projections.
    assert plan.ema_bytes_per_language == 8 * (64 + 4 * 7) == 736
    assert plan.ema_bytes == 3 * 736
    assert plan.dense_ema_bytes_per_language == 4 * 128 == 512
    assert plan.parameters == 284  # the base model, as without LoRA
    assert plan.weights_bytes == 284 * 2 + 128 * 4  # 16-bit base + fp32 adapter
    assert (plan.gradient_bytes, plan.optimizer_bytes, plan.master_bytes) == (512, 1024, 0)
    tokens = 2 * 1 * 8
    assert plan.activations_bytes == tokens * 34 * 4  # unchanged by LoRA
    subset = memory_plan(TINY, rank=64, lora_r=2, lora_targets=["q_proj", "v_proj"], **SMALL)
    assert subset.adapter_parameters == 2 * (8 + 6)
    assert subset.ema_bytes_per_language == 8 * ((4 + 4 + 4) + (2 + 4 + 4)) == 176
    with pytest.raises(PlanError, match="c_attn"):
        memory_plan(TINY, rank=2, lora_r=2, lora_targets=["c_attn"], **SMALL)
    with pytest.raises(PlanError, match="LoRA rank 0"):
        memory_plan(TINY, rank=2, lora_r=0, **SMALL)


def test_checkpointed_activations_by_hand():
    two_layers = {**TINY, "num_hidden_layers": 4}
    plain = memory_plan(two_layers, rank=2, **SMALL)
    recomputed = memory_plan(two_layers, rank=2, gradient_checkpointing=True, **SMALL)
    tokens = 2 * 1 * 8
    assert plain.activations_bytes == 4 * tokens * 17 * 4 * 2
    assert recomputed.activations_bytes == (4 + 17) * tokens * 4 * 2  # inputs + one layer
    assert recomputed.attention_scores_bytes == plain.attention_scores_bytes // 4


def test_lora_plan_matches_the_real_lora_ema():
    pytest.importorskip("peft")
    from congrad.models.lora import attach_adapter

    model, _ = tiny_causal_lm(seed=0)
    lora = LoRAConfig(enabled=True, r=8, target_modules=["q_proj", "k_proj", "down_proj"])
    plain_parameters = sum(p.numel() for p in model.parameters())
    model = attach_adapter(model, lora)
    rank = 6  # below the LoRA rank: the factors are truncated
    ema = GradientEMA(model, rank=rank)
    for linear in (m for n, m in model.named_modules() if n.endswith("lora_B.default")):
        torch.nn.init.normal_(linear.weight, std=0.1)  # so A gets a gradient too
    ids = torch.arange(1, 17).unsqueeze(0)
    model(input_ids=ids, labels=ids).loss.backward()
    ema.update("en")
    actual = sum(m.P.nbytes + m.Q.nbytes for m in ema.matrices("en").values())
    plan = memory_plan(
        model.config.to_dict(),
        rank=rank,
        lora_r=8,
        lora_targets=lora.target_modules,
        languages=1,
        batch_size=1,
        max_length=8,
        dtype_bytes=4,
    )
    assert actual == plan.ema_bytes_per_language
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == plan.adapter_parameters
    assert plan.parameters == plain_parameters


def test_cli_plan_with_lora(tmp_path, capsys):
    folder = _model_folder(tmp_path, LLAMA3_8B)
    assert main(["plan", "--model", str(folder), "--lora-r", "16"]) == 0
    out = capsys.readouterr().out
    # By hand: 32 layers x 4 x 16 x (sum (m + n) = 81,920 + 2 x 16 x 7) x 10 languages.
    expected = 32 * 4 * 16 * (81_920 + 224) * 10
    assert f"LoRA r=16 A/B matrices: 1.68 GB (1.57 GiB, {expected:,} bytes)" in out
    assert "at rank 16" in out and "41.9 M" in out
    config = tmp_path / "run.yaml"
    config.write_text(
        f"model: {{name_or_path: '{folder}', lora: {{enabled: true, r: 8}}}}\n"
        "prompts: {languages: [en, de]}\n"
        "train: {gradient_checkpointing: true}\n"
    )
    assert main(["plan", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert f"{32 * 4 * 8 * (81_920 + 112) * 2:,} bytes) for 2 languages at rank 8" in out
    assert "checkpointed" in out and "recomputed per layer" in out
