"""One-pass scores equal per-pair autograd (docs/design.md section 6)."""

from __future__ import annotations

import pytest
import torch

from congrad import GradientEMA, score_pairs, seeded_orders
from congrad.core.reference import per_pair_scores
from congrad.models.tiny import tiny_causal_lm
from tests.conftest import fill_ema, make_pairs


def _check_against_reference(scores, reference, rtol):
    for score, ref in zip(scores, reference, strict=True):
        assert score.dot == pytest.approx(ref["dot"], rel=rtol, abs=1e-12)
        assert score.grad_norm == pytest.approx(ref["grad_norm"], rel=rtol)
        assert score.cosine == pytest.approx(ref["cosine"], rel=rtol, abs=1e-9)
        assert score.ref_chosen_logps == pytest.approx(ref["ref_chosen_logps"], rel=rtol)
        assert score.ref_rejected_logps == pytest.approx(ref["ref_rejected_logps"], rel=rtol)


@pytest.mark.parametrize("method", ["materialize", "ghost", "auto"])
@pytest.mark.parametrize("max_length", [24, 256])  # 24 truncates most pairs
def test_matches_per_pair_autograd(tiny, pairs, filled_ema, method, max_length):
    model, tokenizer = tiny
    kwargs = dict(beta=0.1, alpha=0.01, max_length=max_length)
    scores = score_pairs(model, tokenizer, pairs, filled_ema, batch_size=4, method=method, **kwargs)
    reference = per_pair_scores(model, tokenizer, pairs, filled_ema, **kwargs)
    assert [s.pair_id for s in scores] == [p.pair_id for p in pairs]
    assert any(s.truncated for s in scores) == (max_length == 24)
    assert len({s.chosen_length + s.rejected_length for s in scores}) > 1  # varied padding
    _check_against_reference(scores, reference, rtol=1e-5)


def test_matches_in_float64_to_round_off():
    model, tokenizer = tiny_causal_lm(seed=1, dtype=torch.float64)
    pairs = make_pairs(6)
    ema = GradientEMA(model, rank=3)
    fill_ema(model, tokenizer, pairs, ema)
    orders = seeded_orders(ema.languages, seed=5)
    kwargs = dict(beta=0.5, alpha=0.02, max_length=48, orders=orders)
    scores = score_pairs(model, tokenizer, pairs, ema, batch_size=6, **kwargs)
    reference = per_pair_scores(model, tokenizer, pairs, ema, **kwargs)
    _check_against_reference(scores, reference, rtol=1e-5)


def test_batch_size_does_not_change_scores(tiny, pairs, filled_ema):
    model, tokenizer = tiny
    one = score_pairs(
        model, tokenizer, pairs, filled_ema, beta=0.1, alpha=0.0, batch_size=1, max_length=64
    )
    many = score_pairs(
        model, tokenizer, pairs, filled_ema, beta=0.1, alpha=0.0, batch_size=9, max_length=64
    )
    for a, b in zip(one, many, strict=True):
        assert a.cosine == pytest.approx(b.cosine, rel=1e-5, abs=1e-7)


def test_beta_and_alpha_do_not_change_the_ranking(tiny, pairs, filled_ema):
    model, tokenizer = tiny
    rankings, cosines = [], []
    for beta, alpha in [(0.1, 0.0), (1.0, 0.05), (0.01, -0.02)]:
        scores = score_pairs(
            model, tokenizer, pairs, filled_ema, beta=beta, alpha=alpha, batch_size=5, max_length=64
        )
        rankings.append(sorted(range(len(scores)), key=lambda i: scores[i].cosine))
        cosines.append([s.cosine for s in scores])
    assert rankings[0] == rankings[1] == rankings[2]
    torch.testing.assert_close(
        torch.tensor(cosines[0]), torch.tensor(cosines[1]), rtol=1e-5, atol=1e-7
    )


def test_model_state_is_restored(tiny, pairs, filled_ema):
    model, tokenizer = tiny
    model.train()
    flags = [p.requires_grad for p in model.parameters()]
    score_pairs(
        model, tokenizer, pairs[:2], filled_ema, beta=0.1, alpha=0.0, batch_size=2, max_length=32
    )
    assert model.training
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())


def test_empty_ema_and_foreign_ema_are_refused(tiny, pairs):
    model, tokenizer = tiny
    with pytest.raises(ValueError, match="holds no language"):
        score_pairs(
            model,
            tokenizer,
            pairs,
            GradientEMA(model, rank=2),
            beta=0.1,
            alpha=0.0,
            batch_size=2,
            max_length=32,
        )
    other, _ = tiny_causal_lm(hidden_size=32)
    with pytest.raises(ValueError, match="tracked matrices differ"):
        score_pairs(
            other,
            tokenizer,
            pairs,
            GradientEMA(model, rank=2),
            beta=0.1,
            alpha=0.0,
            batch_size=2,
            max_length=32,
        )


def test_shared_layer_is_refused_not_miscounted(pairs):
    """A tracked layer that runs twice per forward would need cross terms; refuse it."""
    model, tokenizer = tiny_causal_lm(seed=2)
    model.model.layers[1].mlp = model.model.layers[0].mlp  # weight sharing across blocks
    ema = GradientEMA(model, rank=2)
    fill_ema(model, tokenizer, pairs, ema, steps=3)
    with pytest.raises(NotImplementedError, match="ran twice"):
        score_pairs(
            model, tokenizer, pairs[:2], ema, beta=0.1, alpha=0.0, batch_size=2, max_length=32
        )


def test_no_pairs_no_scores(tiny, filled_ema):
    model, tokenizer = tiny
    assert (
        score_pairs(
            model, tokenizer, [], filled_ema, beta=0.1, alpha=0.0, batch_size=2, max_length=32
        )
        == []
    )
