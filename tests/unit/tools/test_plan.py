"""`congrad plan`: the paper's 3.3 GB figure, hand-worked bytes, the real EMA's bytes, the CLI."""

from __future__ import annotations

import json

import pytest
import torch

from congrad import GradientEMA
from congrad.cli import main
from congrad.models.tiny import tiny_causal_lm
from congrad.tools.memory_plan import PlanError, memory_plan, read_model_config

# Key names and values as in the models' config.json files on the hub (subsets).
GEMMA2_2B = {
    "architectures": ["Gemma2ForCausalLM"],
    "model_type": "gemma2",
    "hidden_size": 2304,
    "intermediate_size": 9216,
    "num_hidden_layers": 26,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "head_dim": 256,
    "vocab_size": 256000,
    "hidden_activation": "gelu_pytorch_tanh",
    "query_pre_attn_scalar": 256,
    "sliding_window": 4096,
}
LLAMA3_8B = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "vocab_size": 128256,
    "rope_theta": 500000.0,
    "tie_word_embeddings": False,
}
TINY = {
    "hidden_size": 4,
    "intermediate_size": 8,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "vocab_size": 16,
}
PAPER = {"languages": 10, "batch_size": 16, "max_length": 1024, "dtype_bytes": 2}


def test_paper_figures():
    gemma = memory_plan(GEMMA2_2B, rank=64, **PAPER)
    llama = memory_plan(LLAMA3_8B, rank=64, **PAPER)
    assert gemma.ema_bytes == pytest.approx(3.3e9, rel=0.02)  # the paper's 3.3 GB
    assert llama.ema_bytes == pytest.approx(6.7e9, rel=0.02)
    # By hand: per layer sum(m + n) = 4352*2 + 3328*2 + 11520*3 = 49,920; x 26 x 4 x 64.
    assert gemma.ema_bytes_per_language == 49_920 * 26 * 4 * 64
    assert llama.ema_bytes_per_language == 81_920 * 32 * 4 * 64
    # Published parameter counts: 2,614,341,888 (Gemma-2 has 4 norms a layer, we count 2)
    # and 8,030,261,248.
    assert gemma.parameters == pytest.approx(2_614_341_888, rel=1e-4) and gemma.tied_embeddings
    assert llama.parameters == 8_030_261_248 and not llama.tied_embeddings


def test_tiny_example_by_hand():
    # weights (out, in): q (4, 4), k (2, 4), v (2, 4), o (4, 4), gate/up (8, 4), down (4, 8)
    plan = memory_plan(TINY, rank=2, languages=3, batch_size=1, max_length=8, dtype_bytes=2)
    q = o = 4 * 2 * (4 + 4)  # 64 bytes: P (4 x 2) and Q (4 x 2) in fp32
    k = v = 4 * 2 * (2 + 4)  # 48
    gate = up = down = 4 * 2 * (8 + 4)  # 96
    assert plan.ema_bytes_per_language == q + k + v + o + gate + up + down == 512
    assert plan.ema_bytes == 3 * 512
    assert plan.dense_ema_bytes_per_language == 4 * (16 + 8 + 8 + 16 + 32 * 3) == 576
    # 16 x 4 embeddings, untied lm_head, 144 linear weights and 2 norms of 4, final norm 4
    assert plan.parameters == 64 + 64 + 144 + 8 + 4 == 284
    assert (plan.weights_bytes, plan.optimizer_bytes, plan.master_bytes) == (568, 2272, 1136)
    tokens = 2 * 1 * 8
    assert plan.activations_bytes == tokens * 34 * 4  # 2-byte activations: 34 h per token
    assert plan.attention_scores_bytes == tokens * 5 * 2 * 8
    assert plan.logits_bytes == tokens * 16 * 4


