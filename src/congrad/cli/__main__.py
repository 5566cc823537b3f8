"""``python -m congrad.cli``: the same as the ``congrad`` command."""

from congrad.cli.main import main

if __name__ == "__main__":
    raise SystemExit(main())
