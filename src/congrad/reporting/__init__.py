"""Reports rebuilt from a run's or a comparison's artifacts alone: tables
(:mod:`~congrad.reporting.report`) and plots (:mod:`~congrad.reporting.plots`)."""
