"""Data files checked at set-up for what they claim to be: masks, EXIF orientation, image shapes."""
from __future__ import annotations

import logging

import numpy as np
import pytest
from PIL import Image

from fixtures_data import make_folder, make_mvtec, square_mask, write_image
from test_predict import write_rotated_jpeg
from vitmemad.data import FolderDataModule, MVTecDataModule
from vitmemad.data.io import LOSSY_MASK_THRESHOLD, load_mask

SIZE = (40, 48)


def setup_warnings(datamodule, caplog) -> list[str]:
    with caplog.at_level(logging.WARNING, logger="vitmemad.data"):
        datamodule.setup("fit")
    return [r.getMessage() for r in caplog.records if r.name.startswith("vitmemad.data")]


def mvtec(root) -> MVTecDataModule:
    return MVTecDataModule(root, "widget", image_size=32, batch_size=2)


def test_jpeg_masks_are_binarised_at_half_level_with_one_warning(tmp_path, caplog):
    root = make_mvtec(tmp_path, defects={"crack": 3})
    gt = root / "widget" / "ground_truth" / "crack"
    for png in sorted(gt.glob("*.png")):
        Image.fromarray(square_mask(SIZE)).save(png.with_suffix(".jpg"), quality=75)
        png.unlink()
    jpeg = gt / "000_mask.jpg"
    noisy = np.asarray(Image.open(jpeg).convert("L"))
    assert (noisy > 0).sum() > (square_mask(SIZE) > 0).sum()  # JPEG noise: > 0 would add defect area
    assert np.array_equal(load_mask(jpeg), (square_mask(SIZE) > 0).astype(np.uint8))
    warnings = setup_warnings(mvtec(root), caplog)
    assert len(warnings) == 1 and "3 mask(s) in a lossy format" in warnings[0] and str(jpeg) in warnings[0]
    assert f">= {LOSSY_MASK_THRESHOLD}" in warnings[0]


def test_multi_level_and_all_zero_masks_get_one_warning_each(tmp_path, caplog):
    root = make_mvtec(tmp_path, defects={"crack": 2, "hole": 2})
    gt = root / "widget" / "ground_truth"
    levels = square_mask(SIZE)
    levels[10:12, 12:14] = 128  # an anti-aliased edge
    write_image(gt / "crack" / "001_mask.png", levels)
    write_image(gt / "hole" / "000_mask.png", levels)
    write_image(gt / "hole" / "001_mask.png", np.zeros(SIZE, np.uint8))
    warnings = setup_warnings(mvtec(root), caplog)
    assert len(warnings) == 2, warnings
    assert "2 mask(s) hold values other than 0 and one positive level" in warnings[0]
    assert str(gt / "crack" / "001_mask.png") in warnings[0] and "0, 128, 255" in warnings[0]
    assert "1 anomalous image(s) have an all-zero mask" in warnings[1] and str(gt / "hole" / "001_mask.png") in \
        warnings[1]


def test_clean_masks_give_no_warning(tmp_path, caplog):
    assert setup_warnings(mvtec(make_mvtec(tmp_path)), caplog) == []


def test_exif_orientation_applies_to_training_and_test_images_and_their_masks(tmp_path):
    """A JPEG stored on its side with EXIF orientation 6, and its mask drawn on the image as viewers show it."""
    root = make_mvtec(tmp_path, defects={"crack": 1})
    upright = np.zeros((*SIZE, 3), np.uint8)
    upright[:10] = 255  # bright top band
    image = root / "widget" / "test" / "crack" / "000.png"
    image.unlink()
    write_rotated_jpeg(image.with_suffix(".jpg"), upright)
    mask = np.zeros(SIZE, np.uint8)
    mask[:10] = 255  # the defect is the band
    write_image(root / "widget" / "ground_truth" / "crack" / "000_mask.png", mask)
    train_image = root / "widget" / "train" / "good" / "000.png"
    train_image.unlink()
    write_rotated_jpeg(train_image.with_suffix(".jpg"), upright)

    dm = MVTecDataModule(root, "widget", image_size=SIZE[1], batch_size=2, val_fraction=0.0)
    dm.setup("fit")  # the mask fits the upright image: no size error
    item = next(dm.test_dataset[i] for i in range(len(dm.test_dataset)) if dm.test_dataset.samples[i].label)
    shown = item["image"].mean(0)
    assert tuple(item["mask"].shape) == SIZE
    top, bottom = shown[:4].mean(), shown[-16:].mean()
    assert top > bottom + 1.0  # the band is at the top, where the mask says
    assert item["mask"][:10].all() and not item["mask"][10:].any()
    train = next(dm.train_dataset[i] for i in range(len(dm.train_dataset))
                 if dm.train_dataset.samples[i].path.endswith(".jpg"))
    assert train["image"].mean(0)[:4].mean() > train["image"].mean(0)[-16:].mean() + 1.0


@pytest.mark.parametrize("size, kinds", [((8, 8), ["smaller than 32 px"]), ((40, 400), ["more elongated than 4:1"]),
                                         ((20, 400), ["smaller than 32 px", "more elongated than 4:1"])])
def test_tiny_and_elongated_images_warn_once_with_a_count(tmp_path, caplog, size, kinds):
    dirs = make_folder(tmp_path, size=(40, 40))
    for path in sorted(dirs["normal_dir"].glob("*.png"))[:3]:
        write_image(path, np.full((*size, 3), 100, np.uint8))
    dm = FolderDataModule(**dirs, image_size=32, batch_size=2)
    warnings = setup_warnings(dm, caplog)
    assert len(warnings) == len(kinds), warnings
    for warning, kind in zip(warnings, kinds):
        assert f"3 image(s) are {kind}" in warning and f"{size[1]}x{size[0]}" in warning
