"""Tiny on-disk datasets (MVTec, BTAD, plain folders) written with PIL for the data tests.

Other tests may reuse them: `make_mvtec(tmp_path)` returns a root usable as
`MVTecDataModule(root=..., category="widget")`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def write_image(path: Path, arr: np.ndarray, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(arr)
    if mode is not None:
        img = img.convert(mode)
    img.save(path)
    return path


def noise(rng: np.random.Generator, size: tuple[int, int], gray: bool = False) -> np.ndarray:
    shape = size if gray else (*size, 3)
    return rng.integers(0, 256, shape, dtype=np.uint8)


def square_mask(size: tuple[int, int], value: int = 255) -> np.ndarray:
    m = np.zeros(size, np.uint8)
    m[size[0] // 4: size[0] // 2, size[1] // 4: size[1] // 2] = value
    return m


def make_mvtec(root: Path, category: str = "widget", n_train: int = 10, n_good: int = 3,
               defects: dict[str, int] | None = None, size: tuple[int, int] = (40, 48),
               gray: bool = False, seed: int = 0) -> Path:
    """root/category/{train/good, test/<defect>, ground_truth/<defect>/<id>_mask.png}; returns root."""
    rng = np.random.default_rng(seed)
    defects = {"crack": 2, "hole": 1} if defects is None else defects
    cat = root / category
    for i in range(n_train):
        write_image(cat / "train" / "good" / f"{i:03d}.png", noise(rng, size, gray))
    for i in range(n_good):
        write_image(cat / "test" / "good" / f"{i:03d}.png", noise(rng, size, gray))
    for defect, n in defects.items():
        for i in range(n):
            write_image(cat / "test" / defect / f"{i:03d}.png", noise(rng, size, gray))
            write_image(cat / "ground_truth" / defect / f"{i:03d}_mask.png", square_mask(size))
    return root


def make_btad(root: Path, product: str = "01", n_train: int = 6, n_ok: int = 2, n_ko: int = 2,
              size: tuple[int, int] = (36, 36), ext: str = ".bmp", mask_suffix: str = "", seed: int = 0) -> Path:
    """root/NN/{train/ok, test/ok, test/ko, ground_truth/ko/<stem><mask_suffix>.png}; returns root."""
    rng = np.random.default_rng(seed)
    d = root / product
    for i in range(n_train):
        write_image(d / "train" / "ok" / f"{i:04d}{ext}", noise(rng, size))
    for i in range(n_ok):
        write_image(d / "test" / "ok" / f"{i:04d}{ext}", noise(rng, size))
    for i in range(n_ko):
        write_image(d / "test" / "ko" / f"{i:04d}{ext}", noise(rng, size))
        write_image(d / "ground_truth" / "ko" / f"{i:04d}{mask_suffix}.png", square_mask(size))
    return root


def make_folder(root: Path, n_normal: int = 10, n_abnormal: int = 3, size: tuple[int, int] = (30, 30),
                masks: bool = True, seed: int = 0) -> dict[str, Path]:
    """root/{normal, abnormal, masks}; mask of abnormal/<stem>.jpg alternates <stem>.png / <stem>_mask.png."""
    rng = np.random.default_rng(seed)
    dirs = {"normal_dir": root / "normal", "abnormal_dir": root / "abnormal"}
    for i in range(n_normal):
        write_image(dirs["normal_dir"] / f"n{i:02d}.png", noise(rng, size))
    for i in range(n_abnormal):
        write_image(dirs["abnormal_dir"] / f"a{i:02d}.jpg", noise(rng, size))
        if masks:
            suffix = "" if i % 2 == 0 else "_mask"
            write_image(root / "masks" / f"a{i:02d}{suffix}.png", square_mask(size))
    if masks:
        dirs["mask_dir"] = root / "masks"
    return dirs
