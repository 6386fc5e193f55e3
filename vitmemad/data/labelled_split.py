"""Labelled validation for hyperparameter search: split the TEST set into seeded, stratified halves.

Training never needs labels: the normal-only validation hold-out (``data.val_fraction`` of ``train/good``)
still drives checkpoint selection and threshold calibration. A hyperparameter search, however, must select on
something that is not the test set. With ``data.labelled_val_fraction=0.5`` the test images are split once,
by a seeded permutation inside every defect type (``good`` included) so both parts keep the same mix:

- the *labelled validation* part is scored at the end of every validation epoch and its image AUROC is logged
  as ``val/image_AUROC`` by ``vitmemad.callbacks.LabelledValidation`` (what ``hparams_search=lambda_grid_labelled``
  and ``lambda_optuna`` select on);
- the *test* part is all that ``test`` scores and metrics.json reports (``num_test_images`` says how many).

The split depends only on ``data.labelled_val_seed`` (default 0), not on the training ``seed``, so every run of
a search (and a later ``vitmemad.eval`` of its checkpoints, whose config carries the split) sees the same halves.
Numbers from such runs are on half the test set: do not compare them with full-test-set results.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Sequence

import numpy as np

from .dataset import Sample
from .errors import DatasetError


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
