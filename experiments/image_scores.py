"""Image-score and map-normalisation variants of trained checkpoints, on the LABELLED VALIDATION half.

    python experiments/image_scores.py CKPT... [--part val|test|all] [--sigmas 2 4 6] [--source both]
    python experiments/image_scores.py CKPT... --readout     # the memory read-out residual |z - z_hat|^2 per token
    python experiments/image_scores.py CKPT... --image-sigmas 6 12 16   # every image_score as the run would

For each sigma, the run's map (``--source``, default the run's own) as it is (``raw``), minus the mean map of the
run's held-out normal validation images (``sub``, what ``anomaly_map.reference=normal_mean`` does), and divided by
their per-pixel std after that (``z``); each scored as the map's maximum and as the mean of its top 0.1 / 0.3 / 1 /
3 % pixels (image AUROC), with pixel AUROC and PRO. Research only: prints one JSON object per checkpoint and
setting. With ``--image-sigmas`` it scores the run's own map (its source and sigma) instead, at each
``anomaly_map.image_sigma``, as each ``anomaly_map.image_score`` (``map``) scores it with the pipeline's own
generator. docs/research.md has what it showed.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import select_map  # noqa: E402
from vitmemad.callbacks.thresholds import calibrate  # noqa: E402
from vitmemad.inference import load_module  # noqa: E402
from vitmemad.metrics import ImageAUROC, PixelAUROC, pro_score  # noqa: E402
from vitmemad.models.anomaly_map import IMAGE_SCORES, AnomalyMapGenerator, resize_maps  # noqa: E402
from vitmemad.trainer_precision import is_bf16  # noqa: E402

TOP_FRACTIONS = (0.001, 0.003, 0.01, 0.03)


def image_auroc(scores: list[float], labels: list[int]) -> float:
    metric = ImageAUROC()
    metric.update_scores(torch.tensor(scores), torch.tensor(labels))
    return float(metric.compute())


def scores_of(maps: list[torch.Tensor], items: list) -> dict[str, float]:
    """Image AUROC of the max and top-k means, pixel AUROC and PRO of maps (S, S) brought to the masks' size."""
    labels = [int(item["label"]) for item in items]
    full = [resize_maps(m[None], tuple(item["mask"].shape[-2:]))[0] for m, item in zip(maps, items)]
    row = {"max": image_auroc([float(f.amax()) for f in full], labels)}
    for k in TOP_FRACTIONS:
        row[f"top{k:g}"] = image_auroc([float(f.flatten().topk(max(1, int(k * f.numel()))).values.mean())
                                        for f in full], labels)
    stacked, masks = torch.stack(full), torch.stack([item["mask"] for item in items])
    pixel = PixelAUROC()
    pixel.update(stacked, masks)
    return {**row, "pixel_AUROC": float(pixel.compute()), "PRO": float(pro_score(stacked, masks))}


def map_variants(module, items: list, source: str, sigmas: list[float], precision: str):
    cfg = module.run_config
    errors = select_map.raw_errors(module, items, module.anomaly_map.ssim_window, precision)
    normal = select_map.reference_errors(module, cfg, precision, "normal_mean")
    for sigma in sigmas:
        smoother = AnomalyMapGenerator(sigma=sigma)
        maps = [select_map.smoothed(errors, i, source, smoother)[0] for i in range(len(items))]
        normals = torch.stack([select_map.smoothed(normal, i, source, smoother)[0] for i in range(len(normal["l2"]))])
        mean, std = normals.mean(0), normals.std(0)
        std = (smoother.smooth(std[None])[0] if sigma > 0 else std) + 1e-3 * std.mean()
        variants = {"raw": maps, "sub": [m - mean for m in maps], "z": [(m - mean) / std for m in maps]}
        for name, variant in variants.items():
            yield {"source": source, "sigma": sigma, "map": name, **scores_of(variant, items)}


