"""Checks of a dataset's folders and files, and the seeded hold-out split, shared by every datamodule."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .dataset import Sample
from .errors import DatasetError
from .io import image_size as file_image_size


def check_files(samples: Sequence[Sample], dataset: str = "dataset") -> None:
    """Every image and mask file is complete and readable, and what it claims to be (``checks.check_dataset``)."""
    from .checks import check_dataset

    check_dataset(samples, dataset)


def split_holdout(
    samples: Sequence[Sample], fraction: float, seed: int, salt: int = 0
) -> tuple[list[Sample], list[Sample]]:
    """Seeded (kept, held_out) split; holds out round(fraction·n), at least 1 and at most n−1."""
    samples = list(samples)
    n = len(samples)
    if fraction <= 0 or n < 2:
        return samples, []
    n_hold = min(max(1, int(round(fraction * n))), n - 1)
    held = set(np.random.default_rng([int(seed), salt]).permutation(n)[:n_hold].tolist())
    kept = [s for i, s in enumerate(samples) if i not in held]
    return kept, [s for i, s in enumerate(samples) if i in held]


def check_mask_sizes(samples: Sequence[Sample]) -> None:
    """Fail early (at setup, from file headers only) when a mask and its image differ in size."""
    for s in samples:
        if s.mask_path is None:
            continue
        img_size, mask_size = file_image_size(s.path), file_image_size(s.mask_path)
        if img_size != mask_size:
            raise DatasetError(
                f"Mask {s.mask_path} has size {mask_size[0]}x{mask_size[1]} (WxH) but "
                f"image {s.path} has size {img_size[0]}x{img_size[1]}"
            )


def resolve_category_dir(
    root: str | Path | None, category: str, official: Sequence[str], dataset: str, layout: str
) -> Path:
    """root/category, with errors that name the path and list what is actually there.

    Unofficial names are allowed when the folder exists (custom categories in the same layout).
    """
    if root is None or str(root).strip() == "":
        raise DatasetError(f"{dataset}: data.root is not set. Expected layout: {layout}")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetError(f"{dataset} root folder not found: {root}. Expected layout: {layout}")
    cat_dir = root / str(category)
    if cat_dir.is_dir():
        return cat_dir
    present = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    hint = ""
    if (root / "train").is_dir():
        hint = f" ({root} looks like a category folder itself: set data.root to its parent {root.parent})"
    raise DatasetError(
        f"{dataset} category {category!r} not found: no folder {cat_dir}.{hint} "
        f"Categories present under {root}: {present or 'none'}. "
        f"Official {dataset} categories: {list(official)}. Expected layout: {layout}"
    )


def require_images(folder: Path, what: str, lister: Callable[[Path], list[Path]]) -> list[Path]:
    """Images in `folder`, or a DatasetError naming the folder when it is missing or empty."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"{what} folder not found: {folder}")
    images = lister(folder)
    if not images:
        raise DatasetError(f"{what} folder {folder} contains no images (looked for .png/.jpg/.bmp/.tif)")
    return images
