"""Users' own images in plain folders as a LightningDataModule.

- normal_dir: normal images (files directly inside; subfolders are ignored).
- abnormal_dir: optional; anomalous images, directly inside (defect "abnormal") and/or in one
  level of subfolders (defect = subfolder name). Without it the model trains on normal_dir alone
  (validation and thresholds come from its held-out normal images) and there is nothing to test
  (``has_anomalies`` is False) until ``vitmemad.eval ckpt_path=... data.abnormal_dir=DIR``.
- normal_test_dir: normal test images. If omitted, a seeded `test_fraction` hold-out of
  normal_dir becomes the normal part of the test set (it is removed from training first;
  the validation hold-out is then taken from what remains). The split does not depend on
  abnormal_dir, so testing later holds out exactly the images that training did not see.
- mask_dir: optional; the mask of image <stem> is <stem>.png or <stem>_mask.png, looked up
  first under mask_dir/<subfolder>/ (same relative place) and then directly in mask_dir.
  Without it, labels come from the folders, masks are all zeros and `has_masks` is False.
- root: optional; relative folder paths are taken under it (so `data.root` works here too).
`augment=True` enables random horizontal flips only.
"""
from __future__ import annotations

from pathlib import Path

from .base import AnomalyDataModule
from .dataset import NORMAL, Sample
from .layout import check_mask_sizes, require_images, split_holdout
from .errors import DatasetError
from .io import find_mask, list_images

ABNORMAL = "abnormal"


def _abnormal_images(folder: Path) -> list[tuple[Path, str]]:
    """(image, defect) pairs from folder/ and its immediate subfolders, in sorted order."""
    found = [(p, ABNORMAL) for p in list_images(folder)]
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        found += [(p, sub.name) for p in list_images(sub)]
    return found


class FolderDataModule(AnomalyDataModule):
    """Normal / abnormal folders (and optional masks) → train/val/test datasets."""

    flips = "h"

    def __init__(
        self,
        normal_dir: str | Path | None = None,
        abnormal_dir: str | Path | None = None,
        mask_dir: str | Path | None = None,
        normal_test_dir: str | Path | None = None,
        *,
        test_fraction: float = 0.2,
        category: str | None = None,
        image_size: int = 256,
        batch_size: int = 8,
        root: str | Path | None = None,
        **kwargs,
    ) -> None:
        super().__init__(image_size=image_size, batch_size=batch_size, **kwargs)
        base = Path(root).expanduser() if root else None

        def resolve(p: str | Path | None) -> Path | None:  # relative dirs are taken under `root`
            if p is None:
                return None
            return base / p if base is not None and not Path(p).is_absolute() else Path(p).expanduser()

        self.normal_dir = resolve(normal_dir)
        self.abnormal_dir = resolve(abnormal_dir)
        self.mask_dir = resolve(mask_dir)
        self.normal_test_dir = resolve(normal_test_dir)
        if not 0.0 < float(test_fraction) < 1.0 and normal_test_dir is None:
            raise DatasetError(f"data.test_fraction must be in (0, 1) without normal_test_dir, got {test_fraction!r}")
        self.test_fraction = float(test_fraction)
        self.has_masks = mask_dir is not None
        self.category = category or (self.normal_dir.parent.name if self.normal_dir else "folder") or "folder"

    def _collect(self) -> tuple[list[Sample], list[Sample]]:
        if self.normal_dir is None:
            raise DatasetError("data=folder needs data.normal_dir: the folder of normal (good) images to train on")
        normals = [Sample(str(p), 0, NORMAL) for p in require_images(self.normal_dir, "Normal", list_images)]
        if self.normal_test_dir is not None:
            train = normals
            test = [Sample(str(p), 0, NORMAL)
                    for p in require_images(self.normal_test_dir, "Normal test", list_images)]
        else:
            if len(normals) < 2:
                raise DatasetError(f"Normal folder {self.normal_dir} needs at least 2 images to hold out "
                                   f"normal test images (or set normal_test_dir)")
            train, test = split_holdout(normals, self.test_fraction, self.seed, salt=2)
        if self.mask_dir is not None and not self.mask_dir.is_dir():
            raise DatasetError(f"Mask folder not found: {self.mask_dir}")
        if self.abnormal_dir is None:
            if self.mask_dir is not None:
                raise DatasetError(f"data.mask_dir={self.mask_dir} needs data.abnormal_dir (the images it masks)")
            return train, test
        require_images(self.abnormal_dir, "Abnormal", lambda d: [p for p, _ in _abnormal_images(d)])
        for img, defect in _abnormal_images(self.abnormal_dir):
            test.append(Sample(str(img), 1, defect, self._mask_for(img, defect)))
        check_mask_sizes(test)
        return train, test

    def _mask_for(self, img: Path, defect: str) -> str | None:
        if self.mask_dir is None:
            return None
        places = [self.mask_dir / defect, self.mask_dir] if defect != ABNORMAL else [self.mask_dir]
        for place in places:
            mask = find_mask(place, img.stem)
            if mask is not None:
                return str(mask)
        raise DatasetError(
            f"No mask for anomalous image {img}: expected {places[-1] / (img.stem + '.png')} or "
            f"{places[-1] / (img.stem + '_mask.png')}"
            + (f" (or the same under {places[0]})" if len(places) > 1 else "")
        )
