"""The ``congrad`` command line (:mod:`~congrad.cli.main`)."""

from congrad.cli.main import main

__all__ = ["main"]
