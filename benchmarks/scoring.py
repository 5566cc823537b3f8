"""Benchmark: one-pass CONGRAD scoring vs a plain LP-DPO step vs per-pair backward.

Measures, for one batch of pairs, in the same run on the same machine:
  plain      one forward+backward of the batch's LP-DPO loss with weight gradients
             (what a training step costs; the reference point),
  score      congrad.score_pairs (one forward + one input-gradient backward, per-layer
             statistics picked automatically),
  per-pair   one backward per pair materialising the pair's full gradient over the
             tracked matrices, then its dot and norm (how the paper and LESS score),
and prints times, ratios to `plain`, peak memory above the loaded model, and the largest
cosine difference between `score` and `per-pair`. Each phase runs in its own process so
peak memory is not hidden by an earlier phase.

    python benchmarks/scoring.py --model tiny
    python benchmarks/scoring.py --model smollm2 --languages 10 --rank 64 --batch 16
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    LANGS,
    PeakMemory,
    best_time,
    dpo_backward,
    filled_ema,
    load_model,
    make_pairs,
)

from congrad import GradientEMA, score_pairs, tracked_linears  # noqa: E402
from congrad.consensus import Consensus  # noqa: E402
from congrad.reference import per_pair_gradient  # noqa: E402


def run_phase(args: argparse.Namespace) -> dict[str, object]:
    torch.manual_seed(0)
    model, tokenizer = load_model(args.model)
    model.eval()
    device = next(model.parameters()).device
    ema = GradientEMA.load(args.ema, model)
    pairs = make_pairs(args.batch, LANGS[: args.languages], seed=7)
    kw = dict(beta=0.1, alpha=0.01, max_length=args.max_length)

    if args.phase == "plain":
        def work() -> object:
            model.zero_grad(set_to_none=True)
            dpo_backward(model, tokenizer, pairs, args.max_length)
            return None
    elif args.phase.startswith("score"):
        method = args.phase.split(":")[1] if ":" in args.phase else "auto"

        def work() -> object:
            return score_pairs(model, tokenizer, pairs, ema, batch_size=args.batch,
                               method=method, **kw)
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

    with PeakMemory(device) as memory:
        result = work()
    seconds = best_time(work, args.repeats)
    out: dict[str, object] = {"seconds": seconds, "peak_bytes": memory.peak_bytes}
    if args.phase.startswith("score"):
        out["cosines"] = [s.cosine for s in result]  # type: ignore[union-attr]
    if args.phase == "per-pair":
        out["cosines"] = result
    return out


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
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.phase:
        print(json.dumps(run_phase(args)))
        return

    with tempfile.TemporaryDirectory() as folder:
        model, tokenizer = load_model(args.model)
        ema = filled_ema(model, tokenizer, LANGS[: args.languages], args.rank)
        ema_path = Path(folder) / "ema.safetensors"
        ema.save(ema_path)
        tracked = sum(m * n for m, n in ema.shapes.values())
        print(f"model {args.model}: {sum(p.numel() for p in model.parameters()):,} parameters, "
              f"{len(ema.shapes)} tracked matrices ({tracked:,} weights); "
              f"{args.languages} languages, rank {args.rank}, batch {args.batch} pairs, "
              f"torch {torch.__version__}, {torch.get_num_threads()} threads")
        del model
        results = {}
        for phase in args.phases.split(","):
            command = [sys.executable, __file__, "--phase", phase, "--ema", str(ema_path)]
            for key in ("model", "languages", "rank", "batch", "max_length", "repeats", "threads"):
                command += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                sys.exit(f"phase {phase} failed:\n{done.stderr}")
            results[phase] = json.loads(done.stdout.strip().splitlines()[-1])

    base = results.get("plain", {}).get("seconds")
    reference = results.get("per-pair", {}).get("cosines")
    print(f"\n{'phase':<18}{'seconds':>10}{'x plain':>10}{'peak MiB':>10}{'max |dcos|':>12}")
    for phase, result in results.items():
        ratio = f"{result['seconds'] / base:.2f}" if base else "-"
        error = "-"
        if reference is not None and "cosines" in result and phase != "per-pair":
            error = f"{max(abs(a - b) for a, b in zip(result['cosines'], reference)):.1e}"
        print(f"{phase:<18}{result['seconds']:>10.3f}{ratio:>10}"
              f"{result['peak_bytes'] / 2**20:>10.0f}{error:>12}")


if __name__ == "__main__":
    main()
