"""Data-loader images/s of the demo and of MVTec bottle, against the matching preset's training images/s."""
from __future__ import annotations

from typing import Any

from .measure import SHARED, timed
from .variants import PRESETS

MVTEC_ROOT = SHARED / "data" / "mvtec"


def loader_figures(dm) -> dict[str, Any]:
    """Train-loader images/s: the first epoch decodes + resizes (and fills the cache), later ones are cached."""
    setup_s = timed(lambda: dm.setup("fit"))
    n = len(dm.train_dataset)

    def epoch() -> None:
        for _ in dm.train_dataloader():
            pass

    first = timed(epoch)
    cached = min(timed(epoch) for _ in range(2))
    return {"images": n, "image_size": dm.image_size, "batch": dm.batch_size, "setup_s": setup_s,
            "first_epoch_images_per_s": n / first, "cached_epoch_images_per_s": n / cached,
            "cache_speedup": first / cached}


def loader_section(results: dict[str, Any]) -> dict[str, Any]:
    from vitmemad.data import DemoDataModule, MVTecDataModule

    def vs_model(fig: dict[str, Any], preset: str) -> dict[str, Any]:
        train = results.get(preset, {}).get("train_images_per_s")
        if train:
            fig["model_preset"] = preset
            fig["model_train_images_per_s"] = train
            fig["first_epoch_over_model"] = fig["first_epoch_images_per_s"] / train
            fig["cached_over_model"] = fig["cached_epoch_images_per_s"] / train
        return fig

    batch_cpu, batch_paper = PRESETS["vitmemad_cpu"][1], 8  # the paper preset's training batch
    out: dict[str, Any] = {"demo_128": vs_model(loader_figures(DemoDataModule(image_size=128, batch_size=batch_cpu)),
                                                "vitmemad_cpu")}
    if (MVTEC_ROOT / "bottle" / "train" / "good").is_dir():
        out["mvtec_bottle_128"] = vs_model(
            loader_figures(MVTecDataModule(root=MVTEC_ROOT, category="bottle", image_size=128, batch_size=batch_cpu)),
            "vitmemad_cpu")
        out["mvtec_bottle_384"] = vs_model(
            loader_figures(MVTecDataModule(root=MVTEC_ROOT, category="bottle", image_size=384, batch_size=batch_paper)),
            "vitmemad_paper")
    else:
        out["mvtec"] = f"skipped: {MVTEC_ROOT / 'bottle'} not found"
    return out
