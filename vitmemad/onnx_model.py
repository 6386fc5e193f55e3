"""The exported ONNX file as predict reads it: tensor names, the metadata that travel inside it, a scorer.

The graph maps ``images`` (B, 3, S, S) to ``maps`` (B, S, S): network, anomaly-map source and smoothing (as
`vitmemad.inference.ScoringModel`). What predict needs beyond the graph is stored in the file's
``metadata_props`` by `vitmemad.export`: the input size S, the calibrated thresholds, the preprocessing and the
post-processing (resize to the image, score = maximum) that predict applies in the same code for checkpoints
and ONNX files. onnxruntime runs the graph in float32 on the CPU; no checkpoint and no LightningModule are loaded.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vitmemad.errors import VitmemadError
from vitmemad.models.anomaly_map import native_maxima

INPUT_NAME, OUTPUT_NAME = "images", "maps"
PREFIX = "vitmemad."
#: How an image becomes the graph's input (`vitmemad.data.preprocess`); predict refuses a file that says otherwise.
PREPROCESS = {"color": "RGB", "layout": "NCHW", "resize": "PIL bilinear, to image_size x image_size",
              "scale": "x / 127.5 - 1"}
#: What happens to the graph's output outside it (vitmemad.predict, for checkpoints and ONNX files alike).
POSTPROCESS = {"resize": "bilinear (align_corners=False) to the image's own size", "score": "max of the map"}
REQUIRED_KEYS = ("image_size", "image_threshold", "pixel_threshold")


class OnnxModelError(VitmemadError, ValueError):
    """An .onnx file predict cannot use: unreadable, or without vitmemad's metadata."""


def onnx_session(path: str | Path, threads: int | None = None) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def read_metadata(path: str | Path, custom: dict[str, str]) -> dict[str, Any]:
    """The values predict needs from ``custom`` (an ONNX file's metadata map): ``image_size``,
    ``image_threshold``, ``pixel_threshold`` (None when never calibrated) and ``parity`` (the export's check)."""
    missing = [PREFIX + k for k in REQUIRED_KEYS if PREFIX + k not in custom]
    if missing:
        raise OnnxModelError(f"{path} has no vitmemad metadata ({', '.join(missing)} missing): it was not written "
                             "by `python -m vitmemad.export`; export the checkpoint with it")
    for key, expected in (("preprocess", PREPROCESS), ("postprocess", POSTPROCESS)):
        if PREFIX + key in custom and json.loads(custom[PREFIX + key]) != expected:  # absent: an older export
            raise OnnxModelError(f"{path}: its {PREFIX}{key} {custom[PREFIX + key]} is not the one this "
                                 f"vitmemad implements ({json.dumps(expected)}); export the checkpoint again")
    try:
        info = {"image_size": int(custom[PREFIX + "image_size"]),
                "image_threshold": _number(json.loads(custom[PREFIX + "image_threshold"])),
                "pixel_threshold": _number(json.loads(custom[PREFIX + "pixel_threshold"]))}
    except (TypeError, ValueError) as err:
        raise OnnxModelError(f"{path}: unreadable vitmemad metadata ({err})") from None
    info["parity"] = json.loads(custom[PREFIX + "parity"]) if PREFIX + "parity" in custom else None
    return info


def _number(value: Any) -> float | None:
    return None if value is None else float(value)


class OnnxScorer:
    """Images (B, 3, S, S) in [-1, 1] -> float32 anomaly maps (B, S, S) from an exported file, on the CPU."""

    device = torch.device("cpu")
    image_score = "max"  # the only score export_onnx writes
    score_is_map_maximum = True

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        path = Path(path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"ckpt_path={path}: no such ONNX file")
        try:
            self.session = onnx_session(path, threads)
        except Exception as err:  # onnxruntime's own error types: a corrupt or foreign file
            raise OnnxModelError(f"{path}: onnxruntime cannot load it ({' '.join(str(err).split())[:300]})") from None
        info = read_metadata(path, self.session.get_modelmeta().custom_metadata_map)
        self.path, self.image_size, self.parity = path, info["image_size"], info["parity"]
        self.thresholds = (info["image_threshold"], info["pixel_threshold"])

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        feed = {INPUT_NAME: np.ascontiguousarray(images.detach().cpu().float().numpy())}
        (maps,) = self.session.run([OUTPUT_NAME], feed)
        return torch.from_numpy(np.asarray(maps, dtype=np.float32))

    def image_scores(self, maps: torch.Tensor, sizes: list[tuple[int, int]]) -> torch.Tensor:
        """The maps' maxima at native size: only models scored by the map's maximum are exported (``export_onnx``)."""
        return native_maxima(maps, sizes)
