"""Does a second model see the images the first one misses? Fuse the whole-image scores of two checkpoints.

    python experiments/fuse_scores.py FIRST_CKPT SECOND_CKPT... [--part val|test|all] [--weights 0.25 0.5 0.75]

Each checkpoint scores the chosen part of the test set as its pipeline does (``ScoringModel``: its own map,
registration, resolution and image score, at the mask's size) and its held-out normal validation images the
same way. Each score is standardised by that model's normal validation scores, so that the two scales meet, and
the fused score is ``w * z_first + (1 - w) * z_second`` for each weight (and their maximum, ``max``). Also
printed: each model's own image AUROC and the correlation of the two standardised scores over the part's images
(high: they rank the same images high, and fusing cannot add much). Research only; one JSON line per pair.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import select_map  # noqa: E402
from image_scores import image_auroc  # noqa: E402
from vitmemad.inference import ScoringModel, load_module  # noqa: E402


@torch.no_grad()
def whole_image_scores(model: ScoringModel, items: list) -> torch.Tensor:
    """The pipeline's image scores: the run's own ``anomaly_map.image_score`` at each image's native (mask) size."""
    return torch.cat([model.anomaly_map.image_scores(model(item["image"][None].float()),
                                                     [tuple(item["mask"].shape[-2:])]) for item in items]).float()


def checkpoint_scores(path: str, part: str, fraction: float, split_seed: int) -> dict:
    """Image scores of the test part and of the run's normal validation images, with the part's labels and
    paths (to check that two checkpoints scored the same images)."""
    module = load_module(path)
    model = ScoringModel(module).eval()
    items = select_map.test_part(module.run_config, part, fraction, split_seed)
    normal = select_map.normal_validation_items(module.run_config)
    return {"scores": whole_image_scores(model, items), "normal": whole_image_scores(model, normal),
            "labels": [int(item["label"]) for item in items], "paths": [str(item["path"]) for item in items]}


def standardised(scores: torch.Tensor, normal: torch.Tensor) -> torch.Tensor:
    """Scores in units of the normal validation scores' spread above their mean."""
    return (scores - normal.mean()) / normal.std().clamp_min(1e-12)


def fusion_row(first: dict, second: dict, weights: list[float]) -> dict:
    if first["paths"] != second["paths"]:
        raise ValueError("the two checkpoints scored different test images; give runs of the same category")
    labels = first["labels"]
    z1, z2 = standardised(first["scores"], first["normal"]), standardised(second["scores"], second["normal"])
    row = {"first": image_auroc(first["scores"].tolist(), labels),
           "second": image_auroc(second["scores"].tolist(), labels)}
    for weight in weights:
        row[f"w{weight:g}"] = image_auroc((weight * z1 + (1 - weight) * z2).tolist(), labels)
    row["max"] = image_auroc(torch.maximum(z1, z2).tolist(), labels)
    row["correlation"] = float(torch.corrcoef(torch.stack([z1, z2]))[0, 1])
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("first")
    parser.add_argument("seconds", nargs="+")
    parser.add_argument("--part", choices=["val", "test", "all"], default="val")
    parser.add_argument("--weights", nargs="+", type=float, default=[0.25, 0.5, 0.75])
    parser.add_argument("--fraction", type=float, default=0.5)
    parser.add_argument("--split-seed", type=int, default=0)
    args = parser.parse_args(argv)
    first = checkpoint_scores(args.first, args.part, args.fraction, args.split_seed)
    for path in args.seconds:
        second = checkpoint_scores(path, args.part, args.fraction, args.split_seed)
        row = {"first_ckpt": args.first, "second_ckpt": path, "part": args.part,
               **fusion_row(first, second, args.weights)}
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
