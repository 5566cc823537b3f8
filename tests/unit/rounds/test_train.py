"""train_round: schedule properties, hand-checked loss, exact per-minibatch EMA, accumulation
equivalence, reference log-probs and the atomic model save. Tiny model, a few seconds."""

from __future__ import annotations

import copy
import math
from collections import Counter

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from congrad import PreferencePair, collate_pairs, encode_pair, lp_dpo_loss
from congrad.config.run import EMAConfig, TrainConfig
from congrad.core.losses import sequence_logps
from congrad.core.reference import per_pair_gradient
from congrad.data.encoding import pad_token_id_of
from congrad.rounds.train import language_schedule, reference_logps, save_round_model, train_round
from tests.conftest import make_pairs
from tests.tolerances import assert_close_in_norm, float32_budget

EMA = EMAConfig(rank=4, iters=2)


def _pairs(langs: list[str]) -> list[PreferencePair]:
    return [PreferencePair(f"id{i}", lang, "q", "a", "b") for i, lang in enumerate(langs)]


def _fresh(tiny):
    """A private copy of the shared tiny model (the session fixture must never be trained)."""
    model, tokenizer = tiny
    return copy.deepcopy(model), tokenizer


# --- schedule ---------------------------------------------------------------------------

schedule_inputs = st.tuples(
    st.lists(st.sampled_from(["en", "de", "zh", "ar"]), max_size=40),
    st.integers(1, 6),
    st.integers(0, 2**32),
)


@settings(max_examples=150, deadline=None)
@given(schedule_inputs)
def test_schedule_one_language_per_minibatch_every_pair_once(case):
    langs, batch_size, seed = case
    pairs = _pairs(langs)
    schedule = language_schedule(pairs, batch_size, seed)
    assert sorted(i for batch in schedule for i in batch) == list(range(len(pairs)))
    assert all(len({pairs[i].lang for i in batch}) == 1 for batch in schedule)
    assert all(1 <= len(batch) <= batch_size for batch in schedule)
    # Per language: ceil(n / batch_size) minibatches, only the last one may be smaller.
    for lang, count in Counter(langs).items():
        own = [batch for batch in schedule if pairs[batch[0]].lang == lang]
        assert len(own) == math.ceil(count / batch_size)
        assert all(len(batch) == batch_size for batch in own[:-1])


@settings(max_examples=100, deadline=None)
@given(schedule_inputs, st.randoms(use_true_random=False))
def test_schedule_is_deterministic_and_follows_ids_not_rows(case, rng):
    langs, batch_size, seed = case
    pairs = _pairs(langs)
    schedule = language_schedule(pairs, batch_size, seed)
    assert language_schedule(pairs, batch_size, seed) == schedule
    shuffled = list(pairs)
    rng.shuffle(shuffled)
    by_id = [[pairs[i].pair_id for i in batch] for batch in schedule]
    again = [
        [shuffled[i].pair_id for i in b] for b in language_schedule(shuffled, batch_size, seed)
    ]
    assert again == by_id


def test_schedule_depends_on_seed_and_rejects_bad_batch_size():
    pairs = _pairs(["en", "de", "zh"] * 10)
    orders = {str(language_schedule(pairs, 2, seed)) for seed in range(5)}
    assert len(orders) > 1
    with pytest.raises(ValueError, match="batch_size"):
        language_schedule(pairs, 0, 0)


# --- reference log-probs -----------------------------------------------------------------


def test_reference_logps_match_per_pair_and_direct_computation(tiny, pairs):
    model, tokenizer = tiny
    refs = reference_logps(model, tokenizer, pairs, batch_size=4, max_length=64)
    assert list(refs) == [p.pair_id for p in pairs]
    names = [n for n, _ in model.named_parameters()][:1]
    for pair in pairs:
        _, chosen, rejected = per_pair_gradient(
            model, tokenizer, pair, names, beta=0.1, alpha=0.0, max_length=64
        )
        assert refs[pair.pair_id] == pytest.approx((chosen, rejected), abs=1e-4)
    batch = collate_pairs([encode_pair(tokenizer, pairs[0], 64)], pad_token_id_of(tokenizer))
    with torch.no_grad():
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    direct = sequence_logps(logits, batch.input_ids, batch.response_mask)
    assert refs[pairs[0].pair_id] == pytest.approx(tuple(direct.tolist()), abs=1e-5)


# --- the training round ----------------------------------------------------------------


def test_bad_inputs_are_rejected_before_training(tiny, pairs):
    model, tokenizer = tiny
    config = TrainConfig(batch_size=2)
    with pytest.raises(ValueError, match="at least one preference pair"):
        train_round(model, tokenizer, [], train=config, ema=EMA, seed=0)
    partial = {p.pair_id: (0.0, 0.0) for p in pairs if p.pair_id != pairs[4].pair_id}
    with pytest.raises(ValueError, match=repr(pairs[4].pair_id)):
        train_round(model, tokenizer, pairs, train=config, ema=EMA, seed=0, ref_logps=partial)
    with pytest.raises(ValueError, match="unique"):
        train_round(model, tokenizer, [pairs[0], pairs[0]], train=config, ema=EMA, seed=0)


