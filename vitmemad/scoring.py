"""What predict scores with: a checkpoint (PyTorch, ``precision`` 32-true or bf16-mixed) or an exported .onnx file
(onnxruntime, float32), chosen by the file's suffix.

Both give the same thing, so everything after them (resize to the image, score, label, files) is one code path
in `vitmemad.predict`: ``scorer(images)`` maps (B, 3, S, S) in [-1, 1] to float32 anomaly maps (B, S, S) on
``scorer.device``; ``scorer.image_size`` is S and ``scorer.thresholds`` the calibrated (image, pixel) thresholds
(None where never calibrated); ``scorer.image_scores(maps, sizes)`` the image scores with the maxima taken at each
image's native size (``anomaly_map.image_score``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import torch

from vitmemad.errors import ConfigError
from vitmemad.trainer_precision import PRECISIONS


class Scorer(Protocol):
    device: torch.device
    image_size: int
    thresholds: tuple[float | None, float | None]
    image_score: str  # anomaly_map.image_score: "max" (the map's maximum), "normal_z" or "max_and_z"
    score_is_map_maximum: bool  # whether the image threshold is on the map's scale (AnomalyMapGenerator's)

    def __call__(self, images: torch.Tensor) -> torch.Tensor: ...

    def image_scores(self, maps: torch.Tensor, sizes: list[tuple[int, int]]) -> torch.Tensor: ...


def is_onnx(ckpt_path: str | Path) -> bool:
    return Path(str(ckpt_path)).suffix.lower() == ".onnx"


def check_precision(precision: Any, ckpt_path: str | Path) -> str:
    """The ``precision`` key: one of PRECISIONS; an .onnx file runs in float32 only."""
    value = str(precision)
    if value not in PRECISIONS:
        raise ConfigError(f"precision={precision} is not supported; choose one of {', '.join(PRECISIONS)}")
    if value != "32-true" and is_onnx(ckpt_path):
        raise ConfigError(f"precision={value} is not available with ckpt_path={ckpt_path}: an .onnx file runs in "
                          "float32 under onnxruntime; use precision=32-true, or a checkpoint for bf16-mixed")
    return value


class CheckpointScorer:
    """A checkpoint's scoring graph (`vitmemad.inference.ScoringModel`) in eval mode on ``device``."""

    def __init__(self, ckpt_path: str | Path, device: torch.device, precision: str = "32-true") -> None:
        from vitmemad.inference import ScoringModel, calibrated_thresholds, image_size_of, load_module

        module = load_module(ckpt_path, device)
        self.device, self.image_size = device, image_size_of(module)
        self.thresholds = calibrated_thresholds(module)
        self.model = ScoringModel(module, bf16=precision == "bf16-mixed").eval()
        self.image_score = module.anomaly_map.image_score
        self.score_is_map_maximum = module.anomaly_map.score_is_map_maximum

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images.to(self.device)).float()  # float32 whatever ran inside

    def image_scores(self, maps: torch.Tensor, sizes: list[tuple[int, int]]) -> torch.Tensor:
        return self.model.anomaly_map.image_scores(maps, sizes)


def open_scorer(ckpt_path: str | Path, device: str | None = "cpu", precision: str = "32-true",
                threads: int | None = None) -> Scorer:
    """The scorer ``ckpt_path`` calls for: onnxruntime for ``*.onnx`` (on the CPU; ``device=auto`` means the
    CPU there), else the checkpoint on ``device`` (``cpu``, ``cuda``, ``auto``)."""
    precision = check_precision(precision, ckpt_path)
    if is_onnx(ckpt_path):
        from vitmemad.onnx_model import OnnxScorer

        if str(device or "auto") not in ("auto", "cpu"):
            raise ConfigError(f"device={device} is not available with ckpt_path={ckpt_path}: onnxruntime runs the "
                              "file on the CPU here; use device=cpu")
        return OnnxScorer(ckpt_path, threads)
    from vitmemad.inference import resolve_device

    return CheckpointScorer(ckpt_path, resolve_device(device), precision)
