"""Configs become objects: the ablation switches act on the parts a model's net has, the debug preset shrinks
them, and the old spellings of moved keys compose to the new ones."""
from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from vitmemad.build import build_module
from vitmemad.config import new_key, rewrite_overrides
from vitmemad.models import ConvAutoencoder, ReconstructionModule, ViTMemAE
from vitmemad.pipeline import ablation_name

ABLATIONS = {"base": (False, False), "m": (True, False), "ca": (False, True), "m_ca": (True, True)}


@pytest.mark.parametrize("model", ["vitmemad_cpu", "vitmemad_paper"])
@pytest.mark.parametrize("ablation", ABLATIONS)
def test_ablation_nulls_the_vit_parts_it_switches_off(compose, ablation, model):
    memory, coord_attention = ABLATIONS[ablation]
    cfg = compose(f"model={model}", f"ablation={ablation}")
    net = cfg.model.net
    assert (net.memory is not None, net.coord_attention is not None) == (memory, coord_attention)
    assert net.encoder is not None and net.decoder is not None and cfg.ablation.name == ablation
    if memory:
        assert net.memory._target_ == "vitmemad.models.MemoryModule"
    if coord_attention:
        assert net.coord_attention._target_ == "vitmemad.models.CoordinateAttention"


@pytest.mark.parametrize("ablation", ABLATIONS)
def test_ablation_builds_the_variant(compose_plain, ablation):
    memory, coord_attention = ABLATIONS[ablation]
    cfg = compose_plain(f"ablation={ablation}", "debug=smoke")
    assert ablation_name(cfg) == ablation
    module = build_module(cfg["model"])
    assert isinstance(module, ReconstructionModule) and isinstance(module.net, ViTMemAE)
    assert (module.net.memory is not None, module.net.coord_attention is not None) == (memory, coord_attention)


@pytest.mark.parametrize("model", ["cae", "patchcore"])
def test_ablation_is_a_no_op_for_models_without_those_parts(compose, compose_plain, model):
    reference = OmegaConf.to_container(compose(f"model={model}").model)
    assert "memory" not in reference["net"] and "coord_attention" not in reference["net"]
    for ablation in ABLATIONS:
        cfg = compose(f"model={model}", f"ablation={ablation}")
        assert OmegaConf.to_container(cfg.model) == reference, ablation
        assert ablation_name(compose_plain(f"model={model}", f"ablation={ablation}")) is None  # metrics.json: null


def test_debug_preset_shrinks_the_parts_the_net_has(compose, compose_plain):
    smoke = compose("debug=smoke")
    assert (smoke.data.image_size, smoke.data.batch_size, smoke.trainer.max_epochs) == (64, 8, 1)
    enc = smoke.model.net.encoder
    assert (enc.embed_dim, enc.depth, enc.num_heads, enc.image_size) == (64, 1, 2, 64)
    assert smoke.model.net.memory.size == 16 and list(smoke.model.net.decoder.channels) == [32, 16, 16, 8, 8]
    assert smoke.model.net.memory.dim == smoke.model.net.coord_attention.channels == 64  # widths follow the encoder
    base = compose("debug=smoke", "ablation=base")
    assert base.model.net.memory is None and base.model.net.coord_attention is None  # not brought back by debug_net
    cae = compose_plain("model=cae", "debug=smoke")
    assert cae["model"]["net"]["image_size"] == 64 and "encoder" not in cae["model"]["net"]
    assert isinstance(build_module(cae["model"]).net, ConvAutoencoder)


OLD = ["model.epochs=3", "model.image_size=64", "model.batch_size=4", "model.memory.size=7", "model.optimizer.lr=0.01"]
NEW = ["trainer.max_epochs=3", "data.image_size=64", "data.batch_size=4", "model.net.memory.size=7",
       "model.optimizer.lr=0.01"]


def test_old_spellings_compose_to_the_new_keys(compose):
    assert rewrite_overrides(OLD) == NEW
    cfg = compose(*OLD)
    assert (cfg.trainer.max_epochs, cfg.data.image_size, cfg.data.batch_size) == (3, 64, 4)
    assert cfg.model.net.memory.size == 7 and cfg.model.optimizer.lr == 0.01
    assert cfg.model.net.encoder.image_size == 64  # the net follows data.image_size
    assert OmegaConf.to_container(cfg) == OmegaConf.to_container(compose(*NEW))


@pytest.mark.parametrize("old, new", [
    ("model.memory.warmup_epochs=2", "callbacks.memory_training.warmup_epochs=2"),
    ("model.memory.restart_every=50", "callbacks.memory_training.restart_every=50"),
    ("model.memory.restart_min_share=0.2", "callbacks.memory_training.restart_min_share=0.2"),
    ("model.optimizer.warmup_epochs=5", "model.scheduler.warmup_epochs=5"),
    ("model.encoder.depth=2", "model.net.encoder.depth=2"),
    ("model.coord_attention.reduction=4", "model.net.coord_attention.reduction=4"),
    ("model.decoder.channels=[8,8,8,8,8]", "model.net.decoder.channels=[8,8,8,8,8]"),
    ("+model.memory.shrink_threshold=0.01", "+model.net.memory.shrink_threshold=0.01"),
    ("data.n_train=5", "data.n_train=5"),  # keys that did not move stay as they are
    ("model=cae", "model=cae"),
])
def test_moved_keys_are_rewritten_with_prefix_and_value(old, new):
    assert rewrite_overrides([old]) == [new]
    assert new_key(old.lstrip("+").partition("=")[0]) == new.lstrip("+").partition("=")[0]


def test_moved_memory_training_keys_reach_the_callback(compose):
    cfg = compose("model.memory.warmup_epochs=2", "model.memory.restart_every=50", "model.optimizer.warmup_epochs=3")
    assert (cfg.callbacks.memory_training.warmup_epochs, cfg.callbacks.memory_training.restart_every) == (2, 50)
    assert cfg.model.scheduler.warmup_epochs == 3
    assert compose().callbacks.memory_training.warmup_epochs == 10  # the CPU preset's own warm-up


def test_the_command_line_wins_over_the_debug_preset(compose):
    """debug=smoke shrinks the net, but a size given on the command line is the one that is built."""
    cfg = compose("debug=smoke", "model.net.memory.size=32", "model.net.encoder.depth=3")
    assert (cfg.model.net.memory.size, cfg.model.net.encoder.depth) == (32, 3)
    assert cfg.model.net.encoder.embed_dim == 64  # the rest of the debug sizes still apply
    old = compose("debug=smoke", "model.memory.size=32")  # the old spelling too
    assert old.model.net.memory.size == 32
