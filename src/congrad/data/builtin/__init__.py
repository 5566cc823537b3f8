"""Data shipped with congrad: the built-in prompt sets under ``prompts/`` (training and
held-out evaluation prompts) and a tiny multiple-choice sample under ``mcq/`` (for tests
and demos of the alignment-tax measurement; not a benchmark)."""
