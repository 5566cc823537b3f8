"""Benchmarks that check the method's claims on this machine (``congrad bench ...``).

:mod:`congrad.tools.interference.benchmark`: a controlled benchmark where the conflicting pairs are
known (synthetic languages, planted conflicts), see ``docs/evidence.md``.
"""
