"""End to end: configs compose, one training step learns, train -> eval round trip on demo data."""
from __future__ import annotations

import csv
import math
import re
from types import SimpleNamespace

import pytest
import torch

from helpers import TINY_DEMO, read_metrics, run_here
from vitmemad.build import DATA_METADATA, build_datamodule, build_module
from vitmemad.checkpoint import load_checkpoint
from vitmemad.data import DemoDataModule, collate
from vitmemad.models import PatchSwap, ReconstructionModule
from vitmemad.models.schedule import WarmupCosine, warmup_cosine

CONTRACT_KEYS = {
    "image_AUROC", "pixel_AUROC", "PRO", "category", "model", "ablation", "seed", "epochs",
    "train_seconds", "ckpt_path", "per_defect", "provenance",
}


#: each preset's (image size, batch size, epochs): a preset sets data.image_size, data.batch_size, trainer.max_epochs
PRESETS = {"vitmemad_cpu": (128, 16, 45), "vitmemad_paper": (384, 8, 200), "cae": (128, 16, 30)}


def demo_datamodule(data_cfg: dict) -> DemoDataModule:
    dm = build_datamodule(data_cfg)
    assert isinstance(dm, DemoDataModule) and not set(DATA_METADATA) & set(vars(dm))
    return dm


def configure_optimizers(module, steps: int = 5, epochs: int = 1):
    """``configure_optimizers`` as the trainer calls it (it reads the step and epoch counts from the trainer)."""
    module._trainer = SimpleNamespace(estimated_stepping_batches=steps, max_epochs=epochs, max_steps=-1,
                                      num_training_batches=steps // epochs, accumulate_grad_batches=1)
    try:
        return module.configure_optimizers()
    finally:
        module._trainer = None


@pytest.mark.parametrize("model", ["vitmemad_cpu", "vitmemad_paper", "cae"])
@pytest.mark.parametrize("data", ["demo", "mvtec", "btad", "folder"])
def test_every_model_and_dataset_config_composes(compose_plain, model, data):
    extra = ["data.normal_dir=a", "data.abnormal_dir=b"] if data == "folder" else []
    cfg = compose_plain(f"model={model}", f"data={data}", *extra)
    net = cfg["model"]["net"]
    image_size, batch_size, epochs = PRESETS[model]
    assert cfg["data"]["image_size"] == (net["encoder"] if "encoder" in net else net)["image_size"] == image_size
    assert (cfg["data"]["batch_size"], cfg["trainer"]["max_epochs"]) == (batch_size, epochs)
    assert cfg["ablation"]["name"] == "m_ca"
    assert cfg["model"]["_target_"] == "vitmemad.models.ReconstructionModule"
    assert cfg["model"]["loss"] == cfg["loss"] and cfg["model"]["anomaly_map"] == cfg["anomaly_map"]


def test_btad_product_stays_a_string(compose_plain):
    assert compose_plain("data=btad")["data"]["category"] == "01"


def test_paper_preset_has_the_papers_settings(compose_plain):
    cfg = compose_plain("model=vitmemad_paper")
    m, enc = cfg["model"], cfg["model"]["net"]["encoder"]
    assert (cfg["data"]["image_size"], enc["patch_size"], enc["embed_dim"], enc["num_heads"]) == (384, 16, 768, 8)
    assert enc["image_size"] == 384
    assert (cfg["data"]["batch_size"], cfg["trainer"]["max_epochs"], m["optimizer"]["lr"]) == (8, 200, 2e-4)
    assert (m["net"]["memory"]["addressing"], m["net"]["memory"]["temperature"]) == ("cosine", 1.0)
    assert (cfg["loss"]["lambda_recon"], cfg["loss"]["lambda_ent"]) == (1.0, 0.001)
    assert (m["loss"]["lambda_recon"], m["loss"]["lambda_ent"]) == (1.0, 0.001)


def test_one_batch_training_step_reduces_the_loss(compose_plain):
    cfg = compose_plain(*TINY_DEMO)
    torch.manual_seed(0)
    module = build_module(cfg["model"])
    assert isinstance(module, ReconstructionModule)
    dm = demo_datamodule(cfg["data"])
    dm.setup("fit")
    batch = collate([dm.train_dataset[i] for i in range(8)])
    opt = configure_optimizers(module)
    assert isinstance(opt["lr_scheduler"]["scheduler"], torch.optim.lr_scheduler.LambdaLR)
    opt = opt["optimizer"] if isinstance(opt, dict) else opt
    before = [p.detach().clone() for p in module.parameters()]
    losses = []
    for _ in range(5):
        loss = module.training_step(batch, 0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0]
    memory = module.net.memory.items
    assert memory.grad is not None and memory.grad.abs().sum() > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, module.parameters()))


