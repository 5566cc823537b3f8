"""Small helpers every layer may use: atomic file writes (:mod:`~congrad.util.atomic`),
stable seeds (:mod:`~congrad.util.seeds`) and language codes
(:mod:`~congrad.util.languages`). Nothing here imports torch."""
