"""The pure core of each stage of a self-rewarding round, records in and records out:
generate (:mod:`~congrad.rounds.generate`), self-judge (:mod:`~congrad.rounds.self_judge`),
pairs (:mod:`~congrad.rounds.pairs`), filter (:mod:`~congrad.rounds.filtering`) and the
training epoch (:mod:`~congrad.rounds.train`, its DDP / FSDP2 / DeepSpeed differences in
:mod:`~congrad.rounds.engines`, curricula in :mod:`~congrad.rounds.schedules`). File I/O
lives in :mod:`congrad.pipeline`."""
