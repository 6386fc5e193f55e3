"""Dataset items, collation, and the LightningDataModule logic every dataset shares.

A concrete datamodule only lists its samples (`_collect`): normal training images and
labelled test images. Everything else — the seeded validation hold-out taken from the
normal TRAIN images (never from the test set), decoding, caching, resizing, augmentation
and the DataLoaders — lives here so that all datasets behave identically.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence, Sized

import lightning as L
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, RandomSampler

from .errors import DatasetError
from .io import image_size as file_image_size
from .io import load_image, load_mask
from .transforms import resize_rgb_uint8, uint8_to_input

log = logging.getLogger(__name__)

#: `defect` name of normal images in every dataset.
NORMAL = "good"


@dataclass(frozen=True)
class Sample:
    """One image: where it is, its label, its defect type, and its mask (None = all zeros)."""

    path: str
    label: int
    defect: str
    mask_path: str | None = None


def collate(batch: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack images and labels; stack masks only when they share a shape (else keep a list)."""
    masks = [item["mask"] for item in batch]
    same_shape = all(m.shape == masks[0].shape for m in masks)
    return {
        "image": torch.stack([item["image"] for item in batch]),
        "mask": torch.stack(masks) if same_shape else masks,
        "label": torch.tensor([int(item["label"]) for item in batch], dtype=torch.long),
        "defect": [item["defect"] for item in batch],
        "path": [item["path"] for item in batch],
    }


def read_image_file(sample: Sample) -> Image.Image:
    return load_image(sample.path)


def read_mask_file(sample: Sample) -> np.ndarray:
    return load_mask(sample.mask_path)


def _random_flips(x: torch.Tensor, flips: str) -> torch.Tensor:
    if "h" in flips and torch.rand(()) < 0.5:
        x = x.flip(-1)
    if "v" in flips and torch.rand(()) < 0.5:
        x = x.flip(-2)
    return x


