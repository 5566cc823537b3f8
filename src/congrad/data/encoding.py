"""Tokenise preference pairs and pad them into model batches.

In: a tokenizer and :class:`~congrad.data.records.PreferencePair` records. Out:
:class:`EncodedPair` (1-D token ids and response masks, no padding) and
:class:`PairBatch` (right-padded ``(2B, T)`` tensors, chosen rows first, then rejected).

The prompt is rendered as the user turn of the tokenizer's chat template (with the
generation prompt); the response is the text the template puts after it for an
assistant turn, so it ends with the template's end-of-turn marker. Prompt and response
are tokenised separately, so no token straddles the boundary. Without a chat template
the prompt is tokenised with the tokenizer's special tokens and the response is
followed by EOS.

Truncation (``max_length`` counts prompt + response tokens of one sequence): a pair that
fits is untouched. Otherwise the prompt keeps its LAST ``min(P, max(L - R_max, L // 2))``
tokens (the same for chosen and rejected, so both see one prompt), and each response
keeps its FIRST ``L - prompt_kept`` tokens. The pair is flagged ``truncated``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from congrad.data.records import PreferencePair


@dataclass(frozen=True)
class EncodedPair:
    """Token ids of ``prompt + chosen`` and ``prompt + rejected``, with response masks."""

    chosen_input_ids: torch.Tensor
    chosen_response_mask: torch.Tensor
    rejected_input_ids: torch.Tensor
    rejected_response_mask: torch.Tensor
    truncated: bool
    prompt_length: int

    @property
    def chosen_length(self) -> int:
        return int(self.chosen_response_mask.sum())

    @property
    def rejected_length(self) -> int:
        return int(self.rejected_response_mask.sum())


@dataclass(frozen=True)
class PairBatch:
    """Right-padded batch of ``B`` pairs: rows ``0..B-1`` chosen, ``B..2B-1`` rejected.

    ``input_ids``, ``attention_mask`` and ``response_mask`` are ``(2B, T)``; the response
    mask is false on padding. ``chosen_lengths`` / ``rejected_lengths`` are ``(B,)``.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    response_mask: torch.Tensor
    chosen_lengths: torch.Tensor
    rejected_lengths: torch.Tensor

    @property
    def num_pairs(self) -> int:
        return self.chosen_lengths.shape[0]


def _token_ids(tokenizer: Any, text: str, *, add_special_tokens: bool) -> list[int]:
    ids = tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"]
    return [int(i) for i in ids]


def _has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def _render_turns(tokenizer: Any, prompt: str, response: str) -> tuple[list[int], list[int]]:
    """Token ids of the prompt part and the response part of one conversation."""
    if not _has_chat_template(tokenizer):
        prompt_ids = _token_ids(tokenizer, prompt, add_special_tokens=True)
        response_ids = _token_ids(tokenizer, response, add_special_tokens=False)
        if tokenizer.eos_token_id is not None:
            response_ids.append(int(tokenizer.eos_token_id))
        return prompt_ids, response_ids
    user_turn = [{"role": "user", "content": prompt}]
    prompt_text = tokenizer.apply_chat_template(
        user_turn, tokenize=False, add_generation_prompt=True
    )
    full_text = tokenizer.apply_chat_template(
        [*user_turn, {"role": "assistant", "content": response}], tokenize=False
    )
    if full_text.startswith(prompt_text):
        response_text = full_text[len(prompt_text) :]
        response_ids = _token_ids(tokenizer, response_text, add_special_tokens=False)
    else:
        # A template whose assistant turn does not extend the generation prompt: fall back
        # to the response text followed by EOS, which is what generation would produce.
        response_ids = _token_ids(tokenizer, response, add_special_tokens=False)
        if tokenizer.eos_token_id is not None:
            response_ids.append(int(tokenizer.eos_token_id))
    # The rendered template already holds any BOS it wants; add no more special tokens.
    return _token_ids(tokenizer, prompt_text, add_special_tokens=False), response_ids


def _join(prompt_ids: list[int], response_ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    input_ids = torch.tensor(prompt_ids + response_ids, dtype=torch.long)
    mask = torch.zeros(len(input_ids), dtype=torch.bool)
    mask[len(prompt_ids) :] = True
    return input_ids, mask


def encode_pair(tokenizer: Any, pair: PreferencePair, max_length: int) -> EncodedPair:
    """Tokenise one pair into chosen and rejected sequences (see the module docstring).

    Raises ``ValueError`` when ``max_length < 2`` or a response encodes to no tokens.
    """
    if max_length < 2:
        raise ValueError(f"max_length must be at least 2 (prompt + response), got {max_length}")
    prompt_ids, chosen_ids = _render_turns(tokenizer, pair.prompt, pair.chosen)
    rejected_prompt_ids, rejected_ids = _render_turns(tokenizer, pair.prompt, pair.rejected)
    if rejected_prompt_ids != prompt_ids:
        raise ValueError(f"pair {pair.pair_id}: the prompt renders differently per response")
    if not chosen_ids or not rejected_ids:
        raise ValueError(f"pair {pair.pair_id}: a response encodes to zero tokens")
    longest_response = max(len(chosen_ids), len(rejected_ids))
    truncated = len(prompt_ids) + longest_response > max_length
    if truncated:
        prompt_kept = min(len(prompt_ids), max(max_length - longest_response, max_length // 2))
        response_kept = max_length - prompt_kept
        prompt_ids = prompt_ids[len(prompt_ids) - prompt_kept :]
        chosen_ids = chosen_ids[:response_kept]
        rejected_ids = rejected_ids[:response_kept]
    if not prompt_ids:
        raise ValueError(f"pair {pair.pair_id}: the prompt encodes to zero tokens")
    chosen_input_ids, chosen_mask = _join(prompt_ids, chosen_ids)
    rejected_input_ids, rejected_mask = _join(prompt_ids, rejected_ids)
    return EncodedPair(
        chosen_input_ids=chosen_input_ids,
        chosen_response_mask=chosen_mask,
        rejected_input_ids=rejected_input_ids,
        rejected_response_mask=rejected_mask,
        truncated=truncated,
        prompt_length=len(prompt_ids),
    )


def collate_pairs(encoded: list[EncodedPair], pad_token_id: int) -> PairBatch:
    """Right-pad encoded pairs into one :class:`PairBatch` (chosen rows, then rejected).

    Right padding keeps every real token's position ids and attention unchanged under
    a causal mask, so padding cannot influence any real token's logits or gradients.
    """
    if not encoded:
        raise ValueError("collate_pairs needs at least one pair")
    sequences = [e.chosen_input_ids for e in encoded] + [e.rejected_input_ids for e in encoded]
    masks = [e.chosen_response_mask for e in encoded] + [e.rejected_response_mask for e in encoded]
    width = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    response_mask = torch.zeros((len(sequences), width), dtype=torch.bool)
    for row, (ids, mask) in enumerate(zip(sequences, masks, strict=True)):
        input_ids[row, : len(ids)] = ids
        attention_mask[row, : len(ids)] = 1
        response_mask[row, : len(ids)] = mask
    return PairBatch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        response_mask=response_mask,
        chosen_lengths=torch.tensor([e.chosen_length for e in encoded]),
        rejected_lengths=torch.tensor([e.rejected_length for e in encoded]),
    )


def pad_token_id_of(tokenizer: Any) -> int:
    """The tokenizer's pad id, else its EOS id; padding is masked out either way."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    raise ValueError("the tokenizer has neither a pad token nor an EOS token to pad with")
