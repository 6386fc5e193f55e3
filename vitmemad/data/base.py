"""The LightningDataModule logic every dataset shares.

A concrete datamodule only lists its samples (`_collect`): normal training images and labelled test images.
Everything else lives here so that all datasets behave identically: the seeded validation hold-out taken from
the normal TRAIN images (never from the test set), the optional labelled split of the test set
(``labelled_val_fraction``, for hyperparameter search only: see ``labelled_split``), decoding, caching,
resizing, augmentation and the DataLoaders.
"""
from __future__ import annotations

import logging

import lightning as L
import torch
from torch.utils.data import DataLoader, Subset

from .dataset import AnomalyDataset, EpochRandomSampler, Sample, collate
from .errors import DatasetError
from .labelled_split import stratified_split
from .layout import check_files, split_holdout

log = logging.getLogger(__name__)


class AnomalyDataModule(L.LightningDataModule):
    """Shared datamodule: subclasses implement `_collect()` and may override `_dataset()`.

    Validation = a seeded hold-out (`val_fraction`) of the normal training images; the test
    set is never touched for validation. `augment=True` enables the subclass's `flips`
    (random horizontal/vertical flips) on training items only. `drop_last=False` keeps an incomplete last
    training batch (PatchCore fits on every image).
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
        drop_last: bool = True,
        labelled_val_fraction: float | None = None,
        labelled_val_seed: int = 0,
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
        self.drop_last = bool(drop_last)
        if labelled_val_fraction not in (None, 0, 0.0) and not 0.0 < float(labelled_val_fraction) < 1.0:
            raise DatasetError(f"data.labelled_val_fraction must be in (0, 1), got {labelled_val_fraction!r}")
        self.labelled_val_fraction = float(labelled_val_fraction) if labelled_val_fraction else None
        self.labelled_val_seed = int(labelled_val_seed or 0)
        self.category: str = ""
        self._samples: tuple[list[Sample], list[Sample]] | None = None
        self.train_dataset: AnomalyDataset | None = None
        self.val_dataset: AnomalyDataset | None = None
        self.test_dataset: AnomalyDataset | Subset | None = None
        self.labelled_val_dataset: Subset | None = None

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
    def has_anomalies(self) -> bool:
        """Whether the test set holds an anomalous image: without one no test metric is defined."""
        return any(s.label != 0 for s in self.samples()[1])

    @property
    def num_test_images(self) -> int:
        self._require_setup()
        return len(self.test_dataset)

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
        if self.labelled_val_fraction is not None:
            self._split_test_set()
        log.info(
            "%s %s: %d train, %d val (held out from train), %d test images",
            type(self).__name__, self.category, len(train), len(val), len(test),
        )

    def _split_test_set(self) -> None:
        full = self.test_dataset
        val_idx, test_idx = stratified_split(full.samples, self.labelled_val_fraction, self.labelled_val_seed)
        self.labelled_val_dataset = Subset(full, val_idx)
        self.test_dataset = Subset(full, test_idx)
        log.info("labelled split of the %d test images (fraction %.2f, seed %d): %d labelled validation, %d test",
                 len(full), self.labelled_val_fraction, self.labelled_val_seed, len(val_idx), len(test_idx))

    def _loader(self, dataset: AnomalyDataset | Subset, shuffle: bool) -> DataLoader:
        generator = torch.Generator().manual_seed(self.seed) if shuffle else None  # seeds workers
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=EpochRandomSampler(dataset, self.seed) if shuffle else None,
            drop_last=shuffle and self.drop_last and len(dataset) > self.batch_size,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,  # keeps each worker's image cache alive
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

    def labelled_val_dataloader(self) -> DataLoader | None:
        """The labelled validation part of the test set, or None without ``labelled_val_fraction``."""
        self._require_setup()
        return None if self.labelled_val_dataset is None else self._loader(self.labelled_val_dataset, False)
