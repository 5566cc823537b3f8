"""A train_round / score_pairs job for the multi-process invariance tests.

Run alone (one process) or under ``torchrun --nproc_per_node N`` with the same arguments:
``python tests/distributed/distributed_worker.py OUT BATCH ACCUMULATION [fsdp] [lora]
[checkpointing]``
(``fsdp``: the model is sharded with FSDP2's ``fully_shard`` before training, and no scores
are computed; ``lora``: a LoRA adapter is attached first, so DDP reduces only its gradients;
``checkpointing``: ``train.gradient_checkpointing``). Under DeepSpeed (the launcher's
environment) the trained weights come from ``TrainResult.weights`` and no scores are
computed. The main process writes ``OUT/result.json`` (per-minibatch log, scores) and
``OUT/weights.safetensors`` and ``OUT/ema.safetensors`` (the trained weights and the
round's GradientEMA); every rank writes ``OUT/ema.<rank>.safetensors`` so the test can
check the ranks agree.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/conftest's make_pairs

from conftest import make_pairs

from congrad.config.run import EMAConfig, TrainConfig
from congrad.core.scoring import score_pairs
from congrad.models.tiny import tiny_causal_lm
from congrad.parallel import distributed
from congrad.rounds.train import train_round


def main(
    out: Path, batch_size: int, accumulation: int, fsdp: bool, lora: bool, checkpointing: bool
) -> None:
    torch.manual_seed(0)
    model, tokenizer = tiny_causal_lm(seed=0)
    if lora:  # a fresh, fixed-seed adapter: the EMA and the scores track its A and B
        from congrad.config.run import LoRAConfig
        from congrad.models.lora import attach_adapter

        model = attach_adapter(model, LoRAConfig(enabled=True, r=4, alpha=8, dropout=0.0))
    if fsdp:  # FSDP2 by hand, as accelerate's fsdp_version 2 does: each block, then the root
        from torch.distributed.fsdp import fully_shard

        distributed.world_size()  # sets up the process group
        for layer in model.model.layers:
            fully_shard(layer)
        fully_shard(model)
    pairs = make_pairs(17)  # 6 en, 6 de, 5 zh: last chunks smaller than the batch
    train = TrainConfig(
        batch_size=batch_size,
        gradient_checkpointing=checkpointing,
        gradient_accumulation_steps=accumulation,
        learning_rate=1e-3,
        warmup_ratio=0.0,
        max_length=64,
    )
    ema_config = EMAConfig(rank=4, iters=3, gamma=0.9)
    result, ema = train_round(model, tokenizer, pairs, train=train, ema=ema_config, seed=3)
    gathered = fsdp or result.weights is not None  # FSDP2, or DeepSpeed ZeRO
    if gathered:  # the loop scores with the whole model reloaded from its folder
        weights = distributed.full_state_dict(model) if fsdp else result.weights
        scores = []
    else:
        weights = {name: p.detach().contiguous() for name, p in model.named_parameters()}
        scores = score_pairs(
            model, tokenizer, pairs, ema, beta=0.1, alpha=0.01, batch_size=3, max_length=64
        )
    out.mkdir(parents=True, exist_ok=True)
    me = distributed.rank()
    ema.save(out / f"ema.{me}.safetensors")
    if distributed.is_main():
        if gathered:  # as the train stage saves M_t: the engine's model, the gathered weights
            from congrad.rounds.train import save_round_model

            save_round_model(model, tokenizer, out / "model", state_dict=weights)
        weights = {name: weights[name].contiguous() for name, _ in model.named_parameters()}
        save_file(weights, str(out / "weights.safetensors"))
        report = {
            "world_size": distributed.world_size(),
            "deepspeed": result.weights is not None,
            "log": [asdict(row) for row in result.log],
            "lang_mean_loss": result.lang_mean_loss,
            "scores": [s.to_dict() for s in scores],
        }
        (out / "result.json").write_text(json.dumps(report))
    distributed.barrier()


if __name__ == "__main__":
    options = sys.argv[4:]
    flags = ("fsdp" in options, "lora" in options, "checkpointing" in options)
    main(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), *flags)
