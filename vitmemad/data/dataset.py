"""Dataset items, collation and the epoch-seeded shuffle every datamodule uses.

Every item is a dict: ``image`` float32 (3, S, S) in [-1, 1]; ``mask`` uint8 (H0, W0) at the ground truth's
native resolution (zeros for normal images); ``label`` int; ``defect`` str ("good" for normal images); ``path``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence, Sized

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, RandomSampler

from .errors import DatasetError
from .io import load_image, load_mask
from .transforms import resize_rgb_uint8, uint8_to_input

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