def test_corrupted_training_rebuilds_the_clean_image(compose_plain):
    """corruption=patch_swap: the model sees the corrupted batch, the loss compares with the clean one."""
    cfg = compose_plain(*TINY_DEMO, "corruption=patch_swap", "corruption.probability=1.0")
    torch.manual_seed(0)
    module = build_module(cfg["model"])
    assert isinstance(module.corruption, PatchSwap) and module.corruption.probability == 1.0
    dm = demo_datamodule(cfg["data"])
    dm.setup("fit")
    batch = collate([dm.train_dataset[i] for i in range(4)])
    clean = batch["image"].clone()
    seen = []
    module.net.register_forward_hook(lambda mod, args, out: seen.append((args[0].detach(), out)))
    loss = module.training_step(batch, 0)
    inputs, out = seen[-1]
    assert torch.equal(batch["image"], clean) and not torch.equal(inputs, clean)
    expected = module.loss(clean, out["reconstruction"], out["memory_weights"])["loss"]
    assert torch.allclose(loss, expected)
    plain = compose_plain(*TINY_DEMO)  # off unless asked for
    assert plain["corruption"] is None and plain["model"]["corruption"] is None
    assert build_module(plain["model"]).corruption is None


def test_warmup_cosine_schedule_rises_linearly_then_decays_to_its_floor():
    schedule = WarmupCosine(warmup_steps=4, total_steps=20, cosine=True, final=0.01)
    factors = [schedule(step) for step in range(21)]
    assert factors[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert all(a >= b for a, b in zip(factors[4:], factors[5:]))  # monotone decay after warm-up
    assert factors[-1] == pytest.approx(0.01)
    assert WarmupCosine(3, 20, cosine=False, final=0.01)(15) == 1.0
    # LambdaLR keeps a callable object's state in its state_dict: a resumed run continues the same schedule
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    assert sched.state_dict()["lr_lambdas"][0] == vars(schedule)
    # model.scheduler: the per-step factor over the run's steps, warm-up epochs converted to steps
    built = warmup_cosine(opt, total_steps=20, steps_per_epoch=4, warmup_epochs=1, cosine=True)
    assert vars(built.lr_lambdas[0]) == vars(schedule)
    assert warmup_cosine(opt, total_steps=20, steps_per_epoch=4, warmup_epochs=0, cosine=False) is None  # constant lr
    with pytest.raises(ValueError, match="warmup_epochs"):
        warmup_cosine(opt, total_steps=20, steps_per_epoch=4, warmup_epochs=-1)


@pytest.mark.parametrize("model", ["vitmemad_cpu", pytest.param("cae", marks=pytest.mark.slow)])
def test_train_then_eval_round_trip(tmp_path, model):
    run_dir = tmp_path / "train"
    run_here("vitmemad.train", f"model={model}", *TINY_DEMO, "trainer.max_epochs=2", f"hydra.run.dir={run_dir}",
             "logger=csv", "model.optimizer.warmup_epochs=1")  # an old spelling of model.scheduler.warmup_epochs
    trained = read_metrics(run_dir)
    with open(run_dir / "csv" / "version_0" / "metrics.csv") as f:  # logger=csv: one row of figures per epoch
        rows = list(csv.DictReader(f))
    train_losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert len(train_losses) == 2 and all(math.isfinite(v) for v in train_losses)
    assert {"train/l2", "train/ssim", "val/loss", "val/image_score"} <= set(rows[0])
    assert CONTRACT_KEYS <= set(trained)
    assert trained["epochs"] == 2 and trained["train_seconds"] > 0
    assert trained["model"] == model and trained["ablation"] == ("m_ca" if model != "cae" else None)
    assert set(trained["per_defect"]) == {"patch", "scratch", "spot"}
    for key in ("image_AUROC", "pixel_AUROC", "PRO"):
        assert 0.0 <= trained[key] <= 1.0
    assert (run_dir / "checkpoints" / "last.ckpt").is_file() and (run_dir / "examples.png").is_file()
    ckpt = load_checkpoint(trained["ckpt_path"])
    assert ckpt["hyper_parameters"]["cfg"]["data"]["n_train"] == 24
    assert ckpt["hyper_parameters"]["cfg"]["model"]["scheduler"]["warmup_epochs"] == 1
    assert all(k.startswith(("net.", "loss.", "anomaly_map.", "evaluator.")) or k.endswith("_threshold")
               for k in ckpt["state_dict"])
    if model == "vitmemad_cpu":  # epoch 0 is the memory warm-up (capped at half of 2 epochs); epoch 1 inits the items
        assert bool(ckpt["state_dict"]["net.memory.initialized"])

    eval_dir = tmp_path / "eval"
    run_here("vitmemad.eval", f"ckpt_path={trained['ckpt_path']}", f"hydra.run.dir={eval_dir}")
    evaluated = read_metrics(eval_dir)
    for key in ("image_AUROC", "pixel_AUROC", "PRO"):
        assert evaluated[key] == pytest.approx(trained[key], abs=1e-9)
    assert evaluated["per_defect"] == pytest.approx(trained["per_defect"])
    # eval re-derives the same curves from the checkpoint, and draws curves.png too
    for key in ("image_roc", "pixel_roc", "pro"):
        assert evaluated["curves"][key]["fpr"] == pytest.approx(trained["curves"][key]["fpr"], abs=1e-9)
    assert evaluated["curves"]["image_roc"]["threshold"] == pytest.approx(trained["curves"]["image_roc"]["threshold"])
    assert (run_dir / "curves.png").is_file() and (eval_dir / "curves.png").is_file()
    assert evaluated["train_seconds"] is None and evaluated["model"] == model


def test_a_budget_in_steps_sets_the_schedule_and_the_memory_warm_up_from_the_epochs_it_allows(tmp_path):
    """``trainer.max_steps`` ending a run before ``max_epochs``: warm-ups are converted with the run's real steps
    per epoch, and the memory still starts before the run ends."""
    run_here("vitmemad.train", *TINY_DEMO, "trainer.max_epochs=-1", "trainer.max_steps=7",
             "model.scheduler.warmup_epochs=1", "callbacks.memory_training.warmup_epochs=2", "num_threads=1",
             f"hydra.run.dir={tmp_path}")
    n_train = int(re.search(r"(\d+) train, ", (tmp_path / "train.log").read_text()).group(1))
    per_epoch = n_train // 8  # debug=smoke's batch, incomplete batches dropped
    ckpt = load_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == 7
    schedule = ckpt["lr_schedulers"][0]["lr_lambdas"][0]
    assert (schedule["warmup_steps"], schedule["total_steps"]) == (per_epoch, 7)
    assert math.ceil(7 / per_epoch) >= 4  # epochs enough that the memory warm-up (at most half of them) is whole
    assert bool(ckpt["state_dict"]["net.memory.initialized"])
    best = [p.name for p in (tmp_path / "checkpoints").glob("best-epoch*.ckpt")]
    assert best and all(int(name[len("best-epoch"):-len(".ckpt")]) >= 2 for name in best), best  # warm-up excluded
