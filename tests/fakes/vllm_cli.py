"""``congrad.cli.main`` with the fake ``vllm`` of tests/fakes/fake_vllm.py installed, for
launching the vLLM backend under ``torchrun`` in test_distributed.py:
``python tests/fakes/vllm_cli.py ARGS``."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fake_vllm import install

from congrad.cli import main


class _Modules:
    """What ``install`` needs of pytest's monkeypatch: a way to set ``sys.modules`` items."""

    @staticmethod
    def setitem(mapping: dict, name: str, value: object) -> None:
        mapping[name] = value


if __name__ == "__main__":
    install(_Modules())
    raise SystemExit(main(sys.argv[1:]))
