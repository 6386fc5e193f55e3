"""The metrics give one-process values when their states are gathered across 2 CPU processes (gloo)."""
from __future__ import annotations

import json
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from vitmemad.metrics import PRO, ImageAUROC, PixelAUROC
from vitmemad.metrics.reference import pro_reference

pytestmark = pytest.mark.ddp

WORLD = 2
BINNED = dict(num_thresholds=256, min_score=-1.0, max_score=3.0)


def _shards(npz) -> dict[str, list[list[tuple[np.ndarray, np.ndarray]]]]:
    """Per scenario, per rank: the update() batches. Uneven shards, mixed image sizes, a rank with no data."""
    m10, g10 = npz["case10_maps"], npz["case10_masks"] * np.uint8(255)  # 10 x 64x64
    m1, g1 = npz["case1_maps"], npz["case1_masks"]  # 8 x 128x96
    m3, g3 = npz["case3_maps"], npz["case3_masks"]  # 10 x 96x128
    return {
        "case10": [[(m10[:3], g10[:3])], [(m10[3:5], g10[3:5]), (m10[5:], g10[5:])]],
        "mixed": [[(m1[:2], g1[:2])], [(m1[2:], g1[2:]), (m3, g3)]],
        "rank0_no_data": [[], [(m10, g10)]],
    }


def _metrics():
    return {"pro": PRO(), "pro_0.05": PRO(fpr_limit=0.05), "pro_binned": PRO(**BINNED),
            "pixel_auroc": PixelAUROC(), "image_auroc": ImageAUROC()}


def _evaluate(batches) -> dict[str, float]:
    import warnings
    warnings.filterwarnings("ignore", message=".*compute.*called before the ..update", category=UserWarning)
    metrics = _metrics()
    for maps, masks in batches:
        for metric in metrics.values():
            metric.update(torch.from_numpy(maps), torch.from_numpy(masks))
    return {name: metric.compute().item() for name, metric in metrics.items()}


def _worker(rank: int, port: int, oracle_path: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        with np.load(oracle_path) as npz:
            shards = _shards(npz)
        results = {name: _evaluate(per_rank[rank]) for name, per_rank in shards.items()}
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(results))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_metrics_sync_across_two_processes(oracle_path, tmp_path):
    mp.spawn(_worker, args=(_free_port(), str(oracle_path), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD)]
    assert ranks[0] == ranks[1], "every rank must compute the same value"

    with np.load(oracle_path) as npz:
        shards = _shards(npz)
        oracle = {"pro": npz["case10_pro_0.3"], "pro_0.05": npz["case10_pro_0.05"],
                  "pixel_auroc": npz["case10_pixel_auroc"], "image_auroc": npz["case10_image_auroc"]}
    for name, per_rank in shards.items():
        single = _evaluate([batch for rank_batches in per_rank for batch in rank_batches])
        for key, value in single.items():
            assert ranks[0][name][key] == pytest.approx(value, abs=1e-12), (name, key)
    for key, value in oracle.items():
        tol = 1e-6 if key.startswith("pro") else 1e-9
        assert abs(ranks[0]["case10"][key] - value) < tol, key
    # The mixed-size pool agrees with the reference transcription too.
    maps = [m for rank_batches in shards["mixed"] for b in rank_batches for m in b[0]]
    masks = [g for rank_batches in shards["mixed"] for b in rank_batches for g in b[1]]
    assert ranks[0]["mixed"]["pro"] == pytest.approx(pro_reference(maps, masks, 0.3), abs=1e-6)
