"""Evaluation: the pairwise judge prompt and verdict parser
(:mod:`~congrad.evaluation.pairwise`), judges and the verdict cache
(:mod:`~congrad.evaluation.judges`), win rates with bootstrap intervals
(:mod:`~congrad.evaluation.winrate`) and multiple-choice accuracy, the alignment tax
(:mod:`~congrad.evaluation.mcq`)."""
