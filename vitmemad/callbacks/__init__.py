"""Lightning callbacks: the side jobs of a run, each configured in ``conf/callbacks/``.

- ``ThresholdCalibration``: decision thresholds from normal validation images (required: predict needs them);
- ``MemoryTraining``: the memory's start from features, warm-up and dead-item restarts;
- ``MemoryDiagnostics``: addressing statistics every validation epoch and on the test set (collapse warning);
- ``ExampleGrid``: ``examples.png``;
- ``LabelledValidation``: ``val/image_AUROC`` for hyperparameter search on a labelled split;
- ``SaveRunConfig``: the resolved run config inside every checkpoint;
- ``LogProgress``: progress as log lines when stderr is not a terminal (nohup, SLURM, CI).
"""
from .examples import ExampleGrid
from .labelled_validation import LabelledValidation
from .memory import MemoryDiagnostics, MemoryTraining
from .progress import LogProgress
from .run_config import SaveRunConfig
from .thresholds import ThresholdCalibration

__all__ = [
    "ExampleGrid", "LabelledValidation", "LogProgress", "MemoryDiagnostics", "MemoryTraining", "SaveRunConfig",
    "ThresholdCalibration",
]
