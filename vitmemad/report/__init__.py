"""What people look at: a run's ``curves.png`` and the report over many runs (``vitmemad report``: tables in
``results.md`` and ``results.csv``, figures in ``figures/``). matplotlib on Agg, no torch."""
