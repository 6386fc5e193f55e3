"""Is an image score's evidence at the defects? Score every image as the pipeline does, and again with each
defective image's (dilated) defect region left out of the maxima.

    python experiments/score_evidence.py CKPT... [--part all|val|test] [--dilate 0 12 24] [--max-shift N]
    python experiments/score_evidence.py CKPT --offsets [--max-shift 6]

For each defective image the maxima are taken outside its defect mask dilated by ``--dilate`` model pixels; each
good image leaves out the dilated mask of a defective image (in turn), so both kinds lose the same area. If the
image AUROC of these "outside" scores stays where the whole-image score is, the score separates the images by
something away from the defects (how the images were taken, say), not by the defects. ``at_defect`` is the share of
defective images whose score comes from inside their dilated defect (the score falls when it is left out): where it
is low, a defective image stands out, if at all, by a peak elsewhere. Scores: the map's maximum
(at the run's sigma) and the standardised scores ``normal_z`` / ``max_and_z`` at image sigma 6 and 12, calibrated
on the run's normal validation images as ``ThresholdCalibration`` does. ``--max-shift``: as in select_map.py.
One JSON line per checkpoint, dilation and score.

``--offsets`` prints instead the registration offsets (dy, dx) of the run's normal validation images and of each
defect type of its test set, against the validation images' mean (``registration=shift`` at ``--max-shift``,
default 6): whether the test images sit where the training images do.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import select_map  # noqa: E402
from image_scores import image_auroc, run_maps  # noqa: E402
from vitmemad.callbacks.thresholds import calibrate  # noqa: E402
from vitmemad.inference import load_module  # noqa: E402
from vitmemad.models import ShiftRegistration  # noqa: E402
from vitmemad.models.anomaly_map import AnomalyMapGenerator  # noqa: E402

SCORES = (("max", None), ("normal_z", 6.0), ("normal_z", 12.0), ("max_and_z", 6.0), ("max_and_z", 12.0))


def model_masks(items: list, size: int) -> torch.Tensor:
    """(N, S, S) boolean defect masks at the model's resolution."""
    return torch.stack([F.interpolate(item["mask"].float().reshape(1, 1, *item["mask"].shape[-2:]), size=(size, size),
                                      mode="nearest")[0, 0] > 0 for item in items])


def left_out(masks: torch.Tensor, labels: list[int], dilate: int) -> torch.Tensor:
    """(N, S, S) regions each image's maxima leave out: its own dilated mask, or a defective image's for a good one."""
    defective = [i for i, label in enumerate(labels) if label]
    chosen = torch.stack([masks[i] if label else masks[defective[i % len(defective)]] for i, label in enumerate(labels)])
    if dilate == 0:
        return chosen
    return F.max_pool2d(chosen.float()[:, None], 2 * dilate + 1, 1, dilate)[:, 0] > 0


def share_at_defect(whole: torch.Tensor, outside: torch.Tensor, labels: list[int]) -> float:
    """The share of defective images whose score drops when their defect region is left out."""
    defective = torch.tensor(labels, dtype=torch.bool)
    return float((outside[defective] < whole[defective]).float().mean())


def evidence_rows(module, part: str, dilations: list[int]):
    cfg = module.run_config
    items = select_map.test_part(cfg, part, 0.5, 0)
    labels = [int(item["label"]) for item in items]
    _, sigma, maps, normals = run_maps(module, items, select_map.run_precision(cfg))
    masks = model_masks(items, maps.shape[-1])
    for score, image_sigma in SCORES:
        generator = AnomalyMapGenerator(sigma=sigma, image_size=maps.shape[-1], image_score=score,
                                        image_sigma=image_sigma)
        calibrate(generator, [normals])
        parts = generator.score_parts(maps)
        scores = generator.image_scores(maps)
        whole = image_auroc(scores.tolist(), labels)
        for dilate in dilations:
            out = left_out(masks, labels, dilate)
            outside = generator.combine(torch.stack([p.masked_fill(out, float("-inf")).flatten(1).amax(1)
                                                     for p in parts]))
            yield {"score": score, "image_sigma": generator.image_sigma, "dilate": dilate,
                   "image_AUROC": round(whole, 4), "outside_defects": round(image_auroc(outside.tolist(), labels), 4),
                   "at_defect": round(share_at_defect(scores, outside, labels), 4)}


def offset_rows(cfg: dict, max_shift: int):
    """Mean and median registration offsets per group of images: the normal validation images, then each defect type."""
    normal = torch.stack([item["image"] for item in select_map.normal_validation_items(cfg)])
    registration = ShiftRegistration(max_shift, normal.shape[-1])
    registration.set_reference(normal.mean(0))
    dataset = select_map.run_datamodule(cfg, "test").test_dataset
    groups: dict[str, list[torch.Tensor]] = {"validation (normal)": list(normal)}
    for i, sample in enumerate(dataset.samples):
        groups.setdefault(sample.defect, []).append(dataset[i]["image"])
    for name, images in groups.items():
        offsets = registration.offsets(torch.stack(images)).float()
        yield {"images": name, "count": len(images), "mean_dy": round(float(offsets[:, 0].mean()), 2),
               "mean_dx": round(float(offsets[:, 1].mean()), 2), "median_dy": float(offsets[:, 0].median()),
               "median_dx": float(offsets[:, 1].median())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ckpts", nargs="+")
    parser.add_argument("--part", choices=["val", "test", "all"], default="all")
    parser.add_argument("--dilate", nargs="+", type=int, default=[0, 12, 24])
    parser.add_argument("--max-shift", type=int,
                        help="score with registration=shift at this max_shift (0: none; default: the run's own)")
    parser.add_argument("--offsets", action="store_true", help="print the registration offsets per defect type")
    args = parser.parse_args(argv)
    for path in args.ckpts:
        module = load_module(path)
        if args.offsets:
            for row in offset_rows(module.run_config, args.max_shift or 6):
                print(json.dumps({"ckpt": path, **row}), flush=True)
            continue
        select_map.set_registration(module, args.max_shift)
        for row in evidence_rows(module, args.part, args.dilate):
            print(json.dumps({"ckpt": path, "part": args.part, "max_shift": args.max_shift, **row}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
