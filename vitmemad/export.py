"""`python -m vitmemad.export ckpt_path=PATH format=onnx [output=FILE]`: export the scoring graph.

The ONNX model maps ``images`` float32 (B, 3, S, S) in [-1, 1] (preprocessed as
`vitmemad.data.preprocess` does) to ``maps`` float32 (B, S, S): reconstruction plus the anomaly-map
generator (L2 and/or 1 - SSIM, Gaussian smoothing), i.e. ``module.score(images)[0]``. The batch
size is dynamic. The model is exported in eval mode (BatchNorm running statistics) through the
TorchScript-based exporter (``dynamo=False``; the dynamo exporter needs onnxscript, which is not a
dependency) at opset 17, then checked with ``onnx.checker`` and, by default, compared with PyTorch
under onnxruntime on batches of 1 and 3 images (``atol``, default 1e-4) before it is moved into place.
What predict needs beyond the graph travels as ONNX metadata (`vitmemad.onnx_model`): the calibrated
thresholds, the image size, the preprocessing and post-processing, the anomaly-map settings and the parity
check's tolerance and result (``vitmemad.parity``), so ``predict ckpt_path=model.onnx`` needs nothing else.

Default output: ``model.onnx`` beside the checkpoint. An existing file is never replaced unless
``overwrite=true``. `benchmark_inference` measures PyTorch and onnxruntime throughput side by side.
"""
from __future__ import annotations

import json
import logging
import os
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from omegaconf import DictConfig

from vitmemad import cli, config, pipeline
from vitmemad.build import build_module
from vitmemad.config import to_plain
from vitmemad.errors import VitmemadError
from vitmemad.inference import ScoringModel, calibrated_thresholds, image_size_of, load_module
from vitmemad.models.module import AnomalyModule
from vitmemad.onnx_model import INPUT_NAME, OUTPUT_NAME, POSTPROCESS, PREPROCESS, onnx_session
from vitmemad.utils.io import make_readable

log = logging.getLogger(__name__)

FORMATS = ("onnx",)
DEFAULT_NAMES = {"onnx": "model.onnx"}
DEFAULT_OPSET = 17
TRACE_BATCH = 2  # traced with 2 images, verified with 1 and 3: the batch axis must stay dynamic
VERIFY_BATCHES = (1, 3)


class ExportError(VitmemadError, RuntimeError):
    """The exported model is invalid or does not reproduce PyTorch's anomaly maps."""


def default_output(ckpt_path: str | Path, fmt: str = "onnx") -> Path:
    return Path(ckpt_path).expanduser().parent / DEFAULT_NAMES[fmt]


def resolve_output(ckpt_path: str | Path, output: str | Path | None, fmt: str = "onnx") -> Path:
    """``output`` as given; an existing folder gets the default file name inside it; None: beside the checkpoint."""
    if output in (None, ""):
        return default_output(ckpt_path, fmt)
    path = Path(output).expanduser()
    return path / DEFAULT_NAMES[fmt] if path.is_dir() else path


def refuse_existing(path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; pass overwrite=true to replace it, or output=ANOTHER_FILE")


def synthetic_images(batch: int, image_size: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, image_size, image_size, generator=gen) * 2 - 1


def onnx_metadata(module: AnomalyModule, extra: dict[str, Any] | None = None) -> dict[str, str]:
    """Everything predict needs beyond the graph (read back by `vitmemad.onnx_model.read_metadata`)."""
    image_thr, pixel_thr = calibrated_thresholds(module)
    cfg = module.run_config
    meta = {
        "vitmemad.input": f"{INPUT_NAME}: float32 (B, 3, S, S), RGB scaled to [-1, 1] (x / 127.5 - 1), "
                          "resized to S x S with PIL bilinear",
        "vitmemad.output": f"{OUTPUT_NAME}: float32 (B, S, S) anomaly maps; image score = max of the map",
        "vitmemad.image_size": str(image_size_of(module)),
        "vitmemad.preprocess": json.dumps(PREPROCESS),
        "vitmemad.postprocess": json.dumps(POSTPROCESS),
        "vitmemad.image_threshold": json.dumps(image_thr),
        "vitmemad.pixel_threshold": json.dumps(pixel_thr),
        "vitmemad.anomaly_map": json.dumps({k: v for k, v in (cfg.get("anomaly_map") or {}).items()
                                            if k != "_target_"}),
        "vitmemad.model": str(pipeline.model_name(cfg)),
        "vitmemad.category": str(cfg.get("data", {}).get("category")),
    }
    meta.update({k: str(v) for k, v in (extra or {}).items()})
    return meta


def _publish(tmp: Path, path: Path, overwrite: bool) -> None:
    """Move the finished file into place; without overwrite, fail rather than replace (no race)."""
    if overwrite:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)  # atomic and fails if `path` exists
    except FileExistsError:
        raise FileExistsError(f"{path} appeared while exporting; pass overwrite=true to replace it") from None
    except OSError:  # file systems without hard links
        refuse_existing(path, overwrite=False)
        os.replace(tmp, path)
        return
    tmp.unlink()


