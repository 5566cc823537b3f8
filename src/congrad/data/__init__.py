"""Data congrad reads and writes: records (:mod:`~congrad.data.records`), tokenisation
with the chat template and response masks (:mod:`~congrad.data.encoding`), user data
files (:mod:`~congrad.data.tables`, :mod:`~congrad.data.prompts`,
:mod:`~congrad.data.preference_files`), run-folder artifacts
(:mod:`~congrad.data.artifacts`), and the data shipped with congrad under ``builtin/``."""
