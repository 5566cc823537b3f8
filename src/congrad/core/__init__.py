"""The paper's math, free of files and stages: the LP-DPO loss (:mod:`~congrad.core.losses`),
the low-rank EMA of one matrix (:mod:`~congrad.core.lowrank`), per-language gradient EMAs
(:mod:`~congrad.core.gradient_ema`), PCGrad in Gram space (:mod:`~congrad.core.pcgrad`),
the consensus direction (:mod:`~congrad.core.consensus`), one-pass pair scoring
(:mod:`~congrad.core.scoring`), the selection strategies (:mod:`~congrad.core.selection`)
and the slow, obviously-correct references the tests compare against
(:mod:`~congrad.core.reference`)."""
