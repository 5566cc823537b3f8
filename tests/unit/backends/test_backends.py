"""HF backend: seeded per-record sampling, greedy decoding, next-token log-probs."""

from __future__ import annotations

import torch

from congrad.backends.generation import HFBackend, SamplingParams, _SeededSampler


def test_seeded_sampler_draws_from_the_tempered_top_p_distribution():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    counts = torch.zeros(4)
    for seed in range(2000):
        forced = _SeededSampler([seed], temperature=1.0, top_p=0.7)(None, logits)
        counts[forced[0].argmax()] += 1
    # top_p 0.7 keeps tokens 0 and 1 (0.5 + 0.3 >= 0.7), renormalised to 5/8 and 3/8
    assert counts[2] == counts[3] == 0
    assert abs(counts[0] / 2000 - 5 / 8) < 0.04


def test_sampling_depends_on_the_seed_not_the_batch(tiny):
    model, tokenizer = tiny
    backend = HFBackend(model, tokenizer, batch_size=3)
    prompts = [backend.chat_prompt(text) for text in ("Hallo", "Bonjour tout le monde", "你好")]
    params = SamplingParams(max_new_tokens=8, temperature=1.0, top_p=0.95)
    together = backend.generate(prompts, params, seeds=[1, 2, 3])
    alone = [
        backend.generate([p], params, seeds=[s])[0] for p, s in zip(prompts, [1, 2, 3], strict=True)
    ]
    assert [g.text for g in together] == [g.text for g in alone]
    other = backend.generate(prompts, params, seeds=[7, 8, 9])
    assert [g.text for g in other] != [g.text for g in together]
    assert all(0 < g.num_tokens <= 8 for g in together)


def test_greedy_is_deterministic_and_logprobs_are_normalised(tiny):
    model, tokenizer = tiny
    backend = HFBackend(model, tokenizer, batch_size=2)
    prompts = [backend.chat_prompt("Explain the sky"), backend.chat_prompt("Warum?")]
    params = SamplingParams(max_new_tokens=6)
    assert backend.generate(prompts, params, [0, 0]) == backend.generate(prompts, params, [5, 6])
    table = backend.next_token_logprobs(prompts, list(range(len(tokenizer))))
    assert table.shape == (2, len(tokenizer))
    torch.testing.assert_close(table.exp().sum(dim=1), torch.ones(2), rtol=1e-4, atol=1e-4)
