"""The memory's health: the collapse detector on synthetic addressing, and the codebook + commitment loss
(``loss.lambda_mem``) that ties the read-out to the features it replaces, and a training run whose items start
as a coreset of every training image's features (``memory.init=coreset``)."""
from __future__ import annotations

import torch

from helpers import TINY_DEMO, read_metrics, run_here
from vitmemad.checkpoint import load_checkpoint
from vitmemad.models import MemoryModule
from vitmemad.models.loss import ReconstructionLoss, memory_feature_loss
from vitmemad.models.memory_stats import COLLAPSED_BELOW, MemoryUsage, USED_SHARE


def one_hot_weights(item_of_query: torch.Tensor, num_items: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(item_of_query, num_items).float()[None]  # (1, Q, N)


def test_a_memory_whose_mass_sits_on_a_few_items_is_reported_collapsed():
    n, q = 400, 4000
    # the tire failure: one item takes ~97 % of the mass, a handful take the rest
    item = torch.zeros(q, dtype=torch.long)
    item[: 120] = torch.arange(1, 4).repeat(40)
    collapsed = MemoryUsage(n)
    collapsed.update(one_hot_weights(item, n))
    stats = collapsed.compute()
    assert stats["collapsed"] and stats["used_fraction"] == 4 / n
    assert stats["usage"][0] > 0.95 and stats["unused_fraction"] == 1 - 4 / n

    healthy = MemoryUsage(n)
    healthy.update(one_hot_weights(torch.arange(q) % n, n))  # every item serves 10 queries
    assert not healthy.compute()["collapsed"] and healthy.compute()["used_fraction"] == 1.0

    # the boundary: just enough items above 0.1/N of the mass is not a collapse, one fewer is
    used = int(COLLAPSED_BELOW * n)
    for k, expect in ((used, False), (used - 1, True)):
        usage = MemoryUsage(n)
        usage.update(one_hot_weights(torch.arange(q) % k, n))
        stats = usage.compute()
        assert stats["used_fraction"] == k / n and stats["collapsed"] is expect
        assert min(u for u in stats["usage"] if u > 0) >= USED_SHARE / n


def test_validation_warns_when_the_memory_collapses_and_says_when_it_is_in_use_again(caplog):
    """The restarts revive a memory that collapsed when it started: the log says so instead of leaving the warning
    as the last word, and a second collapse warns again."""
    from vitmemad.callbacks import MemoryDiagnostics

    n, q = 400, 4000

    def usage(items_in_use: int) -> dict:
        usage = MemoryUsage(n)
        usage.update(one_hot_weights(torch.arange(q) % items_in_use, n))
        return usage.compute()

    collapsed, hovering, healthy = usage(1), usage(int(1.5 * COLLAPSED_BELOW * n)), usage(n)
    assert collapsed["collapsed"] and not hovering["collapsed"] and not healthy["collapsed"]
    diagnostics = MemoryDiagnostics()
    with caplog.at_level("WARNING", logger="vitmemad.callbacks.memory"):
        for epoch, stats in enumerate((healthy, collapsed, collapsed, healthy, healthy, collapsed,
                                       hovering, collapsed, hovering)):
            diagnostics.report(stats, epoch)
    # at the threshold and a little above it (15 % in use), a memory is not yet back: one warning, not one a epoch
    assert [r.getMessage().split(":")[0] for r in caplog.records] == [
        "memory collapsed at epoch 1", "memory in use again at epoch 3", "memory collapsed at epoch 5"]
    assert "only 0.2 % of the 400 items" in caplog.records[0].getMessage()
    assert "100.0 % of the 400 items" in caplog.records[1].getMessage()


def test_the_image_share_of_the_readout_sees_a_readout_that_is_the_same_for_every_image():
    """Every item in use and the read-out close to the features, yet one read-out for all images: the failure of
    the codebook loss on tire, where the encoder's features stopped depending on the image."""
    torch.manual_seed(0)
    n, images = 16, 12
    weights = torch.full((images, 9, n), 1.0 / n)  # blended over every item: usage says healthy
    per_position = torch.randn(1, 8, 3, 3)  # what the features share at each position, across images
    features = per_position + 0.01 * torch.randn(images, 8, 3, 3)
    stuck = MemoryUsage(n)
    for part in (slice(0, 5), slice(5, None)):  # over two batches, as validation sees them
        stuck.update(weights[part], features[part], per_position.expand(len(features[part]), -1, -1, -1))
    stats = stuck.compute()
    assert not stats["collapsed"] and stats["feature_relative_error"] < 0.001
    assert abs(stats["readout_image_share"]) < 1e-12
    assert 0 < stats["feature_image_share"] < 0.001  # the features barely vary either

    # a read-out that follows the image: its share is the exact between-image variance over the mean square
    readout = torch.randn(images, 8, 3, 3, dtype=torch.float64)
    follows = MemoryUsage(n)
    follows.update(weights, readout, readout)
    stats = follows.compute()
    expected = float(readout.var(0, unbiased=False).sum() / readout.pow(2).mean(0).sum())
    assert abs(stats["readout_image_share"] - expected) < 1e-12 and stats["readout_image_share"] > 0.8
    assert stats["feature_image_share"] == stats["readout_image_share"] and stats["feature_relative_error"] == 0


def test_memory_feature_loss_is_zero_for_a_perfect_readout_and_scale_free():
    z = torch.randn(2, 16, 8)
    assert memory_feature_loss(z, z.clone(), 0.25).item() == 0.0
    far = torch.zeros_like(z)
    assert torch.isclose(memory_feature_loss(z, far, 0.0), torch.tensor(1.0))  # all of the energy lost
    assert torch.isclose(memory_feature_loss(10 * z, 10 * far, 0.25), memory_feature_loss(z, far, 0.25))


def test_the_codebook_term_moves_items_and_the_commitment_term_moves_the_encoder():
    z = torch.randn(1, 8, 6, requires_grad=True)
    readout = torch.randn(1, 8, 6, requires_grad=True)
    memory_feature_loss(z, readout, commitment=0.0).backward()
    assert z.grad.abs().sum() == 0 and readout.grad.abs().sum() > 0  # stop-gradient on the features
    z.grad = readout.grad = None
    memory_feature_loss(z, readout, commitment=0.25).backward()
    assert z.grad.abs().sum() > 0


def test_lambda_mem_adds_the_term_to_the_loss_and_zero_leaves_the_paper_loss():
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    out = {"reconstruction": x * 0.5, "memory_weights": torch.full((2, 4, 10), 0.1),
           "memory_queries": torch.randn(2, 6, 2, 2), "memory_readout": torch.zeros(2, 6, 2, 2)}
    paper = ReconstructionLoss().terms(x, out)
    tied = ReconstructionLoss(lambda_mem=0.5).terms(x, out)
    assert torch.isclose(paper["memory"], tied["memory"]) and paper["memory"] > 0  # logged either way
    assert torch.isclose(tied["loss"], paper["loss"] + 0.5 * tied["memory"])
    assert torch.equal(paper["loss"], ReconstructionLoss()(x, out["reconstruction"], out["memory_weights"])["loss"])


def test_training_the_readout_with_the_loss_spreads_usage_and_shrinks_the_feature_error():
    """Clustered features, items started on two of them: the loss (plus restarts) fits all the clusters."""
    torch.manual_seed(0)
    centres = torch.randn(32, 16) * 3
    memory = MemoryModule(64, 16, temperature=0.1)
    memory.initialize_from(centres[:2].repeat(32, 1) + 0.01 * torch.randn(64, 16))  # a collapsed start
    opt = torch.optim.Adam(memory.parameters(), lr=0.05)

    def batch() -> torch.Tensor:
        return (centres[torch.randint(32, (256,))] + 0.1 * torch.randn(256, 16)).T.reshape(1, 16, 16, 16)

    def stats() -> dict:
        usage = MemoryUsage(64)
        with torch.no_grad():
            z = batch()
            out, w = memory(z)
        usage.update(w, z.flatten(2).transpose(1, 2), out.flatten(2).transpose(1, 2))
        return usage.compute()

    before = stats()
    memory.train()
    for step in range(300):
        z = batch()
        out, _ = memory(z)
        loss = memory_feature_loss(z, out, 0.25)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 20 == 19:
            memory.restart_dead_items(0.1, torch.Generator().manual_seed(step))
    after = stats()
    assert before["feature_relative_error"] > 0.5  # two prototypes cannot stand for 32 patterns
    assert after["used_fraction"] >= 0.3 and after["feature_relative_error"] < 0.2, after


def test_a_run_with_coreset_items_starts_them_from_every_training_batch(tmp_path):
    proc = run_here("vitmemad.train", *TINY_DEMO, "model.net.memory.init=coreset", "data.batch_size=8",
                    "num_threads=1", f"hydra.run.dir={tmp_path}")
    log_text = (tmp_path / "train.log").read_text()
    assert "start as a k-center coreset of every training image's features" in log_text, proc.stdout[-2000:]
    state = load_checkpoint(tmp_path / "checkpoints" / "last.ckpt")["state_dict"]
    assert bool(state["net.memory.initialized"]) and torch.isfinite(state["net.memory.items"]).all()
    record = read_metrics(tmp_path)
    assert record["memory"]["num_items"] == state["net.memory.items"].shape[0]
    assert all(0.0 <= record[k] <= 1.0 for k in ("image_AUROC", "pixel_AUROC", "PRO"))