def compare_with_torch(onnx_path: str | Path, module: AnomalyModule, batch_sizes=VERIFY_BATCHES) -> float:
    """Largest |onnxruntime - PyTorch| over the anomaly maps of synthetic batches."""
    scoring = ScoringModel(module).eval()
    session = onnx_session(onnx_path)
    size = image_size_of(module)
    worst = 0.0
    for i, b in enumerate(batch_sizes):
        x = synthetic_images(b, size, seed=100 + i)
        with torch.inference_mode():
            ref = scoring(x).numpy()
        (got,) = session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})
        if got.shape != ref.shape:
            raise ExportError(
                f"onnxruntime returned maps of shape {got.shape} for a batch of {b}, expected {ref.shape}")
        worst = max(worst, float(np.abs(got - ref).max()))
    return worst


def export_onnx(module: AnomalyModule, path: str | Path, *, opset: int = DEFAULT_OPSET, overwrite: bool = False,
                verify: bool = True, atol: float = 1e-4, metadata: dict[str, Any] | None = None) -> dict[str, Any]:
    """Export ``module``'s scoring graph (images -> anomaly maps) to ONNX at ``path``; return a summary."""
    import onnx

    path = Path(path)
    generator = module.anomaly_map
    if not generator.score_is_map_maximum:
        setting = (f"anomaly_map.image_score={generator.image_score}" if generator.image_score != "max"
                   else f"anomaly_map.image_sigma={generator.image_sigma:g}")
        raise ExportError(f"{setting} is not exported: the ONNX file holds the map, scored by its maximum; predict "
                          "with the checkpoint instead")
    refuse_existing(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    module = module.to("cpu").eval()
    scoring = ScoringModel(module).eval()
    size = image_size_of(module)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            # Shape checks in timm/kornia become constants in the trace: expected, the graph is still exact.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            # dynamo=False on purpose (the dynamo exporter needs onnxscript, not installed).
            warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
            warnings.filterwarnings("ignore", message=".*Constant folding - Only steps=1.*")
            torch.onnx.export(
                scoring, (synthetic_images(TRACE_BATCH, size),), str(tmp), dynamo=False, opset_version=int(opset),
                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], do_constant_folding=True,
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            )
        model = onnx.load(str(tmp))
        onnx.checker.check_model(model)
        max_diff = None
        if verify:
            max_diff = compare_with_torch(tmp, module)
            if not max_diff <= atol:
                raise ExportError(f"onnxruntime's anomaly maps differ from PyTorch's by {max_diff:.3g} > atol={atol}")
        parity = {"atol": atol, "max_abs_diff": max_diff, "batch_sizes": list(VERIFY_BATCHES)} if verify else None
        model.doc_string = "vitmemad anomaly maps: images (B,3,S,S) in [-1,1] -> maps (B,S,S)"
        for key, value in onnx_metadata(module, {"vitmemad.parity": json.dumps(parity), **(metadata or {})}).items():
            entry = model.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.save(model, str(tmp))
        make_readable(tmp)  # mkstemp creates 0600
        _publish(tmp, path, overwrite)
    finally:
        tmp.unlink(missing_ok=True)
    return {"path": str(path), "format": "onnx", "opset": int(opset), "image_size": size,
            "verified_batch_sizes": list(VERIFY_BATCHES) if verify else [], "max_abs_diff": max_diff,
            "bytes": path.stat().st_size}


