"""Data shipped with congrad: the built-in prompt sets under ``prompts/``."""
