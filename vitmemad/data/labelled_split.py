"""Labelled validation for hyperparameter search: split the TEST set into seeded, stratified halves.

Training never needs labels: the normal-only validation hold-out (``data.val_fraction`` of ``train/good``)
still drives checkpoint selection and threshold calibration. A hyperparameter search, however, must select on
something that is not the test set. With ``data.labelled_val_fraction=0.5`` the test images are split once,
by a seeded permutation inside every defect type (``good`` included) so both parts keep the same mix:

- the *labelled validation* part is scored at the end of every validation epoch and its image AUROC is logged
  as ``val/image_AUROC`` (what ``hparams_search=lambda_grid_labelled`` / ``lambda_optuna`` select on);
- the *test* part is all that ``test`` scores and metrics.json reports (``num_test_images`` says how many).

The split depends only on ``data.labelled_val_seed`` (default 0), not on the training ``seed``, so every run of
a search (and a later ``vitmemad.eval`` of its checkpoints, whose config carries the split) sees the same halves.
Numbers from such runs are on half the test set: do not compare them with full-test-set results.
"""
from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any, Sequence

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from vitmemad.metrics import ImageAUROC

from .base import AnomalyDataModule, Sample
from .errors import DatasetError

log = logging.getLogger(__name__)

#: data config keys this module consumes (the datamodules themselves do not take them)
CONFIG_KEYS = ("labelled_val_fraction", "labelled_val_seed")
METRIC = "val/image_AUROC"


def stratified_split(samples: Sequence[Sample], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(validation indices, test indices): per defect type, a seeded round(fraction·n) goes to validation.

    Each part keeps at least one normal and one anomalous image, so both AUROCs are defined.
    """
    if not 0.0 < float(fraction) < 1.0:
        raise DatasetError(f"data.labelled_val_fraction must be in (0, 1), got {fraction!r}")
    groups: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(samples):
        groups[s.defect].append(i)
    labels = {0: sum(1 for s in samples if s.label == 0), 1: sum(1 for s in samples if s.label == 1)}
    if labels[0] < 2 or labels[1] < 2:
        raise DatasetError(
            f"data.labelled_val_fraction needs at least 2 normal and 2 anomalous test images to split, "
            f"got {labels[0]} normal and {labels[1]} anomalous"
        )
    val: list[int] = []
    for k, defect in enumerate(sorted(groups)):
        idx = groups[defect]
        rng = np.random.default_rng([int(seed), 7, k])
        n_val = int(round(fraction * len(idx)))
        val += [idx[j] for j in rng.permutation(len(idx))[:n_val].tolist()]
    val_set = set(val)
    # keep both classes on both sides (tiny test sets, fraction near 0 or 1)
    for label in (0, 1):
        in_val = [i for i in val_set if samples[i].label == label]
        in_test = [i for i in range(len(samples)) if i not in val_set and samples[i].label == label]
        if not in_val:
            val_set.add(in_test[0])
        elif not in_test:
            val_set.discard(sorted(in_val)[0])
    val_idx = sorted(val_set)
    test_idx = [i for i in range(len(samples)) if i not in val_set]
    return val_idx, test_idx


class LabelledSplitDataModule(L.LightningDataModule):
    """Wraps an AnomalyDataModule: same train/val loaders, test = the test part, plus a labelled validation part.

    Attributes the rest of the code reads from a datamodule (``has_masks``, ``category``, ...) are forwarded
    to the wrapped one.
    """

    def __init__(self, inner: AnomalyDataModule, fraction: float, seed: int = 0) -> None:
        super().__init__()
        self.inner = inner
        self.fraction = float(fraction)
        self.split_seed = int(seed)
        self.labelled_val_dataset: Subset | None = None
        self.test_dataset: Subset | None = None
        self.val_indices: list[int] = []
        self.test_indices: list[int] = []

    def __getattr__(self, name: str) -> Any:
        if name == "inner":  # not yet set (during __init__ / unpickling)
            raise AttributeError(name)
        return getattr(self.inner, name)

    @property
    def has_masks(self) -> bool:
        return bool(getattr(self.inner, "has_masks", True))

    @property
    def num_test_images(self) -> int:
        self.setup()
        return len(self.test_indices)

    def prepare_data(self) -> None:
        self.inner.prepare_data()

    def setup(self, stage: str | None = None) -> None:
        self.inner.setup(stage)
        if self.test_dataset is not None:
            return
        full = self.inner.test_dataset
        self.val_indices, self.test_indices = stratified_split(full.samples, self.fraction, self.split_seed)
        self.labelled_val_dataset = Subset(full, self.val_indices)
        self.test_dataset = Subset(full, self.test_indices)
        log.info(
            "labelled split of the %d test images (fraction %.2f, seed %d): %d labelled validation, %d test",
            len(full), self.fraction, self.split_seed, len(self.val_indices), len(self.test_indices),
        )

    def train_dataloader(self) -> DataLoader:
        return self.inner.train_dataloader()

    def val_dataloader(self) -> DataLoader:
        return self.inner.val_dataloader()

    def test_dataloader(self) -> DataLoader:
        self.setup()
        return self.inner._loader(self.test_dataset, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()

    def labelled_val_dataloader(self) -> DataLoader:
        self.setup()
        return self.inner._loader(self.labelled_val_dataset, shuffle=False)


def wrap(datamodule: L.LightningDataModule, data_cfg: dict[str, Any]) -> L.LightningDataModule:
    """The datamodule itself, or wrapped when ``data.labelled_val_fraction`` is set."""
    fraction = data_cfg.get("labelled_val_fraction")
    if fraction in (None, 0, 0.0):
        return datamodule
    if not isinstance(datamodule, AnomalyDataModule):
        raise DatasetError(f"data.labelled_val_fraction is not supported by {type(datamodule).__name__}")
    return LabelledSplitDataModule(datamodule, float(fraction), int(data_cfg.get("labelled_val_seed") or 0))


class LabelledValidation(L.Callback):
    """At the end of every validation epoch, score the labelled validation part and log ``val/image_AUROC``.

    Every rank scores the whole (small) part, so the value is the same on all ranks. The image score is the
    maximum of the anomaly map at the mask's native resolution, exactly as in ``test``.
    """

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        dm = trainer.datamodule
        if not isinstance(dm, LabelledSplitDataModule):
            return
        from vitmemad.models.anomaly_map import resize_maps

        metric = ImageAUROC()
        with torch.no_grad(), trainer.precision_plugin.val_step_context():
            for batch in dm.labelled_val_dataloader():
                images = batch["image"].to(pl_module.device)
                maps, _ = pl_module.score(images)
                masks = batch["mask"]
                scores = torch.stack(
                    [resize_maps(maps[i : i + 1].float(), tuple(m.shape[-2:])).amax() for i, m in enumerate(masks)]
                ).float().cpu()
                metric.update(scores[:, None, None], batch["label"].long()[:, None, None])
        value = float(metric.compute())
        pl_module.log(METRIC, value, on_epoch=True, sync_dist=False, rank_zero_only=False)


def callbacks_for(datamodule: L.LightningDataModule) -> list[L.Callback]:
    return [LabelledValidation()] if isinstance(datamodule, LabelledSplitDataModule) else []


def check_optimized_metric(metric: str | None, data_cfg: Any) -> None:
    """Fail before training when the search would select on a metric this run cannot log."""
    if metric == METRIC and not (data_cfg or {}).get("labelled_val_fraction"):
        raise ValueError(
            f"optimized_metric={METRIC} needs a labelled validation split: set data.labelled_val_fraction "
            "(e.g. 0.5), or select on a normal-only metric such as val/recon_unweighted"
        )
