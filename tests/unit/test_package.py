"""Every module imports, nothing heavy runs at import, doctests hold, the CLI answers."""

from __future__ import annotations

import doctest
import importlib
import pkgutil
import subprocess
import sys

import pytest

import congrad

MODULES = sorted(info.name for info in pkgutil.walk_packages(congrad.__path__, prefix="congrad."))


def test_module_list_is_complete():
    expected = {"congrad.core.scoring", "congrad.core.pcgrad", "congrad.cli.main"}
    expected.add("congrad.testing")
    assert expected <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_module_imports_and_doctests(name):
    module = importlib.import_module(name)
    assert module.__doc__, f"{name} needs a module docstring"
    failures, _ = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert failures == 0


def test_public_api_names_resolve():
    for name in congrad.__all__:
        assert getattr(congrad, name) is not None
    with pytest.raises(AttributeError):
        congrad.no_such_name  # noqa: B018


def test_import_is_light():
    code = "import sys, congrad, congrad.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_plan_reads_config_json_without_loading_torch(tmp_path):
    # Every command imports congrad.errors (its user errors); none of those may pull torch.
    (tmp_path / "config.json").write_text(
        '{"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, '
        '"num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 512}'
    )
    code = (
        "import sys; from congrad.cli import main; "
        f"code = main(['plan', '--model', {str(tmp_path)!r}]); "
        "print(code, 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "0 False"


def test_cli_help_and_version():
    from congrad.cli import main

    assert main([]) == 0
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0


def test_cli_inspect_ema(tmp_path, filled_ema, capsys):
    from congrad.cli import main

    path = tmp_path / "ema.safetensors"
    filled_ema.save(path)
    assert main(["inspect-ema", str(path)]) == 0
    out = capsys.readouterr().out
    assert "rank 4" in out and "de: 2 updates" in out
    assert f"bytes per language: {filled_ema.nbytes // 3:,}" in out
    (tmp_path / "junk.safetensors").write_bytes(b"not a file")
    assert main(["inspect-ema", str(tmp_path / "junk.safetensors")]) == 1


def test_all_lists_exactly_the_exports():
    assert sorted(congrad.__all__) == sorted(["__version__", *congrad._EXPORTS])


def test_every_user_error_has_the_one_base_and_errors_is_a_leaf():
    # The CLI catches CongradError alone: an error class named like a user error that does
    # not derive from it would end in a traceback instead of one line and exit 2.
    import ast
    import inspect

    from congrad.errors import CongradError

    source = inspect.getsource(importlib.import_module("congrad.errors"))
    imports = [n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.ImportFrom)]
    assert all(n.module == "__future__" for n in imports), "congrad.errors must import nothing"
    found = []
    for name in MODULES:
        module = importlib.import_module(name)
        for _, value in inspect.getmembers(module, inspect.isclass):
            if value.__module__ == name and issubclass(value, Exception):
                found.append(value)
                assert issubclass(value, CongradError), f"{name}.{value.__name__}"
    assert len(found) >= 16  # the user errors of every layer were found, not none