@pytest.mark.parametrize("alpha", [0.0, 0.01])
def test_first_loss_with_policy_equal_to_reference_is_worked_by_hand(tiny, pairs, alpha):
    model, tokenizer = _fresh(tiny)
    config = TrainConfig(batch_size=3, alpha=alpha, max_length=64, learning_rate=1e-4)
    result, _ = train_round(model, tokenizer, pairs, train=config, ema=EMA, seed=3)
    first = language_schedule(pairs, 3, seed=3)[0]
    # p_m = 0, so loss_i = -log sigmoid(alpha * l_m) = log(1 + exp(-alpha * l_m)).
    by_hand = []
    for i in first:
        encoded = encode_pair(tokenizer, pairs[i], 64)
        length_margin = encoded.chosen_length - encoded.rejected_length
        by_hand.append(math.log1p(math.exp(-alpha * length_margin)))
    expected = sum(by_hand) / len(by_hand)
    if alpha == 0.0:
        assert expected == pytest.approx(math.log(2), abs=1e-12)
    assert result.log[0].lang == pairs[first[0]].lang
    assert result.log[0].loss == pytest.approx(expected, abs=1e-5)
    assert result.log[0].chosen_reward_mean == pytest.approx(0.0, abs=1e-5)


def test_training_changes_weights_logs_finite_values_and_ends_in_eval(tiny, pairs):
    model, tokenizer = _fresh(tiny)
    before = {name: value.clone() for name, value in model.state_dict().items()}
    config = TrainConfig(batch_size=2, gradient_accumulation_steps=2, learning_rate=1e-3)
    result, ema = train_round(model, tokenizer, pairs, train=config, ema=EMA, seed=0, progress=True)
    changed = [n for n, v in model.state_dict().items() if not torch.equal(v, before[n])]
    assert any("layers.0.self_attn.q_proj" in name for name in changed)
    assert not model.training
    assert all(p.grad is None for p in model.parameters())
    schedule = language_schedule(pairs, 2, seed=0)
    assert result.steps == math.ceil(len(schedule) / 2) == result.log[-1].step
    assert [row.pairs for row in result.log] == [len(batch) for batch in schedule]
    for row in result.log:
        values = [row.loss, row.grad_norm, row.lr, row.chosen_reward_mean, row.accuracy]
        assert all(math.isfinite(v) for v in values)
    assert math.isfinite(result.mean_loss) and result.seconds > 0
    assert set(result.lang_mean_loss) == {"de", "en", "zh"}
    # The EMA holds exactly the trained languages, one update per minibatch.
    per_lang = Counter(pairs[batch[0]].lang for batch in schedule)
    assert ema.languages == sorted(per_lang)
    assert ema.counts() == dict(per_lang)


def test_large_learning_rate_raises_the_chosen_margin(tiny):
    model, tokenizer = _fresh(tiny)
    pairs = make_pairs(6)
    config = TrainConfig(batch_size=3, learning_rate=2e-3, warmup_ratio=0.0, alpha=0.0)
    start = reference_logps(model, tokenizer, pairs, batch_size=6, max_length=config.max_length)
    results = [
        train_round(model, tokenizer, pairs, train=config, ema=EMA, seed=epoch, ref_logps=start)[0]
        for epoch in range(3)
    ]
    assert results[-1].mean_loss < results[0].mean_loss < math.log(2) + 1e-4
    first, last = results[0].log[0], results[-1].log[-1]
    assert first.chosen_reward_mean == pytest.approx(0.0, abs=1e-4)  # policy == reference
    assert last.accuracy == 1.0 and last.chosen_reward_mean > last.rejected_reward_mean
    after = reference_logps(model, tokenizer, pairs, batch_size=6, max_length=config.max_length)
    margins = [(after[k][0] - start[k][0]) - (after[k][1] - start[k][1]) for k in start]
    assert all(margin > 0 for margin in margins)


def _manual_gradients(model, tokenizer, pairs, names, config):
    """Gradient of the minibatch's mean LP-DPO loss with reference = policy, by autograd."""
    batch = collate_pairs(
        [encode_pair(tokenizer, p, config.max_length) for p in pairs], pad_token_id_of(tokenizer)
    )
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    logps = sequence_logps(logits, batch.input_ids, batch.response_mask)
    n = batch.num_pairs
    loss = lp_dpo_loss(
        logps[:n],
        logps[n:],
        logps[:n].detach(),
        logps[n:].detach(),
        batch.chosen_lengths,
        batch.rejected_lengths,
        beta=config.beta,
        alpha=config.alpha,
    ).mean()
    parameters = dict(model.named_parameters())
    return dict(zip(names, torch.autograd.grad(loss, [parameters[n] for n in names]), strict=True))


