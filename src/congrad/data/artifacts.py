"""Run-folder artifacts: JSONL record files, resumable partial files and stage manifests.

In: rows (dicts) and a stage's facts. Out: files under ``<output_dir>/round_<t>/``.
Every file is written atomically (temporary sibling, fsync, rename). A stage ends by
writing ``<stage>.manifest.json`` LAST: its presence, with the expected fingerprint,
is what marks the stage complete, so an interrupted stage is simply rerun or resumed.
Partial files (``*.partial.jsonl``) are append-only logs of finished records; a torn
last line from a crash is ignored on resume.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from congrad.errors import CongradError
from congrad.util.atomic import atomic_path, write_text_atomic

MANIFEST_SUFFIX = ".manifest.json"


class ArtifactError(CongradError, ValueError):
    """A record file is malformed; the message names the file and line."""


def round_dir(output_dir: str | Path, round_index: int) -> Path:
    return Path(output_dir) / f"round_{round_index}"


def fingerprint(*parts: Any) -> str:
    """SHA-256 (first 16 hex) of the JSON of ``parts``: config sections, upstream prints."""
    text = json.dumps(parts, sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> int:
    """Write ``rows`` as UTF-8 JSON lines, atomically; returns the row count."""
    count = 0
    with atomic_path(path) as temporary, open(temporary, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")
            count += 1
        handle.flush()
    return count


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a JSONL file; a malformed line raises :class:`ArtifactError` with its number."""
    rows = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise ArtifactError(
                    f"{path}, line {number}: not valid JSON ({error.msg})"
                ) from None
            if not isinstance(row, dict):
                raise ArtifactError(f"{path}, line {number}: expected a JSON object")
            rows.append(row)
    return rows


class PartialLog:
    """Append-only JSONL of finished records, for resuming an interrupted stage.

    ``done`` holds the rows already there (a torn final line is dropped and the file cut
    back to the last complete line). ``append`` writes rows and fsyncs them.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.done: list[dict[str, Any]] = []
        if self.path.exists():
            self._recover()

    def _recover(self) -> None:
        data = self.path.read_bytes()
        good_end = 0
        for line in data.splitlines(keepends=True):
            if not line.endswith(b"\n"):
                break
            try:
                self.done.append(json.loads(line))
            except json.JSONDecodeError:
                break
            good_end += len(line)
        if good_end != len(data):
            with open(self.path, "r+b") as handle:
                handle.truncate(good_end)

    def append(self, rows: Iterable[dict[str, Any]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")
                self.done.append(row)
            handle.flush()
            os.fsync(handle.fileno())

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def manifest_path(folder: Path, stage: str) -> Path:
    return folder / f"{stage}{MANIFEST_SUFFIX}"


def write_manifest(folder: Path, stage: str, facts: dict[str, Any]) -> None:
    """Write the stage's manifest (call this last: it marks the stage complete)."""
    text = json.dumps({"stage": stage, **facts}, indent=2, sort_keys=True, ensure_ascii=False)
    write_text_atomic(manifest_path(folder, stage), text + "\n")


def read_manifest(folder: Path, stage: str) -> dict[str, Any] | None:
    """The stage's manifest, or ``None`` when absent or unreadable (then: not complete)."""
    try:
        data = json.loads(manifest_path(folder, stage).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None
