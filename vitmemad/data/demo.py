"""A download-free demo dataset cut from texture photographs shipped with scikit-image.

`skimage.data.brick()`, `grass()` and `gravel()` are real 512×512 grayscale photos. The photo
is split into four 256×256 blocks in a checkerboard: training crops come from the top-left
and bottom-right blocks, test crops from the other two, so test crops are never seen in
training while both sets cover the top and bottom of the photo (the brick photo has
perspective). Defective test crops carry a synthetic defect with an exact mask:

- ``scratch``: a thin (2–4 px at 128 px crops) bright or dark curved line;
- ``spot``:    a stain: an ellipse whose texture is flattened and whose grey level moves 45–70 levels towards
               the nearer end of the photo's normal range (out of the range of every normal material);
- ``patch``:   a rectangle of a different texture (matched to the local mean and crop contrast),
               or, for brick, a 90°-rotated brick patch from elsewhere in the photo.

Defects cover roughly 1–6 % of the crop and change the grey level inside their mask by at
least 20 on average (fainter draws are redrawn). Everything is deterministic given `seed` and is
generated in memory once per parameter set (cached). `write_demo_dataset` writes the same
images to disk in the MVTec layout.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import skimage.data
from PIL import Image
from scipy import ndimage
from skimage.draw import bezier_curve, ellipse

from .base import AnomalyDataModule
from .dataset import NORMAL, AnomalyDataset, Sample
from .errors import DatasetError

DEMO_CATEGORIES = ("brick", "grass", "gravel")
DEMO_DEFECTS = ("scratch", "spot", "patch")
_FOREIGN = {"brick": "gravel", "grass": "brick", "gravel": "brick"}  # source texture of "patch"


@dataclass(frozen=True)
class DemoData:
    """Generated crops. `test` rows are (name, defect, image, mask or None); arrays are read-only."""

    category: str
    crop_size: int
    train: dict[str, np.ndarray]
    test: list[tuple[str, str, np.ndarray, np.ndarray | None]]
    clean: dict[str, np.ndarray] = field(default_factory=dict)  # defect-free version of defective crops
    positions: dict[str, tuple[int, int]] = field(default_factory=dict)  # (y, x) of each crop in the photo


def check_category(category: str) -> str:
    if category not in DEMO_CATEGORIES:
        raise DatasetError(f"Unknown demo category {category!r} (data.category); choose one of {list(DEMO_CATEGORIES)}")
    return category


@lru_cache(maxsize=None)
def _photo(category: str) -> np.ndarray:
    img = np.asarray(getattr(skimage.data, check_category(category))(), dtype=np.uint8)
    if img.ndim == 3:
        img = img[..., :3].mean(axis=2).round().astype(np.uint8)
    img.setflags(write=False)
    return img


def _blocks(photo: np.ndarray) -> tuple[list[tuple[int, int]], list[tuple[int, int]], int]:
    """Checkerboard of 2×2 blocks: (train block origins, test block origins, block size)."""
    b = min(photo.shape) // 2
    return [(0, 0), (b, b)], [(0, b), (b, 0)], b


def _crop(photo: np.ndarray, blocks, block: int, size: int, rng) -> tuple[np.ndarray, tuple[int, int]]:
    by, bx = blocks[int(rng.integers(len(blocks)))]
    y = by + int(rng.integers(0, block - size + 1))
    x = bx + int(rng.integers(0, block - size + 1))
    return photo[y:y + size, x:x + size].astype(np.float64), (y, x)


def _scratch(img: np.ndarray, rng, category: str) -> np.ndarray:
    c = img.shape[0]
    width = max(1, int(round(int(rng.integers(2, 5)) * c / 128)))
    length = rng.uniform(0.5, 0.85) * c
    angle = rng.uniform(0, np.pi)
    cy, cx = rng.uniform(0.35, 0.65, size=2) * c
    dy, dx = np.sin(angle) * length / 2, np.cos(angle) * length / 2
    bend = rng.uniform(-0.25, 0.25) * length
    pts = np.array([[cy - dy, cx - dx], [cy + bend * np.cos(angle), cx - bend * np.sin(angle)], [cy + dy, cx + dx]])
    pts = np.clip(np.rint(pts), 2, c - 3).astype(int)
    rr, cc = bezier_curve(*pts[0], *pts[1], *pts[2], weight=1.0, shape=img.shape)
    mask = np.zeros(img.shape, bool)
    mask[rr, cc] = True
    mask = ndimage.binary_dilation(mask, structure=np.ones((width, width), bool))
    target = 245.0 if rng.random() < 0.5 else 15.0
    img[mask] = 0.15 * img[mask] + 0.85 * target
    return mask


@lru_cache(maxsize=None)
def _normal_range(category: str) -> tuple[float, float]:
    """The photo's 2nd and 98th grey-level percentiles: the range its normal materials span."""
    lo, hi = np.percentile(_photo(category), [2, 98])
    return float(lo), float(hi)


