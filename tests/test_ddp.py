"""trainer=ddp_cpu (2 gloo processes): one epoch on the demo data writes a complete metrics.json with the same
keys as a single-process run, every test image is scored exactly once, and DDP works inside a multirun."""
from __future__ import annotations

import json

import pytest

from helpers import TINY_DEMO, read_metrics, run_module

pytestmark = pytest.mark.ddp

# 7 + 6 = 13 test images: an odd count, which a 2-rank DistributedSampler would pad with a repeated image.
ODD_TEST_SET = ["data.n_test_good=7", "data.n_test_defect=6"]


def single_process_test(ckpt_path: str) -> dict:
    import lightning as L

    from vitmemad import pipeline
    from vitmemad.build import build_datamodule
    from vitmemad.callbacks import MemoryDiagnostics
    from vitmemad.checkpoint import load_checkpoint, module_from_checkpoint

    ckpt = load_checkpoint(ckpt_path)
    module, cfg = module_from_checkpoint(ckpt_path)
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[MemoryDiagnostics()])  # metrics.json's memory statistics, as vitmemad.eval
    trainer.test(module, datamodule=build_datamodule(cfg["data"]), verbose=False)
    record = pipeline.metrics_record(cfg, module, epochs=int(ckpt["epoch"]) + 1, train_seconds=None, ckpt_path=ckpt_path)
    return json.loads(json.dumps(record))  # as written to metrics.json


def test_ddp_cpu_multirun_writes_complete_metrics_and_scores_each_test_image_once(tmp_path):
    sweep = tmp_path / "sweep"
    # two jobs in one multirun: each job's second rank must run that job only (not the whole sweep again)
    proc = run_module("vitmemad.train", "-m", "trainer=ddp_cpu", "ablation=base,m_ca", *TINY_DEMO, *ODD_TEST_SET,
                      f"hydra.sweep.dir={sweep}", timeout=240)
    assert proc.stdout.count("[vitmemad] vitmemad_cpu / brick") == 2, proc.stdout[-3000:]
    given = dict(o.split("=", 1) for o in ("trainer=ddp_cpu", *TINY_DEMO, *ODD_TEST_SET))  # a later value wins
    jobs = {ablation: "+".join(sorted(f"{k}-{v}" for k, v in {**given, "ablation": ablation}.items()))
            for ablation in ("base", "m_ca")}  # named by their overrides, sorted
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == sorted(jobs.values())  # no stray worker sweep
    for ablation, job in jobs.items():
        run_dir = sweep / job
        assert (run_dir / "train_ddp_process_1.log").is_file()  # rank 1 logged into this job's folder
        trained = read_metrics(run_dir)
        assert trained["ablation"] == ablation and trained["epochs"] == 1
        assert trained["num_test_images"] == 13
        assert sum(1 for _ in trained["per_defect"]) == 3
        assert (run_dir / "examples.png").is_file()

    # the same checkpoint tested by a single process (as vitmemad.eval does, in this process): same keys, numbers
    trained = read_metrics(sweep / jobs["m_ca"])
    single = single_process_test(trained["ckpt_path"])
    assert set(trained) == set(single)
    for key in ("image_AUROC", "pixel_AUROC", "PRO"):
        assert 0.0 <= trained[key] <= 1.0
        assert trained[key] == pytest.approx(single[key], abs=1e-12)
    assert trained["per_defect"] == pytest.approx(single["per_defect"])
    assert trained["num_test_images"] == single["num_test_images"] == 13
    assert json.dumps(trained["memory"], sort_keys=True) == json.dumps(single["memory"], sort_keys=True)
