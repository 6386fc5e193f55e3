"""Lightning callbacks: the side jobs of a run (checkpoints, thresholds, diagnostics, progress), each configured
in ``conf/callbacks/``."""