class AnomalyDataset(Dataset):
    """Samples → item dicts (see package docs), optionally caching decoded, resized images.

    `read_image(sample) -> PIL.Image` and `read_mask(sample) -> uint8 array` default to files;
    the demo passes in-memory readers. `flips` ("", "h" or "hv") enables random flips (train only).
    The cache is per process: with num_workers > 0 each (persistent) worker keeps its own.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        image_size: int,
        *,
        cache: bool = True,
        flips: str = "",
        read_image: Callable[[Sample], Image.Image] | None = None,
        read_mask: Callable[[Sample], np.ndarray] | None = None,
    ) -> None:
        self.samples = list(samples)
        self.image_size = int(image_size)
        self.cache = cache
        self.flips = flips
        # module-level defaults (not lambdas) keep the dataset picklable for spawn/forkserver workers
        self._read_image = read_image or read_image_file
        self._read_mask = read_mask or read_mask_file
        self._images: dict[int, tuple[torch.Tensor, tuple[int, int]]] = {}
        self._masks: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.samples)

    def _image(self, index: int) -> tuple[torch.Tensor, tuple[int, int]]:
        """uint8 (3, S, S) and the native (H0, W0)."""
        if index in self._images:
            return self._images[index]
        img = self._read_image(self.samples[index])
        out = (resize_rgb_uint8(img, self.image_size), (img.height, img.width))
        if self.cache:
            self._images[index] = out
        return out

    def _mask(self, index: int, native: tuple[int, int]) -> torch.Tensor:
        sample = self.samples[index]
        if sample.mask_path is None:
            return torch.zeros(native, dtype=torch.uint8)
        if index in self._masks:
            return self._masks[index]
        mask = self._read_mask(sample)
        if tuple(mask.shape) != tuple(native):
            raise DatasetError(
                f"Mask {sample.mask_path} has size {mask.shape[1]}x{mask.shape[0]} (WxH) but "
                f"image {sample.path} has size {native[1]}x{native[0]}"
            )
        out = torch.from_numpy(np.array(mask, dtype=np.uint8, copy=True))  # own, writable copy
        if self.cache:
            self._masks[index] = out
        return out

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.samples[index]
        img, native = self._image(index)
        image = uint8_to_input(img)
        if self.flips:
            image = _random_flips(image, self.flips)
        return {
            "image": image,
            "mask": self._mask(index, native),
            "label": sample.label,
            "defect": sample.defect,
            "path": sample.path,
        }


class EpochRandomSampler(RandomSampler):
    """A shuffle that depends only on (seed, epoch), so a run resumed from an epoch-end checkpoint
    sees exactly the batches an uninterrupted run sees.

    Lightning calls ``set_epoch`` before every training epoch; a loader iterated without it moves
    on to the next epoch's order on each pass. Under DDP Lightning swaps any ``RandomSampler`` for a
    ``DistributedSampler``, which is seeded by (seed, epoch) as well.
    """

    def __init__(self, data_source: Sized, seed: int) -> None:
        super().__init__(data_source)
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        order = np.random.default_rng([self.seed, self.epoch, 2]).permutation(len(self.data_source))
        self.epoch += 1
        return iter(order.tolist())


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


class AnomalyDataModule(L.LightningDataModule):
    """Shared datamodule: subclasses implement `_collect()` and may override `_dataset()`.

    Validation = a seeded hold-out (`val_fraction`) of the normal training images; the test
    set is never touched for validation. `augment=True` enables the subclass's `flips`
    (random horizontal/vertical flips) on training items only.
    """

    has_masks: bool = True
    #: check at setup that every image and mask file is readable, so a half-copied dataset fails
    #: before training rather than at its first bad batch (the in-memory demo turns it off)
    verify_files: bool = True
    #: flips that augment=True enables: "" (none), "h" or "hv"; subclasses choose per category.
    flips: str = ""

    def __init__(
        self,
        *,
        image_size: int,
        batch_size: int,
        num_workers: int = 0,
        val_fraction: float = 0.1,
        seed: int = 0,
        augment: bool = False,
        cache: bool = True,
        pin_memory: bool = False,
    ) -> None:
        super().__init__()
        if int(image_size) <= 0:
            raise DatasetError(f"data.image_size must be a positive integer, got {image_size!r}")
        if int(batch_size) <= 0:
            raise DatasetError(f"data.batch_size must be a positive integer, got {batch_size!r}")
        if not 0.0 <= float(val_fraction) < 1.0:
            raise DatasetError(f"data.val_fraction must be in [0, 1), got {val_fraction!r}")
        self.image_size = int(image_size)
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers)
        self.val_fraction = float(val_fraction)
        self.seed = int(seed)
        self.augment = bool(augment)
        self.cache = bool(cache)
        self.pin_memory = bool(pin_memory)
        # Training batches drop an incomplete last batch; models fitted on every image (PatchCore) turn it off.
        self.drop_last = True
        self.category: str = ""
        self._samples: tuple[list[Sample], list[Sample]] | None = None
        self.train_dataset: AnomalyDataset | None = None
        self.val_dataset: AnomalyDataset | None = None
        self.test_dataset: AnomalyDataset | None = None

    # --- to implement -------------------------------------------------------------------
    def _collect(self) -> tuple[list[Sample], list[Sample]]:
        """(normal training samples, test samples); raise DatasetError on layout problems."""
        raise NotImplementedError

    def _dataset(self, samples: list[Sample], train: bool) -> AnomalyDataset:
        return AnomalyDataset(
            samples, self.image_size, cache=self.cache, flips=self.flips if (train and self.augment) else ""
        )

    # --- shared -------------------------------------------------------------------------
    def samples(self) -> tuple[list[Sample], list[Sample]]:
        """Collected (train+val normals, test) sample lists; cached after the first call."""
        if self._samples is None:
            self._samples = self._collect()
        return self._samples

    @property
    def num_test_images(self) -> int:
        return len(self.samples()[1])

    def setup(self, stage: str | None = None) -> None:
        """Build all three datasets once (idempotent, so their caches survive fit → test)."""
        if self.train_dataset is not None:
            return
        train_all, test = self.samples()
        if self.verify_files:
            check_files([*train_all, *test], f"{type(self).__name__} {self.category}")
        train, val = split_holdout(train_all, self.val_fraction, self.seed, salt=1)
        self.train_dataset = self._dataset(train, train=True)
        self.val_dataset = self._dataset(val, train=False)
        self.test_dataset = self._dataset(test, train=False)
        log.info(
            "%s %s: %d train, %d val (held out from train), %d test images",
            type(self).__name__, self.category, len(train), len(val), len(test),
        )

    def _loader(self, dataset: AnomalyDataset, shuffle: bool) -> DataLoader:
        generator = torch.Generator().manual_seed(self.seed) if shuffle else None  # seeds workers
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=EpochRandomSampler(dataset, self.seed) if shuffle else None,
            drop_last=shuffle and self.drop_last and len(dataset) > self.batch_size,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,  # keeps each worker's image cache alive
            pin_memory=self.pin_memory,
            collate_fn=collate,
            generator=generator,
        )

    def _require_setup(self) -> None:
        if self.train_dataset is None:
            self.setup()

    def train_dataloader(self) -> DataLoader:
        self._require_setup()
        return self._loader(self.train_dataset, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        self._require_setup()
        return self._loader(self.val_dataset, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        self._require_setup()
        return self._loader(self.test_dataset, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()
