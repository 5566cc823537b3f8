"""encode_pair and collate_pairs: chat template, plain text, truncation, padding."""

from __future__ import annotations

import pytest
import torch

from congrad import PreferencePair, collate_pairs, encode_pair


def _pair(prompt="Say hi.", chosen="Hello there, friend!", rejected="No."):
    return PreferencePair("p0", "en", prompt, chosen, rejected)


def test_chat_template_layout(tiny):
    _, tokenizer = tiny
    encoded = encode_pair(tokenizer, _pair(), max_length=512)
    assert not encoded.truncated
    text = tokenizer.decode(encoded.chosen_input_ids)
    assert text.startswith("<|bos|><|user|>\nSay hi.<|end|>\n<|assistant|>\n")
    response = tokenizer.decode(encoded.chosen_input_ids[encoded.chosen_response_mask])
    assert response == "Hello there, friend!<|end|>\n"
    # Both sequences share the prompt tokens.
    p = encoded.prompt_length
    assert torch.equal(encoded.chosen_input_ids[:p], encoded.rejected_input_ids[:p])
    assert not encoded.chosen_response_mask[:p].any()
    assert encoded.chosen_response_mask[p:].all()


def test_plain_concatenation_without_template(tiny):
    _, tokenizer = tiny
    template = tokenizer.chat_template
    try:
        tokenizer.chat_template = None
        encoded = encode_pair(tokenizer, _pair(), max_length=512)
    finally:
        tokenizer.chat_template = template
    response = encoded.rejected_input_ids[encoded.rejected_response_mask]
    assert tokenizer.decode(response) == "No.<|end|>"
    assert response[-1].item() == tokenizer.eos_token_id


def test_truncation_keeps_prompt_end_and_response_start(tiny):
    _, tokenizer = tiny
    long_prompt = " ".join(f"w{i}" for i in range(60)) + " END"
    long_chosen = "START " + " ".join(f"r{i}" for i in range(60))
    full = encode_pair(tokenizer, _pair(long_prompt, long_chosen), max_length=10_000)
    cut = encode_pair(tokenizer, _pair(long_prompt, long_chosen), max_length=40)
    assert cut.truncated and not full.truncated
    assert len(cut.chosen_input_ids) == 40
    assert len(cut.rejected_input_ids) <= 40
    p = cut.prompt_length
    # The prompt keeps its last tokens, the response its first tokens.
    assert torch.equal(
        cut.chosen_input_ids[:p], full.chosen_input_ids[full.prompt_length - p : full.prompt_length]
    )
    kept = cut.chosen_input_ids[p:]
    assert torch.equal(
        kept, full.chosen_input_ids[full.prompt_length : full.prompt_length + len(kept)]
    )
    assert p == 20  # max(40 - longest response, 40 // 2)
    assert cut.chosen_length == 20


def test_short_response_keeps_whole_prompt_when_it_fits(tiny):
    _, tokenizer = tiny
    cut = encode_pair(tokenizer, _pair(chosen="x " * 200), max_length=60)
    full = encode_pair(tokenizer, _pair(chosen="x " * 200), max_length=10_000)
    assert cut.prompt_length == full.prompt_length  # short prompt is never cut
    assert len(cut.chosen_input_ids) == 60


def test_rejects_tiny_budget(tiny):
    with pytest.raises(ValueError, match="max_length"):
        encode_pair(tiny[1], _pair(), max_length=1)


def test_collate_right_pads_and_masks(tiny):
    _, tokenizer = tiny
    encoded = [encode_pair(tokenizer, _pair(chosen="a" * n), 512) for n in (1, 30)]
    batch = collate_pairs(encoded, pad_token_id=tokenizer.pad_token_id)
    assert batch.input_ids.shape[0] == 4 and batch.num_pairs == 2
    for row, ids in enumerate(
        [e.chosen_input_ids for e in encoded] + [e.rejected_input_ids for e in encoded]
    ):
        assert torch.equal(batch.input_ids[row, : len(ids)], ids)
        assert (batch.input_ids[row, len(ids) :] == tokenizer.pad_token_id).all()
        assert batch.attention_mask[row].sum() == len(ids)
        assert not batch.response_mask[row, len(ids) :].any()
    assert batch.chosen_lengths.tolist() == [e.chosen_length for e in encoded]


def test_records_validate_fields():
    with pytest.raises(ValueError, match="prompt"):
        PreferencePair("p", "en", "  ", "a", "b")
    with pytest.raises(ValueError, match="chosen_score"):
        PreferencePair("p", "en", "q", "a", "b", chosen_score=float("nan"))
    assert PreferencePair("p", "en", "q", "a", "b", 4, 1).reward_margin == 3
