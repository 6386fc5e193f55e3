"""Shapes and math of each model component (paper sec. 3) and of the losses (eqs. 11-15)."""
from __future__ import annotations

import math

import kornia
import pytest
import torch

from vitmemad.models.anomaly_map import AnomalyMapGenerator, error_term, msgms_error, resize_maps
from vitmemad.models.cae import ConvAutoencoder
from vitmemad.models.coreset import greedy_coreset
from vitmemad.models.coord_attention import CoordinateAttention
from vitmemad.models.decoder import TransposedConvDecoder
from vitmemad.models.encoder import ViTEncoder
from vitmemad.models.loss import ReconstructionLoss, entropy_loss, ssim_map
from vitmemad.models.memory import MemoryModule, hard_shrink_relu
from vitmemad.models.vitmemad import ViTMemAE

torch.manual_seed(0)


def vit(image_size: int = 64, patch_size: int = 16, embed_dim: int = 32, depth: int = 2, num_heads: int = 4,
        decoder_channels=(32, 16, 16, 8, 8), memory: bool = True, coord_attention: bool = True,
        memory_size: int = 100, memory_init: str = "random", ca_reduction: int = 32) -> ViTMemAE:
    """A small ViTMemAE assembled from its parts, as conf/model/vitmemad_*.yaml instantiates it."""
    encoder = ViTEncoder(image_size=image_size, patch_size=patch_size, embed_dim=embed_dim, depth=depth,
                         num_heads=num_heads)
    return ViTMemAE(
        encoder=encoder,
        decoder=TransposedConvDecoder(embed_dim, decoder_channels, patch_size=patch_size),
        memory=MemoryModule(memory_size, embed_dim, init=memory_init) if memory else None,
        coord_attention=CoordinateAttention(embed_dim, ca_reduction) if coord_attention else None,
    )


def test_encoder_returns_patch_feature_map_without_cls():
    enc = ViTEncoder(image_size=64, embed_dim=48, depth=2, num_heads=4)
    x = torch.randn(2, 3, 64, 64)
    f = enc(x)
    assert f.shape == (2, 48, 4, 4)
    assert enc.pos_embed.shape == (1, 17, 48)  # N + 1 rows: one for [cls]
    # Each output position belongs to one patch: perturbing only patch (0, 0) changes its token most.
    x2 = x.clone()
    x2[:, :, :16, :16] += 1.0
    delta = (enc(x2) - f).abs().mean(dim=(0, 1))
    assert delta.argmax() == 0


def test_encoder_paper_preset_shape():
    enc = ViTEncoder(image_size=384, embed_dim=768, depth=1, num_heads=8)
    assert enc(torch.randn(1, 3, 384, 384)).shape == (1, 768, 24, 24)


@pytest.mark.parametrize("bad", [dict(image_size=70), dict(embed_dim=30, num_heads=4)])
def test_encoder_rejects_inconsistent_sizes(bad):
    with pytest.raises(ValueError):
        ViTEncoder(**{**dict(image_size=64, embed_dim=32, depth=1, num_heads=4), **bad})


def test_hard_shrinkage_matches_eq10_and_renormalises():
    w = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    out = hard_shrink_relu(w, threshold=0.25, eps=0.0)
    # Items below lambda are zeroed; the rest keep their weight (relu(w-l)*w/|w-l| = w) and renormalise.
    torch.testing.assert_close(out, torch.tensor([[0.5 / 0.8, 0.3 / 0.8, 0.0, 0.0]]))


def test_memory_weights_sum_to_one_and_zero_items_below_lambda():
    mem = MemoryModule(size=20, dim=16, temperature=0.1)
    f = torch.randn(3, 16, 5, 5)
    out, w = mem(f)
    assert out.shape == f.shape and w.shape == (3, 25, 20)
    torch.testing.assert_close(w.sum(-1), torch.ones(3, 25))
    raw = mem.address(f.flatten(2).transpose(1, 2))
    below = raw < mem.shrink_threshold
    assert below.any() and (w[below] == 0).all()
    assert (w[raw > mem.shrink_threshold * 1.01] > 0).all()
    # z_hat = w_hat M (eq. 9)
    torch.testing.assert_close(out.flatten(2).transpose(1, 2), w @ mem.items)


