"""Per-language gradient EMAs of a model's tracked matrices (docs/design.md section 4).

In: a model whose ``.grad`` holds one single-language minibatch's gradient, and that
language's code. Out: per language and tracked matrix a :class:`~congrad.core.lowrank.LowRankEMA`;
the ``L x L`` Gram matrix of the languages' (bias-corrected) EMAs over all tracked
matrices; save/load as safetensors with a JSON header.

Tracked by default: the weight of every ``nn.Linear`` inside the numbered decoder blocks
(``...layers.<i>...``: attention and MLP projections), not embeddings, ``lm_head``, norms
or biases. With LoRA (peft, :mod:`congrad.models.lora`) the base weights are frozen and the
default is the ``lora_A`` / ``lora_B`` linears of the adapter. Only ``nn.Linear`` weights are
tracked because the one-pass scorer (:mod:`congrad.core.scoring`) relies on ``y = x W^T``.

FSDP2 (``fully_shard``; accelerate's FSDP version 2) leaves each rank a row shard of every
gradient. The update gathers ONE tracked matrix at a time (``DTensor.full_tensor``), folds
it in and frees it: the EMA is exactly the unsharded one and identical on every rank, for
one matrix of transient memory and an all-gather per matrix per minibatch (about the
traffic of a DDP all-reduce). The alternative, compressing per shard (row shards of ``G x``
are local; ``G^T y`` and the QR need an ``n x r`` all-reduce and a TSQR), would send ~m/r
times less but changes the floating-point path; we chose the exact, simple one.
DeepSpeed ZeRO 2/3 keeps gradients in its own partitions (``.grad`` is empty): the trainer
passes :func:`congrad.parallel.zero.full_grad` as the reader, gathered the same way, one at a time.
"""

from __future__ import annotations

import copy
import fnmatch
import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from congrad.core.lowrank import LowRankEMA
from congrad.models.lora import LORA_INCLUDE, has_adapter
from congrad.util.atomic import write_atomic
from congrad.util.seeds import stable_seed

FORMAT = "congrad.gradient_ema/1"  # the file format's name (kept when the module moved to core/)
_DENSE_GRAM_BYTES = 256 * 2**20  # memory allowed for decompressed EMAs in gram()
_BLOCK_INDEX = re.compile(r"(^|\.)\d+(\.|$)")


def tracked_linears(model: nn.Module, include: Sequence[str] | None = None) -> dict[str, nn.Linear]:
    """The tracked ``nn.Linear`` modules of ``model``, keyed by their weight's name.

    ``include`` is a list of glob patterns matched against weight names (for example
    ``["*.self_attn.*", "*.mlp.down_proj.weight"]``); ``None`` selects every trainable
    linear inside a numbered block, and on a model with a LoRA adapter only the adapter's
    ``lora_A`` / ``lora_B`` linears. Raises ``ValueError`` when nothing is selected.
    """
    if include is None and has_adapter(model):
        include = LORA_INCLUDE
    selected: dict[str, nn.Linear] = {}
    for module_name, module in model.named_modules():
        if not isinstance(module, nn.Linear) or not module.weight.requires_grad:
            continue
        weight_name = f"{module_name}.weight"
        if include is None:
            chosen = bool(_BLOCK_INDEX.search(module_name))
        else:
            chosen = any(fnmatch.fnmatchcase(weight_name, pattern) for pattern in include)
        if chosen:
            selected[weight_name] = module
    if not selected:
        raise ValueError(
            "no trainable nn.Linear weight matches the tracked set "
            f"(include={list(include) if include is not None else 'decoder blocks'}); "
            "check the patterns against model.named_parameters()"
            + (
                "; with LoRA, match the adapter's weights: " + ", ".join(LORA_INCLUDE)
                if has_adapter(model)
                else ""
            )
        )
    return selected


def _whole(grad: torch.Tensor | None) -> torch.Tensor | None:
    """The whole gradient matrix: an FSDP2 shard (a ``DTensor``) is gathered from all ranks,
    one matrix at a time, so the EMA update is the unsharded one (module docstring)."""
    full_tensor = getattr(grad, "full_tensor", None)
    return full_tensor() if full_tensor is not None else grad


