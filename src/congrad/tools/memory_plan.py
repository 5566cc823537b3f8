"""Memory plan of a CONGRAD run from a model's ``config.json`` alone (``congrad plan``).

In: a Llama/Mistral/Qwen2/Gemma/Gemma-2-style ``config.json`` as a dict, the EMA rank, the
number of languages, the LP-DPO minibatch (pairs) and token budget, bytes per weight and
per activation. Out: a :class:`MemoryPlan` (bytes of each part) and a rich table. No
weights are read; a hub model costs one small download, its ``config.json``.

Formulas (h hidden, I intermediate, H query heads, K key-value heads, d head dim, L layers,
V vocabulary, r rank, B pairs per minibatch, T max length):

* Tracked per layer (weight shapes ``(out, in)``, as :mod:`congrad.core.gradient_ema` has them):
  q ``(H d, h)``, k and v ``(K d, h)``, o ``(h, H d)``, gate and up ``(I, h)``, down
  ``(h, I)``. EMA bytes per language ``sum 4 min(r, m, n) (m + n)`` over the L layers (fp32
  factors, rank capped as :class:`~congrad.core.lowrank.LowRankEMA` caps it), times the
  languages for the total; beside it the dense fp32 EMA, ``sum 4 m n``. Near full rank
  the factors are the larger: ``min(m, n) (m + n) > m n``.
* Parameters: embeddings ``V h``, the tracked linears, two norms per layer and a final one
  (Gemma-2 has four per layer; biases such as Qwen2's are left out), ``lm_head`` ``V h``
  unless ``tie_word_embeddings`` (missing: true for Gemma, else false, as in transformers).
* Weights and gradients at ``dtype_bytes`` per parameter, AdamW two fp32 states, and with
  16-bit weights an fp32 master copy: the usual mixed-precision recipe, 16 bytes per
  parameter, as with fp32 weights. Assumption: congrad's trainer steps the weights in the
  dtype they were loaded in, so on bf16 weights torch's AdamW keeps bf16 states and no
  master copy (half this); the paper configs load fp32 weights and autocast to bf16.
* Activations of one LP-DPO minibatch, 2B sequences of T tokens, without recomputation
  (Korthikanti et al. 2022, scaled from 2 to ``activation_bytes`` per value): per layer
  and token ``34 h`` bytes, ``5 H T`` more for the attention scores that eager attention
  stores (none with SDPA/flash), and fp32 logits ``2B T V 4``. An estimate: T is the worst
  case (batches pad to their longest pair); ``34 h`` assumes a 4h GELU MLP, not a gated one.
  With gradient checkpointing each layer keeps only its input (``h`` values per token) and
  one layer at a time is recomputed in full: ``(L + 17) h`` values per token, and one
  layer's attention scores.
* LoRA of rank ``s`` on the projections in ``lora_targets`` (:mod:`congrad.models.lora`): the
  adapter has ``s (m + n)`` parameters per targeted ``(m, n)`` matrix, kept in fp32 (as
  peft keeps them beside 16-bit weights), with fp32 gradients and two AdamW states; the
  frozen base weights get no gradient, state or master copy. The tracked matrices are the
  adapter's ``A (s, n)`` and ``B (m, s)``, so the EMA per language is
  ``sum 4 min(r, s) (s + n) + 4 min(r, s) (m + s)`` over the targets and layers: the EMA
  rank is capped by the LoRA rank (there the factors are exact).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from congrad.config.run import LORA_TARGETS
from congrad.errors import CongradError

if TYPE_CHECKING:
    from rich.table import Table

    from congrad.config.run import RunConfig

GB, GIB = 10**9, 2**30
DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}
#: Settings of a plan made with ``--model`` alone: the paper's rank, languages and batch, on
#: bf16 weights (``configs/paper/*.yaml`` load fp32 weights and autocast to bf16: the same
#: 16 bytes of state per parameter, split differently; ``--config`` plans those exactly).
DEFAULTS = {"rank": 64, "languages": 10, "batch_size": 16, "max_length": 1024, "dtype": "bf16"}
_CONFIG_DTYPES = {"auto": "bf16", "bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}


class PlanError(CongradError, ValueError):
    """A model's config.json cannot be found or read, or lacks a size the plan needs."""