def export(cfg: DictConfig) -> dict[str, Any]:
    fmt = str(cfg.format).lower()
    if fmt not in FORMATS:
        raise ValueError(f"format={cfg.format} is not supported; choose one of {list(FORMATS)}")
    overwrite = bool(cfg.get("overwrite", False))
    out = resolve_output(cfg.ckpt_path, cfg.get("output"), fmt)
    refuse_existing(out, overwrite)  # before the (slow) load
    pipeline.configure_threads(cfg.get("num_threads"))
    module = load_module(cfg.ckpt_path, "cpu")
    info = export_onnx(module, out, opset=int(cfg.get("opset", DEFAULT_OPSET)), overwrite=overwrite,
                       verify=bool(cfg.get("verify", True)), atol=float(cfg.get("atol", 1e-4)),
                       metadata={"vitmemad.source_checkpoint": str(Path(cfg.ckpt_path).resolve())})
    diff = "not verified" if info["max_abs_diff"] is None else f"max |onnx - torch| = {info['max_abs_diff']:.2g}"
    print(f"[vitmemad] exported {cfg.ckpt_path} -> {out} (opset {info['opset']}, {diff})")
    return info


# ---------------------------------------------------------------- throughput
def benchmark_inference(model: str = "vitmemad_cpu", *, ckpt_path: str | None = None, batch_size: int = 8,
                        rounds: int = 10, warmup: int = 2, threads: int | None = None,
                        overrides: tuple[str, ...] = ()) -> dict[str, Any]:
    """Images/s of PyTorch (eval, inference_mode) and onnxruntime (CPU) on the same synthetic batches.

    Measures the scoring graph only (images -> maps at model resolution), not decoding, resizing or
    writing files. The two runtimes alternate batch by batch so that a machine whose load changes
    affects both alike; throughput = batch_size / median time per batch. Weights: the checkpoint's,
    or a randomly initialised model of preset ``model`` (speed does not depend on the weights).
    """
    import onnxruntime as ort

    threads = int(threads or torch.get_num_threads())
    torch.set_num_threads(threads)
    module = load_module(ckpt_path) if ckpt_path else _fresh_module(model, overrides)
    scoring = ScoringModel(module).eval()
    size = image_size_of(module)
    x = synthetic_images(batch_size, size, seed=1)
    with tempfile.TemporaryDirectory() as tmp:
        info = export_onnx(module, Path(tmp) / "bench.onnx", verify=True)
        session = onnx_session(info["path"], threads)
        feed = {INPUT_NAME: x.numpy()}
        times: dict[str, list[float]] = {"torch": [], "onnxruntime": []}
        with torch.inference_mode():
            for r in range(warmup + rounds):
                t0 = time.perf_counter()
                scoring(x)
                t1 = time.perf_counter()
                session.run([OUTPUT_NAME], feed)
                t2 = time.perf_counter()
                if r >= warmup:
                    times["torch"].append(t1 - t0)
                    times["onnxruntime"].append(t2 - t1)
    result = {
        "model": model if not ckpt_path else pipeline.model_name(module.run_config),
        "image_size": size,
        "batch_size": batch_size,
        "threads": threads,
        "rounds": rounds,
        "torch_images_per_s": round(batch_size / statistics.median(times["torch"]), 2),
        "onnxruntime_images_per_s": round(batch_size / statistics.median(times["onnxruntime"]), 2),
        "max_abs_diff": info["max_abs_diff"],
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
    }
    result["onnxruntime_speedup"] = round(result["onnxruntime_images_per_s"] / result["torch_images_per_s"], 2)
    print(json.dumps(result))
    return result


def _fresh_module(model: str, overrides: tuple[str, ...] = ()) -> AnomalyModule:
    from vitmemad.config import compose

    cfg = compose("train", [f"model={model}", *overrides])
    cfg.paths.output_dir = tempfile.gettempdir()  # resolved but unused: nothing is written
    container = to_plain(cfg)
    torch.manual_seed(0)
    module = build_module(container["model"]).eval().requires_grad_(False)
    module.run_config = container
    return module


@hydra.main(version_base="1.3", config_path=str(config.CONF_DIR), config_name="export")
def main(cfg: DictConfig) -> None:
    export(cfg)


if __name__ == "__main__":
    cli.run(main)  # user errors: one line on stderr, exit 2 (vitmemad/cli.py)