def test_memory_literal_cosine_is_nearly_uniform_and_temperature_sharpens():
    q = torch.randn(100, 16)
    literal_mem = MemoryModule(50, 16, temperature=1.0)
    literal = literal_mem.address(q)
    assert (literal.max(-1).values / literal.min(-1).values).max() <= math.e**2 + 1e-4
    sharp = MemoryModule(50, 16, temperature=0.05)
    sharp.items.data.copy_(literal_mem.items.data)
    assert entropy_loss(sharp.address(q)) < 0.9 * entropy_loss(literal)


def test_memory_dot_addressing_and_bad_options():
    mem = MemoryModule(10, 8, addressing="dot")
    q = torch.randn(4, 8)
    torch.testing.assert_close(mem.address(q), torch.softmax(q @ mem.items.t(), -1))
    with pytest.raises(ValueError, match="addressing"):
        MemoryModule(10, 8, addressing="l2")
    with pytest.raises(ValueError, match="temperature"):
        MemoryModule(10, 8, temperature=0)
    with pytest.raises(ValueError, match="memory.size"):
        MemoryModule(0, 8)
    with pytest.raises(ValueError, match="memory.init"):
        MemoryModule(10, 8, init="zeros")
    assert MemoryModule(size=10, dim=8).shrink_threshold == pytest.approx(0.1)  # lambda = 1/N by default


def test_coordinate_attention_preserves_shape_and_is_position_aware():
    ca = CoordinateAttention(32, reduction=4).eval()
    x = torch.randn(2, 32, 6, 9)
    y = ca(x)
    assert y.shape == x.shape
    # Gates in (0, 1): |y| <= |x| element-wise.
    assert (y.abs() <= x.abs() + 1e-6).all()
    # Row gates depend on the row: a feature map that varies only along H gets different gates per row.
    ramp = torch.linspace(-2, 2, 6)[None, None, :, None].expand(1, 32, 6, 9).contiguous()
    ratio = ca(ramp) / ramp
    assert not torch.allclose(ratio[0, 0, 0], ratio[0, 0, -1])


