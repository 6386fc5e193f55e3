"""Base class for metrics that keep "cat" list states of several dtypes."""
from __future__ import annotations

from typing import Any

import torch
from torchmetrics import Metric


class ListStateMetric(Metric):
    """A ``Metric`` whose list states keep their dtype when a rank saw no data.

    Before gathering, torchmetrics replaces an empty list state by an empty *float32* tensor, which cannot be
    gathered together with the uint8/int64 tensors of the other ranks. Subclasses name their list states'
    dtypes in ``_list_dtypes``; an empty one is replaced by an empty tensor of the right dtype instead.
    """

    _list_dtypes: dict[str, torch.dtype] = {}

    def _sync_dist(self, *args: Any, **kwargs: Any) -> None:
        for name, dtype in self._list_dtypes.items():
            state = getattr(self, name, None)
            if isinstance(state, list) and not state:
                setattr(self, name, [torch.empty(0, dtype=dtype, device=self.device)])
        super()._sync_dist(*args, **kwargs)
