"""Several processes: work sharing and collectives over accelerate's process group
(:mod:`~congrad.parallel.distributed`) and the DeepSpeed ZeRO config congrad's training
loop needs (:mod:`~congrad.parallel.zero`)."""
