"""Figures people look at: a run's ``curves.png`` and the report's ``figures/`` (matplotlib, Agg, no torch)."""
