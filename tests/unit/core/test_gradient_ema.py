"""GradientEMA: tracked set, Gram matrix, save/load."""

from __future__ import annotations

import json

import pytest
import torch

from congrad import GradientEMA, tracked_linears
from congrad.models.tiny import tiny_causal_lm
from tests.conftest import fill_ema


def test_default_tracks_block_linears_only(tiny):
    model, _ = tiny
    names = list(tracked_linears(model))
    # 2 layers x (q, k, v, o, gate, up, down)
    assert len(names) == 14
    assert all(".layers." in n and n.endswith(".weight") for n in names)
    assert not any("embed" in n or "lm_head" in n or "norm" in n for n in names)


def test_include_patterns_and_empty_selection(tiny):
    model, _ = tiny
    names = list(tracked_linears(model, ["*.self_attn.q_proj.weight"]))
    assert names == [f"model.layers.{i}.self_attn.q_proj.weight" for i in range(2)]
    with pytest.raises(ValueError, match=r"no trainable nn\.Linear"):
        tracked_linears(model, ["*nothing*"])


@pytest.mark.parametrize("rank", [4, 128])  # factored GEMMs, then decompressed (cheaper)
def test_gram_equals_flattened_dense_products(tiny, pairs, rank):
    model, tokenizer = tiny
    ema = GradientEMA(model, rank=rank)
    fill_ema(model, tokenizer, pairs, ema)
    assert ema.languages == ["de", "en", "zh"]
    assert ema.counts() == {"de": 2, "en": 2, "zh": 2}
    flat = torch.stack(
        [
            torch.cat([ema.matrices(lang)[n].dense().double().flatten() for n in ema.tracked_names])
            for lang in ema.languages
        ]
    )
    torch.testing.assert_close(ema.gram(), flat @ flat.T, rtol=1e-5, atol=1e-8)


def test_update_folds_current_gradients(tiny):
    model, _ = tiny
    ema = GradientEMA(model, rank=128, gamma=0.5)  # rank >= min(m, n): exact
    for parameter in model.parameters():
        parameter.grad = torch.full_like(parameter, 2.0)
    ema.update("en")
    for parameter in model.parameters():
        parameter.grad = torch.full_like(parameter, 4.0)
    ema.update("en")
    model.zero_grad(set_to_none=True)
    name = ema.tracked_names[0]
    # raw = 0.5 * (0.5 * 2) + 0.5 * 4 = 2.5, corrected by 0.75 -> 10/3
    torch.testing.assert_close(
        ema.matrices("en")[name].dense(), torch.full(ema.shapes[name], 10 / 3), rtol=1e-5, atol=1e-5
    )
    assert ema.nbytes == sum(4 * min(128, m, n) * (m + n) for m, n in ema.shapes.values())


def test_update_without_backward_is_an_error(tiny):
    model, _ = tiny
    model.zero_grad(set_to_none=True)
    with pytest.raises(RuntimeError, match="call backward first"):
        GradientEMA(model, rank=2).update("en")
    with pytest.raises(ValueError, match="language code"):
        GradientEMA(model, rank=2).update("a|b")


def test_a_gradient_reader_is_asked_one_matrix_at_a_time_in_a_fixed_order(tiny):
    # DeepSpeed's (and FSDP2's) gathered gradients: each is dropped before the next is read,
    # so the update costs one whole matrix of transient memory, not a whole model's.
    import weakref

    model, _ = tiny
    for parameter in model.parameters():
        parameter.grad = torch.randn_like(parameter)
    by_grad = GradientEMA(model, rank=4, seed=1)
    by_grad.update("en")
    alive: list[weakref.ref] = []
    order: list[torch.Tensor] = []

    def read(weight: torch.Tensor) -> torch.Tensor | None:
        assert all(ref() is None for ref in alive), "a gathered gradient was still held"
        gathered = weight.grad.clone()  # what a gather returns: a fresh whole tensor
        alive.append(weakref.ref(gathered))
        order.append(weight)
        return gathered

    by_reader = GradientEMA(model, rank=4, seed=1)
    by_reader.update("en", read=read)
    modules = dict(model.named_modules())
    expected = [modules[name.removesuffix(".weight")].weight for name in by_reader.tracked_names]
    assert [id(w) for w in order] == [id(w) for w in expected]  # the same order on every rank
    for name in by_grad.tracked_names:  # the same numbers as reading .grad
        torch.testing.assert_close(
            by_reader.matrices("en")[name].dense(), by_grad.matrices("en")[name].dense()
        )
    with pytest.raises(RuntimeError, match="no tracked parameter has a gradient"):
        by_reader.update("de", read=lambda weight: None)
    assert by_reader.languages == ["en"]  # the failed language was not kept


def test_save_load_round_trip(tmp_path, tiny, filled_ema):
    model, _ = tiny
    path = tmp_path / "ema.safetensors"
    filled_ema.save(path)
    loaded = GradientEMA.load(path, model)
    assert loaded.languages == filled_ema.languages
    assert loaded.counts() == filled_ema.counts()
    assert loaded.header() == filled_ema.header()
    torch.testing.assert_close(loaded.gram(), filled_ema.gram(), rtol=0, atol=0)
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary file left behind


def test_load_refuses_other_model(tmp_path, filled_ema):
    path = tmp_path / "ema.safetensors"
    filled_ema.save(path)
    other, _ = tiny_causal_lm(seed=0, hidden_size=32)
    with pytest.raises(ValueError, match="tracked matrices differ"):
        GradientEMA.load(path, other)


def test_load_refuses_foreign_file(tmp_path, tiny):
    from safetensors.torch import save_file

    path = tmp_path / "other.safetensors"
    save_file({"x": torch.zeros(2)}, str(path), metadata={"note": json.dumps({})})
    with pytest.raises(ValueError, match="not a congrad GradientEMA"):
        GradientEMA.load(path, tiny[0])


def test_same_seed_same_state(tiny, pairs):
    model, tokenizer = tiny
    first, second = GradientEMA(model, rank=3), GradientEMA(model, rank=3)
    fill_ema(model, tokenizer, pairs, first, steps=3)
    fill_ema(model, tokenizer, pairs, second, steps=3)
    torch.testing.assert_close(first.gram(), second.gram(), rtol=0, atol=0)


def test_the_file_format_name_is_stable(tmp_path, filled_ema):
    # Saved EMAs (``--ema round_3/ema.safetensors``) must load after code moves: the header
    # names the file format, not the module that writes it.
    from safetensors import safe_open

    filled_ema.save(tmp_path / "ema.safetensors")
    with safe_open(tmp_path / "ema.safetensors", framework="pt") as handle:
        header = json.loads(handle.metadata()["congrad"])
    assert header["format"] == "congrad.gradient_ema/1"