def test_decoder_upsamples_16x_into_tanh_range():
    dec = TransposedConvDecoder(64, (32, 16, 16, 8, 8))
    convs = [m for m in dec.modules() if isinstance(m, torch.nn.ConvTranspose2d)]
    bns = [m for m in dec.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(convs) == 6 and len(bns) == 5
    y = dec(torch.randn(2, 64, 4, 4) * 50)
    assert y.shape == (2, 3, 64, 64)
    assert y.min() >= -1 and y.max() <= 1


def test_smaller_patch_keeps_six_layers_and_upsamples_by_the_patch():
    # Patch 8: three x2 layers (kernel 4, stride 2), then three that keep the size.
    dec = TransposedConvDecoder(64, (32, 16, 16, 8, 8), patch_size=8)
    strides = [m.stride[0] for m in dec.modules() if isinstance(m, torch.nn.ConvTranspose2d)]
    assert strides == [2, 2, 2, 1, 1, 1]
    model = vit(patch_size=8, memory_size=10)
    assert model.encoder.grid == 8
    out = model(torch.randn(2, 3, 64, 64))
    assert out["reconstruction"].shape == (2, 3, 64, 64) and out["memory_weights"].shape == (2, 64, 10)


@pytest.mark.parametrize("patch_size", [12, 1, 128])
def test_patch_size_that_the_decoder_cannot_undo_is_refused(patch_size):
    with pytest.raises(ValueError, match="model.net.encoder.patch_size must be a power of two"):
        vit(image_size=384, patch_size=patch_size)


def test_parts_that_do_not_fit_the_encoder_are_refused():
    encoder = ViTEncoder(image_size=64, patch_size=16, embed_dim=32, depth=1, num_heads=4)
    with pytest.raises(ValueError, match="decoder undoes patches of 8 px"):
        ViTMemAE(encoder, TransposedConvDecoder(32, (32, 16, 16, 8, 8), patch_size=8))
    decoder = TransposedConvDecoder(32, (32, 16, 16, 8, 8))
    with pytest.raises(ValueError, match="memory works on 16 channels"):
        ViTMemAE(encoder, decoder, memory=MemoryModule(10, 16))
    with pytest.raises(ValueError, match="coord_attention works on 48 channels"):
        ViTMemAE(encoder, decoder, coord_attention=CoordinateAttention(48))


@pytest.mark.parametrize("memory,ca", [(False, False), (True, False), (False, True), (True, True)])
def test_ablation_variants(memory, ca):
    model = vit(memory=memory, coord_attention=ca, memory_size=10)
    assert (model.memory is not None) == memory and (model.coord_attention is not None) == ca
    out = model(torch.randn(2, 3, 64, 64))
    assert out["reconstruction"].shape == (2, 3, 64, 64)
    assert (out["memory_weights"] is not None) == memory


def test_cae_shapes():
    cae = ConvAutoencoder(image_size=64, latent_dim=20, width=8)
    out = cae(torch.randn(2, 3, 64, 64))
    assert out["reconstruction"].shape == (2, 3, 64, 64) and out["memory_weights"] is None


def test_loss_terms():
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    y = (x + 0.1 * torch.randn_like(x)).clamp(-1, 1)
    loss = ReconstructionLoss(lambda_recon=1.0, lambda_ssim=0.5, lambda_ent=0.01)
    w = torch.softmax(torch.randn(2, 4, 10), -1)
    terms = loss(x, y, w)
    torch.testing.assert_close(terms["l2"], ((x - y) ** 2).mean())
    # kornia's ssim_loss is (1 - SSIM) / 2; ours is the paper's mean(1 - SSIM).
    torch.testing.assert_close(terms["ssim"], 2 * kornia.losses.ssim_loss(x, y, 11, max_val=2.0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(terms["entropy"], -(w * torch.log(w)).sum(-1).mean(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(terms["loss"], terms["l2"] + 0.5 * terms["ssim"] + 0.01 * terms["entropy"])
    same = loss(x, x, None)
    assert same["l2"] == 0 and same["ssim"].abs() < 1e-5 and same["entropy"] == 0


def test_gms_loss_term_is_the_maps_gms_and_trains_a_flat_reconstruction():
    """lambda_gms adds the mean of the anomaly map's 1 - MSGMS term; off, it is neither computed nor logged. Its
    gradient stays finite where the reconstruction is flat (zero gradient magnitude)."""
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    flat = torch.zeros_like(x, requires_grad=True)
    assert "gms" not in ReconstructionLoss()(x, flat)
    terms = ReconstructionLoss(lambda_ssim=0.5, lambda_gms=2.0)(x, flat)
    torch.testing.assert_close(terms["gms"], error_term("gms", x, flat.detach()).mean())
    torch.testing.assert_close(terms["loss"], terms["l2"] + 0.5 * terms["ssim"] + 2.0 * terms["gms"])
    terms["loss"].backward()
    assert torch.isfinite(flat.grad).all() and flat.grad.abs().sum() > 0


def test_entropy_loss_extremes_and_minimising_sharpens():
    n = 8
    torch.testing.assert_close(entropy_loss(torch.full((5, n), 1 / n)), torch.tensor(math.log(n)))
    assert entropy_loss(torch.eye(n)).abs() < 1e-6
    logits = torch.zeros(1, n, requires_grad=True)
    opt = torch.optim.SGD([logits], lr=1.0)
    with torch.no_grad():
        logits[0, 0] = 0.1
    for _ in range(50):
        opt.zero_grad()
        entropy_loss(torch.softmax(logits, -1)).backward()
        opt.step()
    assert torch.softmax(logits, -1).max() > 0.9


def test_anomaly_map_sources_and_resize():
    x = torch.zeros(1, 3, 32, 32)
    r = x.clone()
    r[:, :, 10:14, 20:24] = 1.0
    for source in ("l2", "ssim", "both", "gms", "all"):
        m = AnomalyMapGenerator(source=source, sigma=2.0)(x, r)
        assert m.shape == (1, 32, 32)
        assert m[0, 12, 22] > m[0, 28, 4]
    sharp = AnomalyMapGenerator(source="l2", sigma=0)(x, r)
    torch.testing.assert_close(sharp[0, 10:14, 20:24], torch.ones(4, 4))
    assert resize_maps(sharp, (96, 64)).shape == (1, 96, 64)
    with pytest.raises(ValueError, match="source"):
        AnomalyMapGenerator(source="l1")


def test_msgms_error_reads_edges_not_brightness():
    """1 - MSGMS is 0 for a copy and for a uniformly brighter copy (same edges), which L2 is not; a missing edge
    scores near 1 along it, and the sum of terms ``all`` is l2 + ssim + gms."""
    x = torch.full((1, 3, 64, 64), -0.5)
    x[:, :, 20:40, 20:40] = 0.5  # a bright square: edges along its border
    brighter = x + 0.2
    assert msgms_error(x, x).abs().max() < 1e-6
    assert msgms_error(x, brighter).abs().max() < 1e-6 and error_term("l2", x, brighter).min() > 0.03
    flat = torch.full_like(x, -0.5)  # the square missing from the reconstruction
    gms = msgms_error(x, flat)
    assert gms[0, 20, 30] > 0.99 and gms[0, 30, 30] < 0.3 and gms[0, 5, 5] < 0.01  # its border, inside, far away
    terms = sum(error_term(term, x, flat) for term in ("l2", "ssim", "gms"))
    torch.testing.assert_close(AnomalyMapGenerator(source="all", sigma=0)(x, flat), terms)


def test_ssim_map_is_one_for_identical_images():
    x = torch.rand(1, 3, 24, 24)
    torch.testing.assert_close(ssim_map(x, x), torch.ones(1, 3, 24, 24), atol=1e-4, rtol=0)


def test_ssim_map_in_training_is_kornias_ssim_on_any_layout():
    """The loss runs SSIM channels-last for speed; its values and gradient are kornia's NCHW ones."""
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    base = (x + 0.3 * torch.randn_like(x)).clamp(-1, 1)
    reference = base.clone().requires_grad_()
    expected = kornia.metrics.ssim(x, reference, 11, max_val=2.0, padding="same")
    (expected_grad,) = torch.autograd.grad(expected.mean(), reference)
    for layout in (torch.contiguous_format, torch.channels_last):  # the decoder's output is channels-last
        y = base.contiguous(memory_format=layout).requires_grad_()
        got = ssim_map(x, y)
        torch.testing.assert_close(got, expected, atol=0, rtol=0)
        (grad,) = torch.autograd.grad(got.mean(), y)
        torch.testing.assert_close(grad, expected_grad, atol=1e-9, rtol=1e-5)


def test_memory_feature_initialisation_samples_queries_once():
    model = vit(memory_size=10, memory_init="features")
    assert not bool(model.memory.initialized)
    x = torch.randn(2, 3, 64, 64)
    assert model.initialize_memory(x, torch.Generator().manual_seed(0))
    queries = model.encoder(x).flatten(2).transpose(1, 2).reshape(-1, 32)
    # every item is one of the 32 encoder queries, all distinct
    dist = torch.cdist(model.memory.items.detach(), queries.detach(), compute_mode="donot_use_mm_for_euclid_dist")
    assert (dist.min(dim=1).values < 1e-5).all() and dist.argmin(dim=1).unique().numel() == 10
    before = model.memory.items.detach().clone()
    assert not model.initialize_memory(torch.randn(2, 3, 64, 64))  # only once; the flag is saved
    assert torch.equal(before, model.memory.items) and "memory.initialized" in model.state_dict()
    assert not vit(memory_size=10).initialize_memory(x)  # init="random": nothing to do
    assert not vit(memory=False).initialize_memory(x)  # no memory: nothing to do



def test_coreset_initialisation_keeps_the_rare_pattern_a_random_sample_misses():
    """3 items over 2,000 queries in two common clusters and 3 in a rare one: the k-center coreset gives the rare
    cluster an item for every seed; a random sample of the same queries almost never does."""
    gen = torch.Generator().manual_seed(0)
    centers = torch.tensor([[10.0, 0, 0, 0], [0, 10.0, 0, 0], [0, 0, 10.0, 0]])
    sizes = (1000, 1000, 3)
    queries = torch.cat([c + 0.1 * torch.randn(n, 4, generator=gen) for c, n in zip(centers, sizes)])
    covered = {"coreset": 0, "features": 0}
    for seed in range(10):
        for init in covered:
            mem = MemoryModule(size=3, dim=4, init=init)
            mem.initialize_from(queries, torch.Generator().manual_seed(seed))
            nearest_center = torch.cdist(mem.items.detach(), centers).argmin(dim=1)
            covered[init] += int(sorted(nearest_center.tolist()) == [0, 1, 2])
    assert covered == {"coreset": 10, "features": 0}, covered


def test_coreset_initialisation_reads_every_batch_it_is_given():
    """initialize_memory takes an iterable of batches: with init=coreset the items are the k-center coreset of
    the queries of all of them, not of the first."""
    model = vit(memory_size=4, memory_init="coreset")
    batches = [torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(i)) * (1 + 4 * i) for i in range(2)]
    assert model.initialize_memory(iter(batches), torch.Generator().manual_seed(0))
    queries = torch.cat([model.encoder(x).flatten(2).transpose(1, 2).reshape(-1, 32) for x in batches]).detach()
    expected = queries[greedy_coreset(queries, 4, None, torch.Generator().manual_seed(0))]
    torch.testing.assert_close(model.memory.items.detach(), expected, rtol=0, atol=0)
    first_only = queries[:32][greedy_coreset(queries[:32], 4, None, torch.Generator().manual_seed(0))]
    assert not torch.equal(expected, first_only)

def test_dead_memory_items_restart_onto_recent_queries():
    mem = MemoryModule(size=8, dim=4, temperature=0.05)
    mem.usage_momentum = 0.0  # usage = this batch's share
    with torch.no_grad():
        mem.items.copy_(torch.eye(4).repeat(2, 1))
        mem.items[4:] = -1.0  # items 4..7 point away from every query below: never addressed
    queries = torch.rand(1, 4, 3, 3) + 0.5  # all positive: cosine-close to items 0..3 only
    mem.train()
    mem(queries)
    assert (mem.usage[4:] < 0.01).all() and mem.usage[:4].sum() > 0.99
    assert mem.restart_dead_items(min_share=0.1, generator=torch.Generator().manual_seed(0)) == 4
    flat = queries.flatten(2).transpose(1, 2).reshape(-1, 4)
    for item in mem.items[4:].detach():
        assert torch.isclose(flat, item).all(dim=1).any()  # each restarted item is one of the queries
    torch.testing.assert_close(mem.usage[4:], torch.full((4,), 1 / 8))


def test_residual_coordinate_attention_keeps_an_identity_path():
    gated = CoordinateAttention(16, reduction=4).eval()
    residual = CoordinateAttention(16, reduction=4, residual=True).eval()
    residual.load_state_dict(gated.state_dict())
    x = torch.rand(2, 16, 5, 7) + 0.1
    torch.testing.assert_close(residual(x), x + gated(x))
    assert (residual(x) > x).all() and (residual(x) < 2 * x).all()


def test_patch_swap_pastes_batch_content_into_bounded_rectangles():
    from vitmemad.models.corruption import PatchSwap

    images = torch.arange(4.0).view(4, 1, 1, 1).expand(4, 3, 32, 32).contiguous()  # image i is constant i
    original = images.clone()
    torch.manual_seed(0)
    out = PatchSwap(probability=1.0, max_patches=2, min_size=0.25, max_size=0.25)(images)
    assert torch.equal(images, original)  # the clean batch stays intact for the loss
    changed = (out != images).any(dim=1)
    assert set(out.unique().tolist()) <= {0.0, 1.0, 2.0, 3.0}  # only content cut from the batch
    assert (changed.flatten(1).sum(1) <= 2 * 8 * 8).all()  # at most two 8 x 8 rectangles per image
    assert changed.any()
    assert torch.equal(PatchSwap(probability=0.0)(images), images)


@pytest.mark.parametrize(
    "kwargs, key",
    [({"probability": 2.0}, "corruption.probability"), ({"max_patches": 0}, "corruption.max_patches"),
     ({"min_size": 0.5, "max_size": 0.2}, "min_size")],
)
def test_bad_corruption_settings_name_the_key(kwargs, key):
    from vitmemad.models.corruption import PatchSwap

    with pytest.raises(ValueError, match=key):
        PatchSwap(**kwargs)


def test_corruption_configs_instantiate(compose_plain):
    """corruption=none is no corruption (null); corruption=patch_swap the PatchSwap; no other option exists."""
    import hydra
    from hydra.errors import MissingConfigException

    from vitmemad.models.corruption import PatchSwap

    assert compose_plain()["corruption"] is None
    swap = hydra.utils.instantiate(compose_plain("corruption=patch_swap")["corruption"])
    assert isinstance(swap, PatchSwap) and (swap.probability, swap.max_patches) == (0.5, 3)
    with pytest.raises(MissingConfigException, match="cutout"):
        compose_plain("corruption=cutout")