def factored_bytes(m: int, n: int, rank: int) -> int:
    """Bytes of one ``(m, n)`` matrix's fp32 factors ``P (m, r)``, ``Q (n, r)``, with the
    rank capped at ``min(m, n)`` as :class:`congrad.core.lowrank.LowRankEMA` caps it.

    >>> factored_bytes(4, 8, 2), factored_bytes(4, 8, 100)
    (96, 192)
    """
    return 4 * min(rank, m, n) * (m + n)


@dataclass(frozen=True)
class MemoryPlan:
    """Bytes of each part of a CONGRAD run (the module docstring gives the formulas)."""

    model_type: str
    layers: int
    tracked: tuple[tuple[str, int, int], ...]  # one layer's (name, out, in)
    rank: int
    languages: int
    batch_size: int
    max_length: int
    dtype_bytes: int
    activation_bytes: int
    parameters: int
    tied_embeddings: bool
    ema_bytes_per_language: int
    dense_ema_bytes_per_language: int
    weights_bytes: int
    gradient_bytes: int
    optimizer_bytes: int
    master_bytes: int
    activations_bytes: int
    attention_scores_bytes: int
    logits_bytes: int
    lora_r: int | None = None
    lora_targets: tuple[str, ...] = ()
    adapter_parameters: int = 0
    gradient_checkpointing: bool = False

    @property
    def ema_bytes(self) -> int:
        return self.ema_bytes_per_language * self.languages

    @property
    def ema_ratio(self) -> float:
        """Dense fp32 EMA bytes over factored ones (above 1: the factors are smaller)."""
        return self.dense_ema_bytes_per_language / self.ema_bytes_per_language

    @property
    def state_bytes(self) -> int:
        """Weights, gradients, optimizer states and master copy."""
        return self.weights_bytes + self.gradient_bytes + self.optimizer_bytes + self.master_bytes

    @property
    def batch_bytes(self) -> int:
        """One minibatch's activations, attention scores and logits (linear in the pairs)."""
        return self.activations_bytes + self.attention_scores_bytes + self.logits_bytes

    @property
    def training_bytes(self) -> int:
        """Weights, gradients, optimizer, master copy, one minibatch and all EMAs."""
        return self.state_bytes + self.batch_bytes + self.ema_bytes


def _size(config: dict[str, Any], key: str, default: int | None = None) -> int:
    value = default if config.get(key) is None else config[key]
    if value is None:
        raise PlanError(f"config.json has no {key!r}; the plan knows Llama/Qwen2/Gemma decoders")
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise PlanError(f"config.json: {key} must be a positive integer, got {value!r}")
    return value