def test_rank_is_capped_at_min_m_n():
    full = memory_plan(TINY, rank=10_000, languages=1, batch_size=1, max_length=8, dtype_bytes=4)
    # min(m, n) (m + n) per matrix: 4*8, 2*6, 2*6, 4*8, 4*12 three times.
    assert full.ema_bytes_per_language == 4 * (32 + 12 + 12 + 32 + 48 * 3) == 928
    at_four = memory_plan(TINY, rank=4, languages=1, batch_size=1, max_length=8, dtype_bytes=4)
    assert full.ema_bytes_per_language == at_four.ema_bytes_per_language  # 4 = largest min(m, n)
    assert full.ema_ratio < 1  # at full rank the factors outweigh the dense matrix
    assert full.master_bytes == 0  # fp32 weights are their own master copy


def test_plan_matches_the_real_gradient_ema():
    model, _ = tiny_causal_lm(seed=0)
    rank = 40  # below min(m, n) for q, o and the MLP; capped at 32 for k and v (32 x 64)
    ema = GradientEMA(model, rank=rank)
    ids = torch.arange(1, 17).unsqueeze(0)
    model(input_ids=ids, labels=ids).loss.backward()
    ema.update("en")
    model.zero_grad()
    actual = sum(m.P.nbytes + m.Q.nbytes for m in ema.matrices("en").values())
    plan = memory_plan(
        model.config.to_dict(), rank=rank, languages=1, batch_size=1, max_length=8, dtype_bytes=4
    )
    assert actual == plan.ema_bytes_per_language
    assert len(ema.tracked_names) == len(plan.tracked) * plan.layers
    assert plan.parameters == sum(p.numel() for p in model.parameters())  # Llama: exact


def test_missing_key_and_bad_values():
    with pytest.raises(PlanError, match="intermediate_size"):
        memory_plan({**TINY, "intermediate_size": None}, **_small())
    with pytest.raises(PlanError, match="vocab_size must be a positive integer"):
        memory_plan({**TINY, "vocab_size": "16"}, **_small())
    with pytest.raises(PlanError, match="mixture-of-experts"):
        memory_plan({**TINY, "num_local_experts": 8}, **_small())
    with pytest.raises(PlanError, match="rank 0"):
        memory_plan(TINY, **{**_small(), "rank": 0})
    # A multimodal config keeps the decoder under text_config.
    nested = memory_plan({"model_type": "gemma3", "text_config": TINY}, **_small())
    assert nested.ema_bytes_per_language == 512


def _small() -> dict[str, int]:
    return {"rank": 2, "languages": 1, "batch_size": 1, "max_length": 8, "dtype_bytes": 2}


def _model_folder(tmp_path, config):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_cli_plan_from_a_folder(tmp_path, capsys):
    folder = _model_folder(tmp_path, GEMMA2_2B)
    assert main(["plan", "--model", str(folder), "--rank", "64", "--languages", "10"]) == 0
    out = capsys.readouterr().out
    assert "gradient EMA total: 3.32 GB (3.09 GiB, 3,322,675,200 bytes)" in out
    assert "2.61 B parameters" in out
    # A config.json file works as well as its folder.
    assert main(["plan", "--model", str(folder / "config.json"), "--rank", "8"]) == 0


def test_cli_plan_from_a_run_config(tmp_path, capsys):
    folder = _model_folder(tmp_path, LLAMA3_8B)
    config = tmp_path / "run.yaml"
    config.write_text(
        f"model: {{name_or_path: '{folder}', dtype: float32}}\n"
        "prompts: {languages: [en, de, zh]}\n"
        "ema: {rank: 32}\n"
        "train: {batch_size: 2, max_length: 256, mixed_precision: bf16}\n"
    )
    assert main(["plan", "--config", str(config), "ema.rank=64"]) == 0
    out = capsys.readouterr().out
    expected = 3 * 81_920 * 32 * 4 * 64
    assert f"{expected:,} bytes) for 3 languages at rank 64" in out
    assert "weights (fp32)" in out and "16-bit weights are planned" not in out


