"""Runs: the stage graph, run folder and resume (:mod:`~congrad.pipeline.runner`), each
stage's file I/O around its pure core (:mod:`~congrad.pipeline.train_stages`,
:mod:`~congrad.pipeline.eval_stages`) and the end-of-run table
(:mod:`~congrad.pipeline.summary`)."""