def memory_plan(
    model_config: dict[str, Any],
    *,
    rank: int,
    languages: int,
    batch_size: int,
    max_length: int,
    dtype_bytes: int,
    activation_bytes: int = 2,
    lora_r: int | None = None,
    lora_targets: Sequence[str] = LORA_TARGETS,
    gradient_checkpointing: bool = False,
) -> MemoryPlan:
    """The memory plan of a model described by its ``config.json`` (pure arithmetic);
    ``lora_r`` set: training a LoRA adapter of that rank on ``lora_targets``.

    >>> tiny = {"hidden_size": 4, "intermediate_size": 8, "num_hidden_layers": 1,
    ...         "num_attention_heads": 2, "num_key_value_heads": 1, "vocab_size": 16}
    >>> plan = memory_plan(tiny, rank=2, languages=3, batch_size=1, max_length=8, dtype_bytes=2)
    >>> plan.ema_bytes_per_language, plan.ema_bytes, plan.dense_ema_bytes_per_language
    (512, 1536, 576)
    """
    counts = {"rank": rank, "languages": languages, "batch size": batch_size, "length": max_length}
    if lora_r is not None:
        counts["LoRA rank"] = lora_r
    if bad := [f"{name} {value}" for name, value in counts.items() if value < 1]:
        raise PlanError(f"must be >= 1: {', '.join(bad)}")
    if isinstance(model_config.get("text_config"), dict) and "hidden_size" not in model_config:
        model_config = model_config["text_config"]  # multimodal: plan the text decoder
    if experts := [k for k in ("num_local_experts", "num_experts") if model_config.get(k)]:
        raise PlanError(f"config.json has {experts[0]}: mixture-of-experts is not supported")
    hidden = _size(model_config, "hidden_size")
    inter = _size(model_config, "intermediate_size")
    layers = _size(model_config, "num_hidden_layers")
    heads = _size(model_config, "num_attention_heads")
    kv_heads = _size(model_config, "num_key_value_heads", heads)
    head_dim = _size(model_config, "head_dim", max(hidden // heads, 1))
    vocab = _size(model_config, "vocab_size")
    model_type = str(model_config.get("model_type") or "unknown")
    tied = model_config.get("tie_word_embeddings")
    tied = model_type.startswith("gemma") if tied is None else bool(tied)
    tracked = (
        ("q_proj", heads * head_dim, hidden),
        ("k_proj", kv_heads * head_dim, hidden),
        ("v_proj", kv_heads * head_dim, hidden),
        ("o_proj", hidden, heads * head_dim),
        ("gate_proj", inter, hidden),
        ("up_proj", inter, hidden),
        ("down_proj", hidden, inter),
    )
    per_layer = sum(m * n for _, m, n in tracked) + 2 * hidden  # linears and two norms
    parameters = vocab * hidden * (1 if tied else 2) + layers * per_layer + hidden
    tokens = 2 * batch_size * max_length  # the chosen and the rejected of every pair
    ema_matrices = [(m, n) for _, m, n in tracked]
    trained, trained_bytes, master = parameters, dtype_bytes, dtype_bytes < 4
    adapter = 0
    if lora_r is not None:
        known = {name for name, _, _ in tracked}
        if unknown := sorted(set(lora_targets) - known):
            raise PlanError(
                f"LoRA targets {unknown} are not projections the plan knows: {sorted(known)}"
            )
        targeted = [(m, n) for name, m, n in tracked if name in set(lora_targets)]
        ema_matrices = [shape for m, n in targeted for shape in ((lora_r, n), (m, lora_r))]
        adapter = layers * sum(lora_r * (m + n) for m, n in targeted)
        trained, trained_bytes, master = adapter, 4, False  # fp32 adapters, frozen base
    stored_layers = layers + 17 if gradient_checkpointing else 17 * layers  # h-sized values
    scored_layers = 1 if gradient_checkpointing else layers
    return MemoryPlan(
        model_type=model_type,
        layers=layers,
        tracked=tracked,
        rank=rank,
        languages=languages,
        batch_size=batch_size,
        max_length=max_length,
        dtype_bytes=dtype_bytes,
        activation_bytes=activation_bytes,
        parameters=parameters,
        tied_embeddings=tied,
        ema_bytes_per_language=layers * sum(factored_bytes(m, n, rank) for m, n in ema_matrices),
        dense_ema_bytes_per_language=layers * sum(4 * m * n for m, n in ema_matrices),
        weights_bytes=parameters * dtype_bytes + adapter * 4,
        gradient_bytes=trained * trained_bytes,
        optimizer_bytes=trained * 8,
        master_bytes=trained * 4 if master else 0,
        activations_bytes=stored_layers * tokens * hidden * activation_bytes,
        attention_scores_bytes=scored_layers
        * tokens
        * 5
        * heads
        * max_length
        * activation_bytes
        // 2,
        logits_bytes=tokens * vocab * 4,
        lora_r=lora_r,
        lora_targets=tuple(lora_targets) if lora_r is not None else (),
        adapter_parameters=adapter,
        gradient_checkpointing=gradient_checkpointing,
    )


def settings_from_config(config: RunConfig) -> dict[str, Any]:
    """The plan's settings from a validated run config; ``model.dtype=auto`` is bf16."""
    dtype = _CONFIG_DTYPES[config.model.dtype]
    auto = "model.dtype=auto is planned as bf16 (what it picks on a GPU with bf16)"
    return {
        "model": config.model.name_or_path,
        "rank": config.ema.rank,
        "languages": len(config.prompts.languages),
        "batch_size": config.train.batch_size,
        "max_length": config.train.max_length,
        "dtype": dtype,
        "activation_bytes": 2 if config.train.mixed_precision != "no" else DTYPE_BYTES[dtype],
        "lora_r": config.model.lora.r if config.model.lora.enabled else None,
        "lora_targets": list(config.model.lora.target_modules),
        "gradient_checkpointing": config.train.gradient_checkpointing,
        "notes": [auto] if config.model.dtype == "auto" else [],
    }


def plan_notes(plan: MemoryPlan) -> list[str]:
    """The assumptions a reader of this plan should know about."""
    notes = []
    if plan.lora_r is not None:
        notes.append(
            f"LoRA r={plan.lora_r} on {', '.join(plan.lora_targets)}: only the adapter trains "
            "(fp32, with its gradients and AdamW states); the EMA tracks its A and B matrices "
            f"at rank min({plan.rank}, {plan.lora_r}); activations are planned as without LoRA"
        )
    elif plan.dtype_bytes < 4:
        notes.append(
            "16-bit weights are planned with fp32 master weights and AdamW states; congrad's "
            "trainer keeps AdamW states in the weights' dtype and no master copy. For real "
            "mixed precision load fp32 weights (model.dtype=float32) with "
            "train.mixed_precision=bf16, as configs/paper/*.yaml do"
        )
    if plan.ema_ratio < 1:
        rank = min(plan.rank, plan.lora_r or plan.rank)
        notes.append(f"at rank {rank} the factored EMA is larger than a dense one")
    return notes


def read_model_config(name_or_path: str) -> tuple[dict[str, Any], str]:
    """``(config.json as a dict, where it came from)`` for a folder, a config.json file,
    ``smollm2`` (from the cache of ``congrad fetch-model``), ``tiny-random`` or a hub id.
    Never reads weights; raises :class:`PlanError` saying what to do instead."""
    from congrad.models.loading import TINY_RANDOM, ModelLoadError, check_model_source
    from congrad.models.offline import SMOLLM2, default_cache_dir, is_offline_alias

    path = Path(name_or_path).expanduser()
    if is_offline_alias(name_or_path):
        path = default_cache_dir() / SMOLLM2.folder_name / "config.json"
        if not path.is_file():
            raise PlanError(
                f"{name_or_path} is not cached in {path.parent}; run `congrad fetch-model`"
            )
    elif name_or_path == TINY_RANDOM:
        from congrad.models.tiny import tiny_causal_lm

        return tiny_causal_lm()[0].config.to_dict(), "tiny-random (built in)"
    elif path.is_dir():
        path = path / "config.json"
        if not path.is_file():
            raise PlanError(f"{path.parent} has no config.json")
    elif not path.is_file():
        try:
            check_model_source(name_or_path)  # shaped like a hub id (owner/name)?
        except ModelLoadError:
            raise PlanError(
                f"{name_or_path!r} is not an existing folder or config.json file, "
                "'smollm2', 'tiny-random' or a hub id (owner/name)"
            ) from None
        path = _download_config(name_or_path)
    try:
        loaded = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:  # UnicodeDecodeError and JSONDecodeError included
        raise PlanError(f"cannot read {path} as JSON: {error}") from None
    if not isinstance(loaded, dict):
        raise PlanError(f"{path} must hold a JSON object, not {type(loaded).__name__}")
    return loaded, str(path)


def _download_config(repo_id: str) -> Path:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    try:
        return Path(hf_hub_download(repo_id, "config.json"))
    except (OSError, ValueError, EntryNotFoundError) as error:  # network, 404, gated, bad id
        reason = (str(error).strip().splitlines() or [""])[0][:200]
        raise PlanError(
            f"cannot fetch config.json of {repo_id!r} from the Hugging Face hub "
            f"({type(error).__name__}: {reason}). Check the id and the connection; a gated "
            "model (meta-llama/*, google/gemma-*) needs its license accepted on the hub and "
            "`hf auth login` or HF_TOKEN; or download its config.json and pass that path"
        ) from None


def plan_table(plan: MemoryPlan, source: str) -> Table:
    """The plan as a rich table, decimal GB (10^9 bytes) and GiB (2^30) side by side."""
    from rich.table import Table

    weights = {2: "16-bit", 4: "fp32"}.get(plan.dtype_bytes, f"{plan.dtype_bytes}-byte")
    batch = f"{2 * plan.batch_size} sequences x {plan.max_length} tokens"
    params = f"{plan.parameters / 1e9:.2f} B parameters"
    trained, ema_basis = f"gradients ({weights})", f"rank {plan.rank}, fp32 factors"
    grads_basis, adam_basis = "same dtype as the weights", "2 x fp32 per parameter"
    if plan.lora_r is not None:
        adapter = f"{plan.adapter_parameters / 1e6:.1f} M"
        params += f" + LoRA r={plan.lora_r}: {adapter} fp32"
        trained, grads_basis = "gradients (LoRA, fp32)", f"adapter only ({adapter} parameters)"
        adam_basis = "2 x fp32 per adapter parameter"
        ema_basis = f"LoRA A and B at rank {min(plan.rank, plan.lora_r)}, fp32 factors"
    master_basis = "mixed precision with 16-bit weights"
    if plan.lora_r is not None:
        master_basis = "none: the base weights are frozen"
    recompute = ", checkpointed" if plan.gradient_checkpointing else ""
    rows = [
        (f"weights ({weights})", plan.weights_bytes, params),
        (trained, plan.gradient_bytes, grads_basis),
        ("AdamW states", plan.optimizer_bytes, adam_basis),
        ("fp32 master weights", plan.master_bytes, master_basis),
        (
            "activations (estimate)",
            plan.activations_bytes,
            f"one LP-DPO minibatch: {batch}{recompute}",
        ),
        ("attention scores (est.)", plan.attention_scores_bytes, "eager only; 0 with SDPA/flash"),
        ("logits (fp32)", plan.logits_bytes, f"{plan.activation_bytes}-byte activations above"),
        ("EMA per language", plan.ema_bytes_per_language, ema_basis),
        ("EMA total", plan.ema_bytes, f"{plan.languages} languages"),
        ("training total", plan.training_bytes, "all of the above, one device"),
        ("dense EMA per language", plan.dense_ema_bytes_per_language, "not stored: full rank"),
    ]
    tied = "tied" if plan.tied_embeddings else "untied"
    table = Table(
        title=f"congrad plan: {source}\n{plan.model_type}, {plan.layers} layers, {tied} embeddings",
        caption=f"GB = 10^9 bytes, GiB = 2^30. Dense EMA / factored = {plan.ema_ratio:.1f}x. "
        "Activations: Korthikanti et al. (2022), "
        + ("recomputed per layer" if plan.gradient_checkpointing else "no recomputation")
        + ", worst-case length.",
    )
    for column in ("part", "GB", "GiB", "basis"):
        table.add_column(column, justify="right" if column in ("GB", "GiB") else "left")
    for name, size, basis in rows:
        table.add_row(name, f"{size / GB:,.2f}", f"{size / GIB:,.2f}", basis)
    return table
