"""Choose the anomaly map (source and smoothing sigma) of trained checkpoints on the LABELLED VALIDATION half.

    python experiments/select_map.py CKPT... [--sources l2 ssim both gms all] [--sigmas 0 2 4 8] [--part val]
                                             [--fraction 0.5] [--split-seed 0] [--out FILE.json]
                                             [--precision 32-true|bf16-mixed]

The map settings change nothing in training, so they are chosen after it, on labelled data that is not the
test set: the test images are split by ``vitmemad.data.labelled_split.stratified_split`` (the same seeded,
stratified halves as ``data.labelled_val_fraction``), every setting is scored on ``--part val``, and the
held-out ``--part test`` half is only read once the choice is made (docs/results.md).
The reconstruction is computed once per image; each setting then only smooths and scores it. For a run with
``anomaly_map.reference=normal_mean`` each setting subtracts the mean map of the run's held-out normal validation
images, computed with that setting (``--reference none`` scores the raw maps).

Prints one JSON object per checkpoint and setting (image_AUROC, pixel_AUROC, PRO on the chosen part) and the
setting with the best mean rank over the three metrics; ``--out`` also writes them as a JSON list.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vitmemad.build import build_datamodule  # noqa: E402
from vitmemad.data.labelled_split import stratified_split  # noqa: E402
from vitmemad.inference import load_module  # noqa: E402
from vitmemad.metrics import ImageAUROC, PixelAUROC, pro_score  # noqa: E402
from vitmemad.models.anomaly_map import (  # noqa: E402
    REFERENCES, SOURCE_TERMS, SOURCES, TERMS, AnomalyMapGenerator, error_term, resize_maps)
from vitmemad.models.module import AnomalyModule  # noqa: E402
from vitmemad.models.registration import ShiftRegistration, normal_mean_image, registered_forward  # noqa: E402
from vitmemad.trainer_precision import PRECISIONS, is_bf16  # noqa: E402

METRICS = ("image_AUROC", "pixel_AUROC", "PRO")


def run_datamodule(cfg: dict, stage: str):
    """The checkpoint's own data module, set up for ``stage``, without a labelled split of the test set."""
    data_cfg = {k: v for k, v in cfg["data"].items() if k not in ("labelled_val_fraction", "labelled_val_seed")}
    datamodule = build_datamodule(data_cfg)
    datamodule.setup(stage)
    return datamodule


def test_part(cfg: dict, part: str, fraction: float, split_seed: int):
    """The chosen part of the test set (a list of dataset items), from the checkpoint's own data config."""
    dataset = run_datamodule(cfg, "test").test_dataset
    if part == "all":
        return [dataset[i] for i in range(len(dataset))]
    val_idx, test_idx = stratified_split(dataset.samples, fraction, split_seed)
    return [dataset[i] for i in (val_idx if part == "val" else test_idx)]


@torch.no_grad()
def raw_errors(module: AnomalyModule, items: list, ssim_window: int,
               precision: str = "32-true") -> dict[str, list[torch.Tensor]]:
    """Unsmoothed per-pixel error maps (S, S) of every item (L2, 1 - SSIM, 1 - MSGMS), at the model's resolution:
    the pipeline's own error terms (``anomaly_map.error_term``), one list per term. ``precision`` is the forward
    pass's, as ``trainer.precision`` spells it (``bf16-mixed``: under autocast, as the run tested)."""
    errors: dict[str, list[torch.Tensor]] = {term: [] for term in TERMS}
    for item in items:
        image = item["image"][None].float()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=is_bf16(precision)):
            recon = registered_forward(module.net, module.registration, image)["reconstruction"].float()
        for term, maps in errors.items():
            maps.append(error_term(term, image, recon, ssim_window)[0])
    return errors


def normal_validation_items(cfg: dict) -> list:
    """The run's held-out normal validation images (``data.val_fraction`` of train): where its reference map
    and thresholds come from."""
    dataset = run_datamodule(cfg, "fit").val_dataset
    return [dataset[i] for i in range(len(dataset))]


def smoothed(errors: dict, i: int, source: str, smoother: AnomalyMapGenerator) -> torch.Tensor:
    return smoother.smooth(sum(errors[term][i] for term in SOURCE_TERMS[source])[None])