def _spot(img: np.ndarray, rng, category: str) -> np.ndarray:
    """A stain: texture flattened, grey level pushed towards the nearer end of the photo's normal range.

    Pushing towards the nearer end moves the stain out of (or to the edge of) the normal range. A shift in
    the other direction could land on another normal material's grey level (a darkened mortar spot looks
    like brick), which no detector should be asked to flag.
    """
    c = img.shape[0]
    a, b = rng.uniform(0.06, 0.14, size=2) * c
    r, col = rng.uniform(0.25, 0.75, size=2) * c
    mask = np.zeros(img.shape, bool)
    mask[ellipse(r, col, a, b, shape=img.shape, rotation=rng.uniform(-np.pi, np.pi))] = True
    region = img[mask]
    m = region.mean()
    lo, hi = _normal_range(category)
    sign = -1.0 if m - lo < hi - m else 1.0
    img[mask] = np.clip(m + 0.5 * (region - m) + sign * rng.uniform(45, 70), 0, 255)
    return mask


def _patch(img: np.ndarray, rng, category: str) -> np.ndarray:
    c = img.shape[0]
    side, aspect = rng.uniform(0.14, 0.25) * c, rng.uniform(0.7, 1.4)
    h = int(min(c - 4, round(side * np.sqrt(aspect))))
    w = int(min(c - 4, round(side / np.sqrt(aspect))))
    y, x = int(rng.integers(2, c - h - 1)), int(rng.integers(2, c - w - 1))
    if category == "brick" and rng.random() < 0.5:  # same texture, courses turned 90°
        src_photo, rotate = _photo(category), True
    else:
        src_photo, rotate = _photo(_FOREIGN[category]), False
    sh, sw = (w, h) if rotate else (h, w)
    sy = int(rng.integers(0, src_photo.shape[0] - sh + 1))
    sx = int(rng.integers(0, src_photo.shape[1] - sw + 1))
    src = src_photo[sy:sy + sh, sx:sx + sw].astype(np.float64)
    if rotate:
        src = np.rot90(src)
    else:  # keep local brightness and the crop's contrast so the anomaly is texture, not brightness
        target = img[y:y + h, x:x + w]
        src = (src - src.mean()) / (src.std() + 1e-6) * max(img.std(), 1.0) + target.mean()
    img[y:y + h, x:x + w] = np.clip(src, 0, 255)
    mask = np.zeros(img.shape, bool)
    mask[y:y + h, x:x + w] = True
    return mask


_MIN_CONTRAST = 20.0  # mean |grey-level change| inside a defect's mask
_MAX_TRIES = 20
_DEFECT_FUNCS = {"scratch": _scratch, "spot": _spot, "patch": _patch}


def _readonly(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a)
    a.setflags(write=False)
    return a


@lru_cache(maxsize=8)
def generate_demo(category: str = "brick", seed: int = 0, crop_size: int = 128, n_train: int = 160,
                  n_test_good: int = 40, n_test_defect: int = 40) -> DemoData:
    """Generate (once per argument set) the demo crops; defect types cycle scratch/spot/patch."""
    photo = _photo(check_category(category))
    train_blocks, test_blocks, block = _blocks(photo)
    if not 16 <= crop_size <= block:
        raise DatasetError(f"Demo crop_size must be in [16, {block}], got {crop_size}")
    if n_train < 1 or n_test_good < 1 or n_test_defect < 1:
        raise DatasetError("Demo counts n_train, n_test_good and n_test_defect must all be >= 1")
    rng = np.random.default_rng([int(seed), DEMO_CATEGORIES.index(category)])
    u8 = lambda a: _readonly(np.clip(np.rint(a), 0, 255).astype(np.uint8))  # noqa: E731
    prefix = f"demo/{category}"
    data = DemoData(category, crop_size, {}, [])
    for i in range(n_train):
        crop, pos = _crop(photo, train_blocks, block, crop_size, rng)
        name = f"{prefix}/train/{NORMAL}_{i:03d}"
        data.train[name], data.positions[name] = u8(crop), pos
    for i in range(n_test_good):
        crop, pos = _crop(photo, test_blocks, block, crop_size, rng)
        name = f"{prefix}/test/{NORMAL}_{i:03d}"
        data.test.append((name, NORMAL, u8(crop), None))
        data.positions[name] = pos
    counts = dict.fromkeys(DEMO_DEFECTS, 0)
    for i in range(n_test_defect):
        defect = DEMO_DEFECTS[i % len(DEMO_DEFECTS)]
        crop, pos = _crop(photo, test_blocks, block, crop_size, rng)
        clean = u8(crop)
        for _ in range(_MAX_TRIES):  # redraw defects that would be nearly invisible
            defective = crop.copy()
            mask = _DEFECT_FUNCS[defect](defective, rng, category)  # edits `defective` in place
            if np.abs(np.rint(defective[mask]) - clean[mask]).mean() >= _MIN_CONTRAST:
                break
        crop = defective
        name = f"{prefix}/test/{defect}_{counts[defect]:03d}"
        counts[defect] += 1
        data.test.append((name, defect, u8(crop), _readonly(mask.astype(np.uint8))))
        data.clean[name], data.positions[name] = clean, pos
    return data


