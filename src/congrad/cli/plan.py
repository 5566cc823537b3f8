"""``congrad plan``: a memory plan (gradient EMA, weights, optimizer, activations, and
with ``--gpus`` each GPU's share) read from a model's ``config.json`` alone; no weights
load, nor torch.

In: ``--model`` (a folder, its config.json, ``smollm2`` or a hub id) and/or a config
(``--config``, overrides); flags override either. Out: the plan table, notes and the
EMA total on stdout; exit 2 when no model is named.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from congrad.cli import common


def add_parser(subparsers: Any) -> None:
    command = subparsers.add_parser(
        "plan", help="memory plan (EMA, weights, optimizer, activations) from config.json alone"
    )
    common.add_config_arguments(command)
    command.add_argument("--model", help="model folder, its config.json, smollm2 or a hub id")
    command.add_argument("--rank", type=int, help="EMA rank (default 64)")
    command.add_argument("--languages", type=int, help="number of languages (default 10)")
    command.add_argument("--batch-size", type=int, help="pairs per minibatch (default 16)")
    command.add_argument("--max-length", type=int, help="tokens per sequence (default 1024)")
    command.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], help="weights (default bf16)")
    command.add_argument("--gpus", type=int, help="also plan each GPU's share under DDP/ZeRO/FSDP2")
    command.add_argument(
        "--lora-r", type=int, help="plan a LoRA adapter of this rank (default: from the config)"
    )
    command.add_argument(
        "--gradient-checkpointing", action="store_true", help="plan recomputed activations"
    )
    command.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from congrad.config.run import LORA_TARGETS
    from congrad.tools.memory_plan import (
        DEFAULTS,
        DTYPE_BYTES,
        GB,
        GIB,
        memory_plan,
        plan_notes,
        plan_table,
        read_model_config,
        settings_from_config,
    )

    settings: dict[str, Any] = {"model": None, **DEFAULTS}
    if args.config or args.overrides:
        settings.update(settings_from_config(common.load_config(args)))
    flags = ("model", "rank", "languages", "batch_size", "max_length", "dtype", "lora_r")
    settings.update({k: getattr(args, k) for k in flags if getattr(args, k) is not None})
    if args.gradient_checkpointing:
        settings["gradient_checkpointing"] = True
    if settings["model"] is None:
        print("congrad: plan needs --model PATH_OR_ID or --config FILE", file=sys.stderr)
        return 2
    model_config, source = read_model_config(settings["model"])
    dtype_bytes = DTYPE_BYTES[settings["dtype"]]
    plan = memory_plan(
        model_config,
        rank=settings["rank"],
        languages=settings["languages"],
        batch_size=settings["batch_size"],
        max_length=settings["max_length"],
        dtype_bytes=dtype_bytes,
        activation_bytes=settings.get("activation_bytes", dtype_bytes),
        lora_r=settings.get("lora_r"),
        lora_targets=settings.get("lora_targets", LORA_TARGETS),
        gradient_checkpointing=settings.get("gradient_checkpointing", False),
    )
    console = Console(width=max(Console().width, 120))
    console.print(plan_table(plan, source))
    if args.gpus is not None:
        from congrad.tools.cluster_plan import per_gpu_table

        console.print(per_gpu_table(plan, args.gpus))
    for note in [*settings.get("notes", []), *plan_notes(plan)]:
        print(f"note: {note}")
    ema = plan.ema_bytes
    tracked = "" if plan.lora_r is None else f" of the LoRA r={plan.lora_r} A/B matrices"
    print(
        f"gradient EMA total{tracked}: {ema / GB:.2f} GB ({ema / GIB:.2f} GiB, {ema:,} bytes) "
        f"for {plan.languages} languages at rank {min(plan.rank, plan.lora_r or plan.rank)}; "
        f"training total {plan.training_bytes / GB:.1f} GB"
    )
    return 0
