"""Benchmark: one-pass CONGRAD scoring vs a plain LP-DPO step vs per-pair backward.

Measures, for one batch of pairs, in the same run on the same machine:
  plain      one forward+backward of the batch's LP-DPO loss with weight gradients
             (what a training step costs; the reference point),
  score      congrad.score_pairs (one forward + one input-gradient backward, per-layer
             statistics picked automatically),
  per-pair   one backward per pair materialising the pair's full gradient over the
             tracked matrices, then its dot and norm (how the paper and LESS score),
and prints times (best of --repeats after a warm-up), ratios to `plain`, peak memory
above the loaded model (CUDA: peak allocated; CPU: peak resident), and the largest
cosine difference between `score` and `per-pair`. Each phase runs in its own process so
peak memory is not hidden by an earlier phase.

    python benchmarks/scoring.py --model tiny
    python benchmarks/scoring.py --model smollm2 --languages 10 --rank 64 --batch 16 \
        --max-length 128 --repeats 1 --phases plain,score,per-pair
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    LANGS,
    PeakMemory,
    best_time,
    dpo_backward,
    filled_ema,
    load_model,
    make_pairs,
)
from congrad import GradientEMA, encode_pair, score_pairs, tracked_linears
from congrad.core.consensus import Consensus
from congrad.core.reference import per_pair_gradient


def run_phase(args: argparse.Namespace) -> dict[str, object]:
    torch.manual_seed(0)
    model, tokenizer = load_model(args.model)
    model.eval()
    device = next(model.parameters()).device
    pairs = make_pairs(args.batch, LANGS[: args.languages], seed=7)
    if args.phase == "build-ema":
        ema = filled_ema(model, tokenizer, LANGS[: args.languages], args.rank)
        ema.save(args.ema)
        batch = [encode_pair(tokenizer, p, args.max_length) for p in pairs]
        return {
            "parameters": sum(p.numel() for p in model.parameters()),
            "tracked": len(ema.shapes),
            "tracked_weights": sum(m * n for m, n in ema.shapes.values()),
            "tokens": sum(len(e.chosen_input_ids) + len(e.rejected_input_ids) for e in batch),
            "threads": torch.get_num_threads(),
        }
    ema = GradientEMA.load(args.ema, model)
    kw = dict(beta=0.1, alpha=0.01, max_length=args.max_length)

    if args.phase == "plain":

        def work() -> object:
            model.zero_grad(set_to_none=True)
            dpo_backward(model, tokenizer, pairs, args.max_length)
            return None
    elif args.phase.startswith("score"):
        method = args.phase.split(":")[1] if ":" in args.phase else "auto"

        def work() -> object:
            return score_pairs(
                model, tokenizer, pairs, ema, batch_size=args.batch, method=method, **kw
            )
    elif args.phase == "per-pair":
        names = list(tracked_linears(model))
        consensus = Consensus.from_ema(ema)
        flat_c = torch.cat([consensus.dense(n).flatten() for n in names]).double()

        def work() -> object:
            cosines = []
            for pair in pairs:
                grad, _, _ = per_pair_gradient(model, tokenizer, pair, names, **kw)
                cosines.append(float(grad @ flat_c / (grad.norm() * flat_c.norm())))
            return cosines
    else:
        raise ValueError(args.phase)

    if args.measure == "memory":  # a cold run: library start-up is small beside the phase
        with PeakMemory(device) as memory:
            result = work()
        out: dict[str, object] = {"peak_bytes": memory.peak_bytes}
        if args.phase.startswith("score"):
            out["cosines"] = [s.cosine for s in result]  # type: ignore[union-attr]
        if args.phase == "per-pair":
            out["cosines"] = result
        return out
    work()  # warm-up
    return {"seconds": best_time(work, args.repeats)}


def _child(command: list[str], env: dict[str, str]) -> dict[str, object]:
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        sys.exit(f"{' '.join(command[2:5])} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="tiny", help="tiny, smollm2 or a local path")
    parser.add_argument("--languages", type=int, default=10)
    parser.add_argument("--rank", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--phases", default="plain,score,score:materialize,score:ghost,per-pair")
    parser.add_argument("--phase", help=argparse.SUPPRESS)
    parser.add_argument("--ema", help=argparse.SUPPRESS)
    parser.add_argument("--measure", choices=["time", "memory"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.phase:
        print(json.dumps(run_phase(args)))
        return

    with tempfile.TemporaryDirectory() as folder:
        ema_path = Path(folder) / "ema.safetensors"
        shared = []
        for key in ("model", "languages", "rank", "batch", "max_length", "repeats", "threads"):
            shared += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
        # Every model-holding step runs in a child, so the parent holds no memory.
        summary = _child(
            [sys.executable, __file__, "--phase", "build-ema", "--ema", str(ema_path), *shared],
            dict(os.environ),
        )
        print(
            f"model {args.model}: {summary['parameters']:,} parameters, "
            f"{summary['tracked']} tracked matrices ({summary['tracked_weights']:,} weights); "
            f"{args.languages} languages, rank {args.rank}, batch {args.batch} pairs of "
            f"{summary['tokens']:,} tokens, torch {torch.__version__}, "
            f"{summary['threads']} threads"
        )
        results: dict[str, dict] = {}
        for phase in args.phases.split(","):
            command = [sys.executable, __file__, "--phase", phase, "--ema", str(ema_path), *shared]
            results[phase] = _child([*command, "--measure", "time"], dict(os.environ))
            # Memory in a second process: a fixed mmap threshold makes glibc return freed
            # tensors to the OS at once, so resident memory follows live memory (it also
            # slows allocation, which is why timing runs without it).
            env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
            results[phase] |= _child([*command, "--measure", "memory"], env)

    base = results.get("plain", {}).get("seconds")
    reference = results.get("per-pair", {}).get("cosines")
    print(f"\n{'phase':<18}{'seconds':>10}{'x plain':>10}{'peak MiB':>10}{'max |dcos|':>12}")
    for phase, result in results.items():
        ratio = f"{result['seconds'] / base:.2f}" if base else "-"
        error = "-"
        if reference is not None and "cosines" in result and phase != "per-pair":
            error = (
                f"{max(abs(a - b) for a, b in zip(result['cosines'], reference, strict=False)):.1e}"
            )
        print(
            f"{phase:<18}{result['seconds']:>10.3f}{ratio:>10}"
            f"{result['peak_bytes'] / 2**20:>10.0f}{error:>12}"
        )


if __name__ == "__main__":
    main()