class _DemoReader:
    """Picklable in-memory reader (images and masks) for AnomalyDataset."""

    def __init__(self, data: DemoData) -> None:
        self.images = {**data.train, **{name: img for name, _, img, _ in data.test}}
        self.masks = {name: m for name, _, _, m in data.test if m is not None}

    def image(self, sample: Sample) -> Image.Image:
        return Image.fromarray(self.images[sample.path])

    def mask(self, sample: Sample) -> np.ndarray:
        return self.masks[sample.mask_path]


class DemoDataModule(AnomalyDataModule):
    """Demo textures (no files, no download). `n_train` counts train+val crops; val is held out.

    `root` is accepted and ignored so a shared `data.root` key does not break instantiation.
    `augment=True` enables random horizontal and vertical flips.
    """

    flips = "hv"
    verify_files = False  # in memory: no files to check

    def __init__(self, category: str = "brick", *, image_size: int = 128, batch_size: int = 8,
                 crop_size: int = 128, n_train: int = 160, n_test_good: int = 40, n_test_defect: int = 40,
                 root: str | Path | None = None, **kwargs) -> None:
        super().__init__(image_size=image_size, batch_size=batch_size, **kwargs)
        self.category = check_category(str(category))
        self.counts = dict(crop_size=int(crop_size), n_train=int(n_train), n_test_good=int(n_test_good),
                           n_test_defect=int(n_test_defect))

    @property
    def data(self) -> DemoData:
        return generate_demo(self.category, self.seed, **self.counts)

    def _collect(self) -> tuple[list[Sample], list[Sample]]:
        data = self.data
        train = [Sample(name, 0, NORMAL) for name in data.train]
        test = [Sample(name, int(m is not None), defect, name if m is not None else None)
                for name, defect, _, m in data.test]
        return train, test

    def _dataset(self, samples: list[Sample], train: bool) -> AnomalyDataset:
        reader = _DemoReader(self.data)
        return AnomalyDataset(samples, self.image_size, cache=self.cache,
                              flips=self.flips if (train and self.augment) else "",
                              read_image=reader.image, read_mask=reader.mask)


def write_demo_dataset(out_dir: str | Path, category: str = "brick", seed: int = 0, *, crop_size: int = 128,
                       n_train: int = 160, n_test_good: int = 40, n_test_defect: int = 40) -> Path:
    """Write the demo set to out_dir/<category>/ in the MVTec layout and return that folder.

    Afterwards `MVTecDataModule(root=out_dir, category=category)` loads exactly the same images.
    """
    data = generate_demo(category, seed, crop_size, n_train, n_test_good, n_test_defect)
    root = Path(out_dir) / category

    def save(arr: np.ndarray, rel: str) -> None:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(path)

    for name, img in data.train.items():
        save(img, f"train/{NORMAL}/{name.rsplit('_', 1)[1]}.png")
    for name, defect, img, mask in data.test:
        idx = name.rsplit("_", 1)[1]
        save(img, f"test/{defect}/{idx}.png")
        if mask is not None:
            save((mask * 255).astype(np.uint8), f"ground_truth/{defect}/{idx}_mask.png")
    return root


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write the demo dataset in the MVTec layout.")
    parser.add_argument("out_dir")
    parser.add_argument("--category", default="brick", choices=DEMO_CATEGORIES)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--crop-size", type=int, default=128)
    args = parser.parse_args(argv)
    print(write_demo_dataset(args.out_dir, args.category, args.seed, crop_size=args.crop_size))


if __name__ == "__main__":
    main()
