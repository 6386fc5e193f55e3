"""MVTec AD (official folder layout) as a LightningDataModule."""
from __future__ import annotations

from pathlib import Path

from .base import AnomalyDataModule
from .dataset import NORMAL, Sample
from .layout import check_mask_sizes, require_images, resolve_category_dir
from .errors import DatasetError
from .io import find_mask, list_images

MVTEC_CATEGORIES = (
    "bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut",
    "pill", "screw", "tile", "toothbrush", "transistor", "wood", "zipper",
)
#: Texture categories: flips do not create anomalies there, so augment=True may use them.
MVTEC_TEXTURES = ("carpet", "grid", "leather", "tile", "wood")

MVTEC_LAYOUT = (
    "<root>/<category>/train/good/*.png, <root>/<category>/test/<defect>/*.png "
    "(normal test images in test/good), <root>/<category>/ground_truth/<defect>/<id>_mask.png"
)


def collect_mvtec(category_dir: Path) -> tuple[list[Sample], list[Sample]]:
    """(normal train samples, test samples) from one category folder in the official layout."""
    train = [
        Sample(str(p), 0, NORMAL)
        for p in require_images(category_dir / "train" / "good", "MVTec training", list_images)
    ]
    test_dir = category_dir / "test"
    if not test_dir.is_dir():
        raise DatasetError(f"MVTec test folder not found: {test_dir}. Expected layout: {MVTEC_LAYOUT}")
    test: list[Sample] = []
    for defect_dir in sorted(p for p in test_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for img in list_images(defect_dir):
            if defect_dir.name == NORMAL:
                test.append(Sample(str(img), 0, NORMAL))
                continue
            gt_dir = category_dir / "ground_truth" / defect_dir.name
            mask = find_mask(gt_dir, img.stem)
            if mask is None:
                raise DatasetError(
                    f"No ground-truth mask for anomalous test image {img}: expected "
                    f"{gt_dir / (img.stem + '_mask.png')}"
                )
            test.append(Sample(str(img), 1, defect_dir.name, str(mask)))
    if not test:
        raise DatasetError(f"MVTec test folder {test_dir} contains no images in <defect>/ subfolders")
    check_mask_sizes(test)
    return train, test


class MVTecDataModule(AnomalyDataModule):
    """One MVTec AD category. Unofficial category names work when the folder exists.

    `augment=True` flips textures horizontally and vertically; objects are left unaugmented
    because a flip can itself be an anomaly (e.g. metal_nut "flip", transistor "misplaced").
    """

    def __init__(self, root: str | Path, category: str = "bottle", *, image_size: int = 256,
                 batch_size: int = 8, **kwargs) -> None:
        super().__init__(image_size=image_size, batch_size=batch_size, **kwargs)
        self.root = root
        self.category = str(category)
        self.flips = "hv" if self.category in MVTEC_TEXTURES else ""

    def _collect(self) -> tuple[list[Sample], list[Sample]]:
        cat_dir = resolve_category_dir(self.root, self.category, MVTEC_CATEGORIES, "MVTec AD", MVTEC_LAYOUT)
        return collect_mvtec(cat_dir)