def score_setting(errors: dict, items: list, source: str, sigma: float,
                  reference_errors: dict | None = None) -> dict[str, float]:
    """The three metrics of one map setting; ``reference_errors`` (raw errors of normal validation images):
    subtract their mean smoothed map first, as ``anomaly_map.reference=normal_mean`` does."""
    smoother = AnomalyMapGenerator(sigma=sigma)  # only its smoothing is used; the terms are cached per item
    reference = 0.0
    if reference_errors is not None:
        count = len(reference_errors["l2"])
        reference = sum(smoothed(reference_errors, i, source, smoother) for i in range(count)) / count
    image_auroc, pixel_auroc = ImageAUROC(), PixelAUROC()
    maps, masks, scores, labels = [], [], [], []
    for i, item in enumerate(items):
        mask = item["mask"]
        full = resize_maps(smoothed(errors, i, source, smoother) - reference, tuple(mask.shape[-2:]))
        maps.append(full[0])
        masks.append(mask)
        scores.append(full.amax())
        labels.append(int(item["label"]))
    image_auroc.update_scores(torch.stack(scores), torch.tensor(labels))
    pixel_auroc.update(torch.stack(maps), torch.stack(masks))
    return {"image_AUROC": float(image_auroc.compute()), "pixel_AUROC": float(pixel_auroc.compute()),
            "PRO": float(pro_score(torch.stack(maps), torch.stack(masks)))}


def reference_errors(module: AnomalyModule, cfg: dict, precision: str, reference: str | None = None) -> dict | None:
    """Raw errors of the run's normal validation images when its map subtracts their mean (or ``reference``
    says so), else None."""
    reference = reference or cfg.get("anomaly_map", {}).get("reference", "none")
    if reference == "none":
        return None
    items = normal_validation_items(cfg)
    return raw_errors(module, items, module.anomaly_map.ssim_window, precision)


def run_precision(cfg: dict) -> str:
    """The precision the run trained in (its forward pass's, unless told otherwise)."""
    return cfg.get("trainer", {}).get("precision", "32-true")


def checkpoint_errors(module: AnomalyModule, part: str, fraction: float = 0.5, split_seed: int = 0,
                      precision: str | None = None, reference: str | None = None) -> tuple[list, dict, dict | None]:
    """A loaded checkpoint's test-part items, their raw errors and its reference errors (None without a
    reference map), in the run's precision unless ``precision`` says otherwise."""
    cfg = module.run_config
    items = test_part(cfg, part, fraction, split_seed)
    precision = precision or run_precision(cfg)
    errors = raw_errors(module, items, module.anomaly_map.ssim_window, precision)
    return items, errors, reference_errors(module, cfg, precision, reference)


def set_registration(module: AnomalyModule, max_shift: int | None) -> None:
    """Score with ``registration=shift`` at ``max_shift`` (0: without one; None: the run's own), its reference the
    mean of the run's normal validation images, as a run sets it at fit start."""
    if max_shift is None:
        return
    module.registration = None
    if max_shift > 0:
        registration = ShiftRegistration(max_shift, int(module.run_config["data"]["image_size"]))
        registration.set_reference(normal_mean_image(run_datamodule(module.run_config, "fit"), torch.device("cpu")))
        module.registration = registration


def best_by_mean_rank(rows: list[dict]) -> dict:
    """The row with the best (lowest) mean rank over the three metrics; ties go to the first listed."""
    ranks = [0.0] * len(rows)
    for metric in METRICS:
        order = sorted(range(len(rows)), key=lambda i: -rows[i][metric])
        for rank, i in enumerate(order):
            ranks[i] += rank / len(METRICS)
    return rows[min(range(len(rows)), key=lambda i: ranks[i])]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ckpts", nargs="+")
    parser.add_argument("--sources", nargs="+", default=list(SOURCES), choices=SOURCES)
    parser.add_argument("--sigmas", nargs="+", type=float, default=[0.0, 2.0, 4.0, 8.0])
    parser.add_argument("--part", choices=["val", "test", "all"], default="val")
    parser.add_argument("--fraction", type=float, default=0.5)
    parser.add_argument("--split-seed", type=int, default=0)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--max-shift", type=int,
                        help="score with registration=shift at this max_shift (0: none; default: the run's own)")
    parser.add_argument("--precision", choices=PRECISIONS,
                        help="the forward pass's precision (default: the run's trainer.precision)")
    parser.add_argument("--reference", choices=REFERENCES,
                        help="subtract the normal validation images' mean map (default: the run's anomaly_map.reference)")
    args = parser.parse_args(argv)
    rows = []
    for path in args.ckpts:
        module = load_module(path)
        set_registration(module, args.max_shift)
        if not hasattr(module.net, "decoder"):
            parser.error(f"{path}: not a reconstruction model (its anomaly map has no source to choose)")
        items, errors, reference = checkpoint_errors(module, args.part, args.fraction, args.split_seed,
                                                     args.precision, args.reference)
        ckpt_rows = []
        for source in args.sources:
            for sigma in args.sigmas:
                row = {"ckpt": path, "part": args.part, "source": source, "sigma": sigma,
                       **score_setting(errors, items, source, sigma, reference)}
                print(json.dumps(row), flush=True)
                ckpt_rows.append(row)
        print(json.dumps({"ckpt": path, "best_mean_rank": best_by_mean_rank(ckpt_rows)}), flush=True)
        rows += ckpt_rows
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
