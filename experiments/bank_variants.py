"""Which difference between PatchCore's bank and the trained memory costs detection? No training involved.

    python experiments/bank_variants.py PATCHCORE_CKPT [--items 396] [--seeds 0 1 2] [--out FILE.json]

The paper's memory and PatchCore's bank are both N vectors that every patch query is compared with. They differ in
where the items come from and in how a query is read out. This takes a fitted PatchCore checkpoint, collects the
patch features of its normal training images again, and scores its test set (metrics as ``vitmemad eval``) with
banks of ``--items`` vectors that differ in one way at a time:

- ``coreset``: a greedy k-center coreset of all training patches, each query read out as its nearest item
  (PatchCore itself, at the memory's size);
- ``random_all``: a random sample of all training patches, nearest item;
- ``random_first_batch``: a random sample of the first training batch's patches, nearest item (how
  ``memory.init=features`` starts the trained memory);
- ``coreset_soft_T{t}``: the coreset, read out as the memory does (cosine addressing, softmax at temperature t,
  hard shrinkage at 1/N, the weighted sum of items); the map is the query's distance to that read-out.

Prints one JSON object per variant and seed; ``--out`` writes them all as one JSON object.
"""
from __future__ import annotations

import argparse
import json
import sys
import types
from pathlib import Path

import lightning as L
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from select_map import run_datamodule  # noqa: E402
from vitmemad.inference import load_module  # noqa: E402
from vitmemad.models.memory import MemoryModule  # noqa: E402
from vitmemad.models.patchcore import PatchCore, greedy_coreset  # noqa: E402

METRICS = ("image_AUROC", "pixel_AUROC", "PRO")


def soft_readout_forward(temperature: float):
    """A PatchCore forward whose map is each query's distance to the memory module's read-out over the bank: a
    ``MemoryModule`` (cosine addressing at ``temperature``, shrinkage 1/N) whose items are the bank."""
    def forward(self: PatchCore, images: torch.Tensor) -> dict:
        feats = self.embed(images)
        memory = MemoryModule(self.memory_bank.shape[0], feats.shape[1], temperature, "cosine").eval()
        memory.items.data.copy_(self.memory_bank)
        readout, _ = memory(feats)
        dist = (feats.float() - readout.float()).norm(dim=1)
        return {"reconstruction": None, "memory_weights": None, "anomaly_map": dist,
                "feature_error": dist.square() / feats.shape[1]}
    return forward


@torch.no_grad()
def training_patches(module, cfg: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(all training patch features, those of the first batch), as PatchCore collects them."""
    net = module.net
    first = None
    for batch in run_datamodule(cfg, "fit").train_dataloader():
        net.collect(batch["image"])
        if first is None:
            first = net.pending_features().clone()
    feats = net.pending_features()
    net._collected = []
    return feats, first


def variants(feats: torch.Tensor, first: torch.Tensor, items: int, seed: int, projection_dim: int | None,
             temperatures: list[float]):
    generator = torch.Generator().manual_seed(seed)
    core = feats[greedy_coreset(feats, items, projection_dim, torch.Generator().manual_seed(seed))]
    yield "coreset", core, None
    yield "random_all", feats[torch.randperm(feats.shape[0], generator=generator)[:items]], None
    yield "random_first_batch", first[torch.randperm(first.shape[0], generator=generator)[:items]], None
    for t in temperatures:
        yield f"coreset_soft_T{t:g}", core, t


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("ckpt", help="a checkpoint of a vitmemad.train model=patchcore run")
    parser.add_argument("--items", type=int, default=396, help="bank size (the memory's N)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--temperatures", type=float, nargs="*", default=[0.1, 0.02])
    parser.add_argument("--out", help="write all results to this JSON file")
    args = parser.parse_args(argv)
    module = load_module(args.ckpt)
    if not isinstance(module.net, PatchCore):
        parser.error(f"{args.ckpt}: expected a PatchCore checkpoint, got {type(module.net).__name__}")
    cfg = module.run_config
    net = module.net.eval()
    feats, first = training_patches(module, cfg)
    if args.items > first.shape[0]:
        parser.error(f"--items {args.items} is more than the first batch's {first.shape[0]} patches")
    nearest = type(net).forward
    results = {}
    for seed in args.seeds:
        for name, bank, temperature in variants(feats, first, args.items, seed, net.projection_dim,
                                                args.temperatures):
            net.memory_bank = bank.contiguous()
            forward = nearest if temperature is None else soft_readout_forward(temperature)
            net.forward = types.MethodType(forward, net)
            trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False,
                                enable_checkpointing=False, enable_model_summary=False)
            trainer.test(module, datamodule=run_datamodule(cfg, "test"), verbose=False)
            row = {"variant": name, "seed": seed, "items": args.items}
            row.update({m: module.test_results[m] for m in METRICS})  # float64, as in metrics.json
            results[f"{name}/s{seed}"] = row
            print(json.dumps(row), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