def test_cli_plan_errors(tmp_path, capsys):
    broken = _model_folder(tmp_path, {k: v for k, v in TINY.items() if k != "hidden_size"})
    assert main(["plan", "--model", str(broken)]) == 2
    assert "'hidden_size'" in capsys.readouterr().err
    assert main(["plan", "--model", str(tmp_path / "missing")]) == 2
    assert "not an existing folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["plan", "--model", str(tmp_path / "empty")]) == 2
    assert "has no config.json" in capsys.readouterr().err
    assert main(["plan"]) == 2
    assert "--model" in capsys.readouterr().err


def test_hub_failures_are_user_errors(monkeypatch):
    import huggingface_hub

    def offline(repo_id, filename, **kwargs):
        raise huggingface_hub.errors.LocalEntryNotFoundError("cannot reach the hub")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    with pytest.raises(PlanError, match=r"google/gemma-2-2b-it.*gated"):
        read_model_config("google/gemma-2-2b-it")


def test_smollm2_needs_fetch_model(tmp_path, monkeypatch):
    monkeypatch.setenv("CONGRAD_CACHE", str(tmp_path))
    with pytest.raises(PlanError, match="congrad fetch-model"):
        read_model_config("smollm2")
    cached = tmp_path / "models" / "SmolLM2-135M-Instruct"
    cached.mkdir(parents=True)
    (cached / "config.json").write_text(json.dumps(TINY))
    assert read_model_config("smollm2") == (TINY, str(cached / "config.json"))


def test_per_gpu_shares_by_hand():
    from congrad.tools.cluster_plan import per_gpu_bytes

    plan = memory_plan(TINY, rank=2, languages=3, batch_size=4, max_length=8, dtype_bytes=2)
    weights, grads, adam, masters, ema = 568, 568, 2272, 1136, 3 * 512  # test above, x 1
    assert (plan.weights_bytes, plan.gradient_bytes, plan.ema_bytes) == (weights, grads, ema)
    tokens = 2 * 4 * 8
    batch = 17 * tokens * 4 * 2 + tokens * 5 * 2 * 8 + tokens * 16 * 4  # 17,920 for 4 pairs
    half = batch // 2  # 2 GPUs: 2 of the 4 pairs each
    gathered = 4 * 8 * 4  # the largest tracked gradient, gate (8, 4), in fp32
    layer = 2 * 144  # one decoder layer's linear weights, 16-bit
    rows = dict((engine, size) for engine, size, _ in per_gpu_bytes(plan, 2))
    assert rows == {
        "DDP": weights + grads + adam + masters + grads + half + ema,
        "DeepSpeed ZeRO-2": weights + (grads + adam + masters) // 2 + gathered + half + ema,
        "FSDP2 / ZeRO-3": (weights + grads + adam + masters) // 2 + layer + gathered + half + ema,
    }
    assert rows["DDP"] == 15_608 and rows["FSDP2 / ZeRO-3"] == 13_184
    # one GPU, DDP: the one-device plan plus DDP's gradient buckets
    assert per_gpu_bytes(plan, 1)[0][1] == plan.training_bytes + grads
    # 3 GPUs: ceil(4 / 3) = 2 pairs per rank, states rounded up
    three = dict((engine, size) for engine, size, _ in per_gpu_bytes(plan, 3))
    assert three["FSDP2 / ZeRO-3"] == -(-4544 // 3) + layer + gathered + half + ema
    lora = memory_plan(
        TINY, rank=2, languages=3, batch_size=4, max_length=8, dtype_bytes=2, lora_r=1
    )
    assert [engine for engine, _, _ in per_gpu_bytes(lora, 2)] == ["DDP"]  # LoRA: DDP only
    with pytest.raises(PlanError, match="--gpus must be >= 1"):
        per_gpu_bytes(plan, 0)


def test_cli_plan_per_gpu(tmp_path, capsys):
    folder = _model_folder(tmp_path, LLAMA3_8B)
    assert main(["plan", "--model", str(folder), "--gpus", "8"]) == 0
    out = capsys.readouterr().out
    assert "per GPU, training on 8 GPUs (2 of 16 pairs per rank)" in out
    assert "DeepSpeed ZeRO-2" in out and "FSDP2 / ZeRO-3" in out