class GradientEMA:
    """Per-language low-rank EMAs of the gradients of a model's tracked matrices."""

    def __init__(
        self,
        model: nn.Module,
        *,
        rank: int = 64,
        iters: int = 3,
        gamma: float = 0.9,
        include: Sequence[str] | None = None,
        seed: int = 0,
        device: torch.device | str | None = None,
    ) -> None:
        self.rank, self.iters, self.gamma, self.seed = rank, iters, gamma, seed
        self.include = list(include) if include is not None else None
        self._modules = tracked_linears(model, include)
        self.shapes = {name: tuple(m.weight.shape) for name, m in self._modules.items()}
        self._device = device
        self._emas: dict[str, dict[str, LowRankEMA]] = {}
        LowRankEMA((1, 1), rank=rank, iters=iters, gamma=gamma)  # validate hyperparameters

    @property
    def tracked_names(self) -> list[str]:
        return list(self.shapes)

    @property
    def languages(self) -> list[str]:
        """Languages seen so far, sorted (the row order of :meth:`gram`)."""
        return sorted(self._emas)

    def counts(self) -> dict[str, int]:
        """Number of updates per language."""
        return {lang: next(iter(emas.values())).count for lang, emas in sorted(self._emas.items())}

    def matrices(self, lang: str) -> dict[str, LowRankEMA]:
        """The EMAs of one language, keyed by tracked weight name."""
        if lang not in self._emas:
            raise KeyError(f"no EMA for language {lang!r}; seen: {self.languages}")
        return self._emas[lang]

    def subset(self, languages: Sequence[str]) -> GradientEMA:
        """A view holding only ``languages`` (their factors shared, not copied): scoring
        against it uses a consensus of those languages alone (an ablation of the
        cross-lingual consensus, e.g. one language's own EMA)."""
        missing = [lang for lang in languages if lang not in self._emas]
        if missing or not languages:
            raise KeyError(
                f"no EMA for languages {missing or '(none given)'}; seen: {self.languages}"
            )
        view = copy.copy(self)
        view._emas = {lang: self._emas[lang] for lang in languages}
        return view

    def _new_language(self, lang: str) -> dict[str, LowRankEMA]:
        return {
            name: LowRankEMA(
                shape,  # type: ignore[arg-type]
                rank=self.rank,
                iters=self.iters,
                gamma=self.gamma,
                seed=stable_seed(self.seed, lang, name),
                device=self._device
                if self._device is not None
                else self._modules[name].weight.device,
            )
            for name, shape in self.shapes.items()
        }

    @torch.no_grad()
    def update(
        self, lang: str, read: Callable[[torch.Tensor], torch.Tensor | None] | None = None
    ) -> None:
        """Fold the tracked parameters' current gradients into language ``lang``'s EMA.

        ``read``: a tracked weight's whole gradient, by default its ``.grad`` (an FSDP2 shard
        gathered); DeepSpeed's partitioned gradients are read by
        :func:`congrad.parallel.zero.full_grad`.
        Each matrix is read, folded in and dropped before the next is read, so a gathered
        gradient costs one matrix of transient memory. A tracked weight without a gradient
        counts as a zero gradient; all of them without one is an error (``backward`` was not
        called; with ``read`` this is only known at the end, and the round is lost anyway).
        """
        if not lang or "|" in lang:
            raise ValueError(f"language code must be non-empty without '|', got {lang!r}")
        weights = {name: module.weight for name, module in self._modules.items()}
        if read is None and all(weight.grad is None for weight in weights.values()):
            raise RuntimeError(
                "GradientEMA.update: no tracked parameter has a .grad; call backward first"
            )
        emas = self._emas.get(lang) or self._new_language(lang)
        seen = False
        for name, ema in emas.items():  # in the same order on every rank (collectives)
            grad = _whole(weights[name].grad) if read is None else read(weights[name])
            seen = seen or grad is not None
            ema.update(grad if grad is not None else torch.zeros(self.shapes[name]))
            del grad
        if not seen:
            raise RuntimeError("GradientEMA.update: no tracked parameter has a gradient")
        self._emas[lang] = emas

    def gram(self) -> torch.Tensor:
        """``(L, L)`` float64 Gram matrix of the bias-corrected language EMAs.

        Per tracked matrix, whichever is cheaper: all ``L^2`` factored inner products as
        two GEMMs (``L^2 r^2 (m + n)``), or decompressing the ``L`` EMAs and multiplying
        them flat (``L m n r + L^2 m n``, when that fits in ``_DENSE_GRAM_BYTES``).
        """
        langs = self.languages
        count = len(langs)
        gram = torch.zeros(count, count, dtype=torch.float64)
        for name, (rows, cols) in self.shapes.items():
            factors = [self._emas[lang][name].corrected_factors() for lang in langs]
            rank = factors[0][0].shape[1]
            factored = count * count * rank * rank * (rows + cols)
            dense = count * rows * cols * rank + count * count * rows * cols
            if dense < factored and 8 * count * rows * cols <= _DENSE_GRAM_BYTES:
                flat = torch.stack([(p @ q.T).flatten() for p, q in factors]).double()
                gram += (flat @ flat.T).cpu()
            else:
                lefts = torch.cat([p for p, _ in factors], dim=1)  # (m, L r)
                rights = torch.cat([q for _, q in factors], dim=1)  # (n, L r)
                blocks = (lefts.T @ lefts) * (rights.T @ rights)  # (L r, L r)
                gram += blocks.reshape(count, rank, count, rank).sum(dim=(1, 3)).double().cpu()
        return gram

    @property
    def nbytes(self) -> int:
        return sum(ema.nbytes for emas in self._emas.values() for ema in emas.values())

    def header(self) -> dict[str, object]:
        return {
            "format": FORMAT,
            "rank": self.rank,
            "iters": self.iters,
            "gamma": self.gamma,
            "seed": self.seed,
            "include": self.include,
            "tracked": {name: list(shape) for name, shape in self.shapes.items()},
            "counts": self.counts(),
        }

    def save(self, path: str | Path) -> None:
        """Write factors and header to one safetensors file, atomically."""
        tensors = {
            f"{lang}|{name}|{key}": value.detach().cpu().contiguous()
            for lang, emas in self._emas.items()
            for name, ema in emas.items()
            for key, value in ema.state().items()
        }
        metadata = {"congrad": json.dumps(self.header(), sort_keys=True)}
        write_atomic(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))

    @classmethod
    def load(cls, path: str | Path, model: nn.Module) -> GradientEMA:
        """Load a saved EMA for ``model``; refuses a model whose tracked shapes differ."""
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            raw = (handle.metadata() or {}).get("congrad")
        if raw is None:
            raise ValueError(f"{path}: not a congrad GradientEMA file (no 'congrad' header)")
        header = json.loads(raw)
        if header.get("format") != FORMAT:
            raise ValueError(f"{path}: unsupported format {header.get('format')!r}")
        ema = cls(
            model,
            rank=header["rank"],
            iters=header["iters"],
            gamma=header["gamma"],
            include=header["include"],
            seed=header["seed"],
        )
        saved = {name: tuple(shape) for name, shape in header["tracked"].items()}
        if saved != ema.shapes:
            differing = sorted(set(saved.items()) ^ set(ema.shapes.items()))[:5]
            raise ValueError(
                f"{path}: tracked matrices differ from this model's (first differences: "
                f"{differing}); load it with the model it was computed on"
            )
        tensors = load_file(str(path))
        for lang, count in header["counts"].items():
            emas = ema._new_language(lang)
            for name, matrix in emas.items():
                matrix.load_state(
                    {key: tensors[f"{lang}|{name}|{key}"] for key in ("P", "Q")}, count
                )
            ema._emas[lang] = emas
        return ema
