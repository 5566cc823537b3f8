"""Tools built on the pipeline: strategy comparisons (:mod:`~congrad.tools.compare`), the
memory and cluster plans (:mod:`~congrad.tools.memory_plan`,
:mod:`~congrad.tools.cluster_plan`), the standalone filter for an existing preference
dataset (:mod:`~congrad.tools.standalone_filter`) and the synthetic interference benchmark
(:mod:`~congrad.tools.interference`)."""
