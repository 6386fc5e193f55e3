"""The memory's vector-quantisation options: a top-k read-out (``readout=topk``), the straight-through gradient,
and items moved by EMA towards their queries or kept frozen (``update=ema|frozen``)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from helpers import TINY_DEMO, read_metrics, run_here
from vitmemad.checkpoint import load_checkpoint
from vitmemad.models import MemoryModule, TransposedConvDecoder, ViTEncoder, ViTMemAE
from vitmemad.models.loss import memory_feature_loss


def memory(**kwargs) -> MemoryModule:
    torch.manual_seed(0)
    return MemoryModule(6, 4, temperature=0.1, **kwargs)


def feature_map(b: int = 2, hw: int = 3) -> torch.Tensor:
    return torch.randn(b, 4, hw, hw, generator=torch.Generator().manual_seed(1))


def queries_of(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(2).transpose(1, 2)


def test_top_1_reads_out_exactly_the_most_similar_item():
    mem = memory(readout="topk", top_k=1).eval()
    x = feature_map()
    out, weights = mem(x)
    nearest = (F.normalize(queries_of(x), dim=-1) @ F.normalize(mem.items, dim=-1).t()).argmax(dim=-1)
    assert torch.equal(weights, F.one_hot(nearest, 6).to(weights.dtype))
    assert torch.equal(queries_of(out), mem.items.detach()[nearest])


def test_euclidean_top_1_reads_out_the_nearest_item_by_distance():
    mem = memory(readout="topk", top_k=1, addressing="euclidean").eval()
    x = feature_map()
    out, _ = mem(x)
    nearest = torch.cdist(queries_of(x), mem.items.detach()[None]).argmin(dim=-1)
    assert torch.equal(queries_of(out), mem.items.detach()[nearest])


def test_top_k_keeps_the_k_largest_softmax_weights_renormalised():
    soft, top3 = memory().eval(), memory(readout="topk", top_k=3).eval()
    x = feature_map()
    full = soft.address(queries_of(x))
    _, weights = top3(x)
    assert ((weights > 0).sum(dim=-1) == 3).all()
    torch.testing.assert_close(weights.sum(dim=-1), torch.ones(2, 9))
    kept = full.topk(3, dim=-1)
    torch.testing.assert_close(weights.gather(-1, kept.indices), kept.values / kept.values.sum(-1, keepdim=True))


def test_straight_through_passes_the_gradient_to_the_queries_and_keeps_the_value():
    x = feature_map().requires_grad_(True)
    plain_out, _ = memory(readout="topk", top_k=1)(x)
    plain_out.sum().backward()
    assert x.grad.abs().max() < 1e-5  # a one-hot read-out has (up to rounding) no gradient to its query
    x.grad = None
    st_out, _ = memory(readout="topk", top_k=1, straight_through=True)(x)
    torch.testing.assert_close(st_out, plain_out.detach())
    st_out.sum().backward()
    torch.testing.assert_close(x.grad, torch.ones_like(x))


def test_ema_moves_each_addressed_item_towards_the_mean_of_its_queries_and_leaves_the_rest():
    mem = memory(readout="topk", top_k=1, update="ema", ema_decay=0.9, addressing="dot").train()
    assert not mem.items.requires_grad
    before = mem.items.detach().clone()
    x = feature_map()
    out, weights = mem(x)
    assign = weights.reshape(-1, 6).argmax(dim=-1)
    q = queries_of(x).reshape(-1, 4)
    for i in range(6):
        mine = q[assign == i]
        expected = before[i] if len(mine) == 0 else 0.9 * before[i] + 0.1 * mine.mean(dim=0)
        torch.testing.assert_close(mem.items[i], expected)
    assert len(assign.unique()) < 6  # some item was left alone, so the branch above was exercised both ways
    torch.testing.assert_close(queries_of(out), before[assign].reshape(2, 9, 4))  # read out before the update


def test_items_updated_in_place_still_let_the_loss_back_propagate():
    mem = memory(readout="topk", top_k=2, update="ema", addressing="dot", straight_through=True).train()
    x = feature_map().requires_grad_(True)
    out, _ = mem(x)
    (out ** 2).sum().backward()  # would fail if backward needed items changed in place after the read-out
    assert torch.isfinite(x.grad).all() and torch.count_nonzero(x.grad) > 0


def test_frozen_items_stay_where_they_started_through_training_steps():
    mem = memory(readout="topk", top_k=2, update="frozen", straight_through=True).train()
    before = mem.items.detach().clone()
    encoder = torch.nn.Conv2d(4, 4, 1)
    opt = torch.optim.Adam([*encoder.parameters(), *mem.parameters()], lr=0.1)
    for _ in range(3):
        x = feature_map()
        out, _ = mem(encoder(x))
        loss = F.mse_loss(out, x)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert torch.equal(mem.items, before) and mem.items.grad is None
    assert encoder.weight.grad is not None and torch.count_nonzero(encoder.weight.grad) > 0


def test_the_memory_loss_pulls_the_encoder_towards_its_items_through_a_straight_through_readout():
    """The codebook + commitment term must see the plain read-out: through the straight-through path its codebook
    part would push each query away from its item."""
    torch.manual_seed(0)
    net = ViTMemAE(ViTEncoder(image_size=32, patch_size=16, embed_dim=8, depth=1, num_heads=2),
                   TransposedConvDecoder(8, [8, 4, 4, 4, 4], 16),
                   memory=MemoryModule(6, 8, readout="topk", top_k=1, straight_through=True, update="ema",
                                       addressing="euclidean", init="features")).train()
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    net.initialize_memory(x)
    out = net(x)
    queries, readout = out["memory_queries"], out["memory_readout"]
    (grad,) = torch.autograd.grad(memory_feature_loss(queries, readout, commitment=0.25), queries)
    towards_items = readout.detach() - queries.detach()
    assert (grad * towards_items).sum() < 0  # a descent step moves the queries onto their items


@pytest.mark.parametrize("kwargs,key", [({"readout": "hard"}, "memory.readout"), ({"update": "sgd"}, "memory.update"),
                                        ({"readout": "topk", "top_k": 7}, "memory.top_k"),
                                        ({"update": "ema", "ema_decay": 1.0}, "memory.ema_decay")])
def test_bad_readout_options_name_their_key(kwargs, key):
    with pytest.raises(ValueError, match=key):
        MemoryModule(6, 4, **kwargs)


def test_a_run_with_a_nearest_item_readout_and_ema_items_trains_and_reports_a_one_item_readout(tmp_path):
    run_here("vitmemad.train", *TINY_DEMO, "model.net.memory.init=coreset", "model.net.memory.readout=topk",
             "model.net.memory.top_k=1", "model.net.memory.straight_through=true", "model.net.memory.update=ema",
             "data.batch_size=8", "num_threads=1", f"hydra.run.dir={tmp_path}")
    state = load_checkpoint(tmp_path / "checkpoints" / "last.ckpt")["state_dict"]
    assert bool(state["net.memory.initialized"]) and torch.isfinite(state["net.memory.items"]).all()
    record = read_metrics(tmp_path)
    assert record["memory"]["mean_active_items"] == pytest.approx(1.0)
    assert all(0.0 <= record[k] <= 1.0 for k in ("image_AUROC", "pixel_AUROC", "PRO"))
