"""vitmemad_feat: memory + coordinate attention + decoder on pretrained features, with its ablations."""
from __future__ import annotations

import pytest
import torch

from helpers import read_metrics, run_here
from vitmemad.build import build_module
from vitmemad.config import net_parts
from vitmemad.models import CoordinateAttention, FeatureMemAE, MemoryModule, ReconstructionModule
from vitmemad.pipeline import ablation_name

# old spellings (model.image_size, model.batch_size, model.memory.size) are rewritten to the new keys
SMALL = ["model=vitmemad_feat", "model.image_size=64", "model.batch_size=4", "model.net.embed_dim=32",
         "model.net.decoder_channels=[32]", "model.memory.size=16"]


def small_net(**kwargs) -> FeatureMemAE:
    """D=16 with a memory of 8 items and coordinate attention, as the preset's parts (temperature 0.1, cosine)."""
    parts = {"memory": MemoryModule(8, 16, temperature=0.1, init="features"),
             "coord_attention": CoordinateAttention(16, 8)}
    return FeatureMemAE(embed_dim=16, decoder_channels=[16], **{**parts, **kwargs})


def test_small_overrides_reach_the_parts(compose_plain):
    cfg = compose_plain(*SMALL)
    net = cfg["model"]["net"]
    assert cfg["data"]["image_size"] == net["image_size"] == 64 and cfg["data"]["batch_size"] == 4
    assert net["embed_dim"] == net["memory"]["dim"] == net["coord_attention"]["channels"] == 32
    assert net["memory"]["size"] == 16 and net["decoder_channels"] == [32]


@pytest.mark.parametrize("ablation, memory, ca", [("base", False, False), ("m", True, False), ("ca", False, True),
                                                  ("m_ca", True, True)])
def test_each_ablation_trains_a_step(compose_plain, ablation, memory, ca):
    torch.manual_seed(0)
    cfg = compose_plain(*SMALL, f"ablation={ablation}")
    module = build_module(cfg["model"])
    model = module.net
    assert isinstance(module, ReconstructionModule) and isinstance(model, FeatureMemAE)
    assert net_parts(cfg) == {"memory", "coord_attention"} and ablation_name(cfg) == ablation
    assert (model.memory is not None, model.coord_attention is not None) == (memory, ca)
    images = torch.rand(4, 3, 64, 64) * 2 - 1
    module.train()
    trainable = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=1e-3)
    backbone_before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    losses = []
    for _ in range(5):
        out = module(images)
        terms = module.validation_terms(images, out)  # the training loss: ReconstructionLoss.terms
        optimizer.zero_grad()
        terms["loss"].backward()
        optimizer.step()
        losses.append(float(terms["loss"].detach()))
    assert set(terms) == {"loss", "l2", "entropy"}
    assert out["reconstruction"] is None and out["anomaly_map"].shape == (4, 8, 8)
    assert (out["memory_weights"] is not None) == memory
    assert losses[-1] < losses[0]  # it learns
    # the frozen backbone neither trains nor updates its BatchNorm statistics
    assert all(torch.equal(v, model.backbone.state_dict()[k]) for k, v in backbone_before.items())
    assert not any(p.requires_grad for p in model.backbone.parameters())
    # the feature statistics came from the first training batch and stay fixed
    assert bool(model.stats_initialized)
    assert float(model.feature_std.min()) > 0
    module.eval()
    maps, recon = module.score(images)
    assert maps.shape == (4, 64, 64) and recon is None and torch.isfinite(maps).all()


def test_anomaly_map_is_the_feature_distance():
    torch.manual_seed(0)
    model = small_net(image_size=64).eval()
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    out = model(x)
    target = model.target_features(x)
    z = model.encoder(target)
    z, _ = model.memory(z)
    recon = model.decoder(model.coord_attention(z))
    torch.testing.assert_close(out["anomaly_map"], (recon - target).norm(dim=1))
    torch.testing.assert_close(out["feature_error"], (recon - target).square().mean(1))
    assert not bool(model.stats_initialized)  # eval mode never sets the statistics


def test_without_a_projection_the_nearest_item_is_a_bank_lookup_of_the_standardised_features():
    """project=False, a frozen coreset and a top-1 euclidean read-out: each position's memory output is the
    training feature nearest to it, as in a PatchCore bank of the same features."""
    torch.manual_seed(0)
    memory = MemoryModule(12, 152, addressing="euclidean", readout="topk", top_k=1, update="frozen", init="coreset")
    model = FeatureMemAE(embed_dim=152, downsample=0, decoder_channels=[], project=False, memory=memory).eval()
    train = torch.rand(2, 3, 64, 64) * 2 - 1
    assert model.initialize_memory(train, torch.Generator().manual_seed(0))
    bank = memory.items.detach()
    train_features = model.target_features(train).flatten(2).transpose(1, 2).reshape(-1, 152)
    exact = {"compute_mode": "donot_use_mm_for_euclid_dist"}
    assert (torch.cdist(bank, train_features, **exact).amin(1) < 1e-5).all()  # every item is a training feature
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    queries = model.target_features(x).flatten(2).transpose(1, 2)[0]
    caught = {}
    memory.register_forward_hook(lambda _m, args, out: caught.update(out=out[0]))
    model(x)
    nearest = torch.cdist(queries, bank, **exact).argmin(dim=1)
    torch.testing.assert_close(caught["out"].flatten(2).transpose(1, 2)[0], bank[nearest])


def test_memory_init_from_features_sets_the_statistics_first():
    torch.manual_seed(0)
    model = small_net()
    assert isinstance(model.memory, MemoryModule) and not bool(model.memory.initialized)
    model.eval()
    assert model.initialize_memory(torch.rand(2, 3, 64, 64) * 2 - 1)
    assert bool(model.stats_initialized) and bool(model.memory.initialized)


@pytest.mark.parametrize("kwargs, match", [
    ({"image_size": 72}, "multiple of 16"),
    ({"downsample": 2, "decoder_channels": [16]}, "one width per"),
    ({"embed_dim": 0}, "embed_dim"),
    ({"memory": MemoryModule(8, 32)}, "32 channels"),  # parts must work on embed_dim channels
    ({"coord_attention": CoordinateAttention(24, 8)}, "24 channels"),
    ({"project": False}, "needs model.net.embed_dim=152"),
])
def test_bad_settings_are_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FeatureMemAE(**{"embed_dim": 16, "decoder_channels": [16], **kwargs})


def test_vitmemad_feat_through_train(tmp_path):
    # model.epochs: the old spelling of trainer.max_epochs
    run_here("vitmemad.train", *SMALL, "ablation=base", "model.epochs=1", "data.n_train=16", "data.n_test_good=4",
             "data.n_test_defect=4", "data.crop_size=64", f"hydra.run.dir={tmp_path}", "num_threads=1")
    metrics = read_metrics(tmp_path)
    assert metrics["model"] == "vitmemad_feat" and metrics["ablation"] == "base"
    assert metrics["epochs"] == 1 and metrics["num_test_images"] == 8
    assert all(0 <= metrics[k] <= 1 for k in ("image_AUROC", "pixel_AUROC", "PRO"))
    assert (tmp_path / "examples.png").is_file()