def run_maps(module, items: list, precision: str) -> tuple[str, float, torch.Tensor, torch.Tensor]:
    """The run's own map setting (source, sigma) and its maps, at model resolution, of ``items`` and of the run's
    normal validation images (what ``ThresholdCalibration`` calibrates on)."""
    cfg = module.run_config["anomaly_map"]
    source, sigma = cfg["source"], float(cfg["sigma"])
    smoother = AnomalyMapGenerator(sigma=sigma)
    errors = select_map.raw_errors(module, items, module.anomaly_map.ssim_window, precision)
    normal = select_map.reference_errors(module, module.run_config, precision, "normal_mean")
    maps = torch.cat([select_map.smoothed(errors, i, source, smoother) for i in range(len(items))])
    normals = torch.cat([select_map.smoothed(normal, i, source, smoother) for i in range(len(normal["l2"]))])
    return source, sigma, maps, normals


def image_sigma_variants(module, items: list, image_sigmas: list[float], precision: str):
    """The run's own map scored as ``anomaly_map.image_score=max|normal_z|max_and_z`` with each ``image_sigma``:
    ``ThresholdCalibration``'s own calibration on the run's normal validation images.
    ``max`` is image AUROC (with pixel AUROC and PRO for the plain maximum's map at ``image_sigma``)."""
    source, sigma, maps, normals = run_maps(module, items, precision)
    labels, sizes = [int(item["label"]) for item in items], [tuple(item["mask"].shape[-2:]) for item in items]
    for image_sigma in image_sigmas:
        for score in IMAGE_SCORES:
            generator = AnomalyMapGenerator(sigma=sigma, image_size=maps.shape[-1], image_score=score,
                                            image_sigma=image_sigma)
            calibrate(generator, [normals])
            row = {"max": image_auroc(generator.image_scores(maps, sizes).tolist(), labels)}
            if score == "max":
                row = {**scores_of(list(generator.score_parts(maps)[0]), items), **row}
            yield {"source": source, "sigma": sigma, "image_sigma": image_sigma, "map": score, **row}


@torch.no_grad()
def readout_maps(module, items: list, precision: str) -> list[torch.Tensor]:
    """|z - z_hat|^2 per position of the memory, upsampled to the input size; z and z_hat are caught on the memory
    module in the model's own forward, so it works for every model with a memory (pixel or feature space)."""
    net, maps, caught = module.net.eval(), [], {}
    hook = net.memory.register_forward_hook(lambda _m, args, out: caught.update(z=args[0], z_hat=out[0]))
    try:
        for item in items:
            image = item["image"][None].float()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=is_bf16(precision)):
                net(image)
            residual = (caught["z"].float() - caught["z_hat"].float()).pow(2).sum(1)
            maps.append(resize_maps(residual, tuple(image.shape[-2:]))[0])
    finally:
        hook.remove()
    return maps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ckpts", nargs="+")
    parser.add_argument("--part", choices=["val", "test", "all"], default="val")
    parser.add_argument("--sigmas", nargs="+", type=float, default=[2.0, 4.0, 6.0])
    parser.add_argument("--source", choices=select_map.SOURCES)
    parser.add_argument("--readout", action="store_true")
    parser.add_argument("--max-shift", type=int,
                        help="score with registration=shift at this max_shift (0: none; default: the run's own)")
    parser.add_argument("--image-sigmas", nargs="+", type=float,
                        help="score the run's own map as the pipeline would with these anomaly_map.image_sigma")
    args = parser.parse_args(argv)
    for path in args.ckpts:
        module = load_module(path)
        select_map.set_registration(module, args.max_shift)
        cfg = module.run_config
        items = select_map.test_part(cfg, args.part, 0.5, 0)
        precision = select_map.run_precision(cfg)
        if args.readout:
            if getattr(module.net, "memory", None) is None:
                parser.error(f"{path}: the model has no memory module")
            rows = [{"map": "readout", **scores_of(readout_maps(module, items, precision), items)}]
        elif args.image_sigmas:
            rows = image_sigma_variants(module, items, args.image_sigmas, precision)
        else:
            rows = map_variants(module, items, args.source or cfg["anomaly_map"]["source"], args.sigmas, precision)
        for row in rows:
            print(json.dumps({"ckpt": path, "part": args.part, **{k: (round(v, 4) if isinstance(v, float) else v)
                                                                  for k, v in row.items()}}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
