"""BTAD (beanTech Anomaly Detection) as a LightningDataModule.

Layout: root/NN/train/ok, root/NN/test/ok, root/NN/test/ko, root/NN/ground_truth/ko.
Normal items get defect "good" (as in every dataset here), anomalous ones "ko".
"""
from __future__ import annotations

import logging
from pathlib import Path

from .base import AnomalyDataModule
from .dataset import NORMAL, Sample
from .layout import check_mask_sizes, require_images, resolve_category_dir
from .errors import DatasetError
from .io import find_mask, list_images

log = logging.getLogger(__name__)

BTAD_PRODUCTS = ("01", "02", "03")
BTAD_LAYOUT = (
    "<root>/<NN>/train/ok/*.bmp|png, <root>/<NN>/test/ok/*, <root>/<NN>/test/ko/*, "
    "<root>/<NN>/ground_truth/ko/<stem>.png (or <stem>_mask.png)"
)


def normalize_product(category: str | int) -> str:
    """BTAD product as a two-digit string; YAML reads an unquoted 01 as the int 1."""
    if isinstance(category, int) and not isinstance(category, bool):
        fixed = f"{category:02d}"
        log.warning("BTAD category given as the number %r; using the product string %r "
                    "(quote it in YAML: category: \"%s\").", category, fixed, fixed)
        return fixed
    text = str(category).strip()
    if text.isdigit() and len(text) == 1:
        log.warning("BTAD category %r zero-padded to %r.", text, text.zfill(2))
        return text.zfill(2)
    return text


def collect_btad(product_dir: Path) -> tuple[list[Sample], list[Sample]]:
    train = [Sample(str(p), 0, NORMAL)
             for p in require_images(product_dir / "train" / "ok", "BTAD training", list_images)]
    test = [Sample(str(p), 0, NORMAL)
            for p in require_images(product_dir / "test" / "ok", "BTAD normal test", list_images)]
    gt_dir = product_dir / "ground_truth" / "ko"
    for img in require_images(product_dir / "test" / "ko", "BTAD anomalous test", list_images):
        mask = find_mask(gt_dir, img.stem)
        if mask is None:
            raise DatasetError(
                f"No ground-truth mask for anomalous test image {img}: expected "
                f"{gt_dir / (img.stem + '.png')} or {gt_dir / (img.stem + '_mask.png')}"
            )
        test.append(Sample(str(img), 1, "ko", str(mask)))
    check_mask_sizes(test)
    return train, test


class BTADDataModule(AnomalyDataModule):
    """One BTAD product ("01", "02", "03"; other existing folders in the same layout work too).

    `augment=True` enables random horizontal flips only.
    """

    flips = "h"

    def __init__(self, root: str | Path, category: str | int = "01", *, image_size: int = 256,
                 batch_size: int = 8, **kwargs) -> None:
        super().__init__(image_size=image_size, batch_size=batch_size, **kwargs)
        self.root = root
        self.category = normalize_product(category)

    def _collect(self) -> tuple[list[Sample], list[Sample]]:
        product_dir = resolve_category_dir(self.root, self.category, BTAD_PRODUCTS, "BTAD", BTAD_LAYOUT)
        return collect_btad(product_dir)