def test_ema_holds_each_minibatch_own_gradient_inside_an_accumulation_window(tiny, pairs):
    # en and de: one minibatch each, both in ONE accumulation window, so both see the
    # round-start weights; at full rank one update is exact: EMA = (1-g) G / (1-g) = G.
    model, tokenizer = _fresh(tiny)
    reference = copy.deepcopy(model)
    chosen = [p for p in pairs if p.lang in ("en", "de")][:4]
    config = TrainConfig(batch_size=3, gradient_accumulation_steps=2, max_length=64)
    full_rank = EMAConfig(rank=128, iters=2, gamma=0.9)
    result, ema = train_round(model, tokenizer, chosen, train=config, ema=full_rank, seed=1)
    assert result.steps == 1 and ema.counts() == {"de": 1, "en": 1}
    # Both paths run in float32: per path the weight-gradient sum over the minibatch's
    # tokens (3 pairs x 2 sequences x 64), forward and backward through 2 layers (hidden 64,
    # MLP 128, attention over 64 positions) and the output layer (vocabulary 512); the EMA
    # adds one Householder QR of a 128 x 64 matrix per subspace iteration.
    one_path = float32_budget(3 * 2 * 64, *[64, 128, 64] * 2 * 2, 64, 512)
    budget = 2 * one_path + float32_budget(*[128 * 64] * full_rank.iters)
    for lang in ("en", "de"):
        subset = [p for p in chosen if p.lang == lang]
        grads = _manual_gradients(reference, tokenizer, subset, ema.tracked_names, config)
        for name, grad in grads.items():
            dense = ema.matrices(lang)[name].dense()
            assert_close_in_norm(dense, grad, budget, msg=f"{lang} {name}")


def test_accumulation_equals_a_larger_minibatch(tiny):
    # The invariant of TRL's suite, in the numbers: batch 8 == batch 4 x accumulation 2.
    pairs = [p for p in make_pairs(48) if p.lang == "en"]  # 16 pairs, one language
    _, tokenizer = tiny
    refs = reference_logps(tiny[0], tokenizer, pairs, batch_size=8, max_length=64)
    common = dict(learning_rate=1e-3, warmup_ratio=0.0, max_length=64)
    runs = []
    for batch_size, accumulation in ((8, 1), (4, 2)):
        model, _ = _fresh(tiny)
        config = TrainConfig(
            batch_size=batch_size, gradient_accumulation_steps=accumulation, **common
        )
        result, _ = train_round(
            model, tokenizer, pairs, train=config, ema=EMA, seed=0, ref_logps=refs
        )
        runs.append((model, result))
    (big, big_result), (small, small_result) = runs
    assert big_result.steps == small_result.steps == 2
    big_rows, small_rows = big_result.log, small_result.log
    assert [r.grad_norm for r in big_rows] == pytest.approx(
        [r.grad_norm for r in small_rows[::2]], rel=1e-5
    )
    assert [r.loss for r in big_rows] == pytest.approx(
        [(a.loss + b.loss) / 2 for a, b in zip(small_rows[::2], small_rows[1::2], strict=True)],
        rel=1e-5,
    )
    # Adam's first steps are ~lr * sign(g): entries with |g| near eps amplify float rounding,
    # so weights agree to 1% of lr (the steps themselves move weights by ~lr).
    for (name, a), b in zip(big.named_parameters(), small.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-2 * common["learning_rate"], msg=name)


def test_fp16_loss_scale_is_divided_out_exactly_and_overflow_is_flagged():
    # No GradScaler on CPU, so the fp16 helpers are checked directly: the scale (a power of
    # two) divides out exactly, and a window's sum is the mean of its minibatches.
    from congrad.rounds.engines import _accumulate, _unscale

    weight = torch.nn.Parameter(torch.zeros(3))
    running: list = [None]
    for gradient in (torch.tensor([1.0, -2.0, 3.0]), torch.tensor([0.5, 0.25, -1.0])):
        weight.grad = gradient * 1024.0
        assert _unscale([weight], 1024.0)
        assert torch.equal(weight.grad, gradient)
        _accumulate([weight], running, window=2)
        assert weight.grad is None
    assert torch.equal(running[0], torch.tensor([0.75, -0.875, 1.0]))
    weight.grad = torch.tensor([1.0, math.inf, 0.0])
    assert not _unscale([weight], 1024.0)


# --- saving --------------------------------------------------------------------------------


def test_save_round_model_round_trips_and_replaces_atomically(tiny, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tokenizer = tiny
    folder = tmp_path / "round-1" / "model"
    save_round_model(model, tokenizer, folder)
    save_round_model(model, tokenizer, folder)  # replacing an existing folder works too
    assert (folder / "model.safetensors").is_file()
    assert [p.name for p in folder.parent.iterdir()] == ["model"]  # no temporary leftovers
    loaded = AutoModelForCausalLM.from_pretrained(folder).eval()
    loaded_tokenizer = AutoTokenizer.from_pretrained(folder)
    ids = torch.tensor([loaded_tokenizer("Warum ist der Himmel blau?")["input_ids"]])
    assert ids.tolist() == [tokenizer("Warum ist der Himmel blau?")["input_ids"]]
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, model(input_ids=ids).logits)
