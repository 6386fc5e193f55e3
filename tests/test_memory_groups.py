"""``memory.groups``: each token read out as G parts from one set of narrower items (product quantisation)."""
from __future__ import annotations

import pytest
import torch

from vitmemad.models.memory import MemoryModule

# three items of width 4, far apart
ITEMS = torch.tensor([[4.0, 0, 0, 0], [0, 0, 4.0, 0], [0, 4.0, 0, 4.0]])


def grouped_memory(groups: int, dim: int = 8, **kwargs) -> MemoryModule:
    mem = MemoryModule(size=3, dim=dim, addressing="euclidean", readout="topk", top_k=1, init="features",
                       groups=groups, **kwargs)
    with torch.no_grad():
        mem.items.copy_(ITEMS)
    mem.initialized.fill_(True)
    return mem.eval()


def token(a: int, b: int) -> torch.Tensor:
    """The width-8 token that is item a followed by item b."""
    return torch.cat([ITEMS[a], ITEMS[b]])


def tokens(*pairs: tuple[int, int]) -> torch.Tensor:
    """A (1, 8, 1, T) feature map whose token t is ``token(a, b)``, plus a little noise."""
    rows = torch.stack([token(a, b) for a, b in pairs]).t()
    return (rows + 0.05 * torch.randn(8, len(pairs)))[None, :, None, :]


def test_each_part_of_a_token_is_read_out_as_its_own_nearest_item():
    torch.manual_seed(0)
    feature_map = tokens((0, 1), (2, 0), (1, 1))
    readout, weights = grouped_memory(groups=2)(feature_map)
    expected = torch.stack([token(a, b) for a, b in ((0, 1), (2, 0), (1, 1))]).t()
    torch.testing.assert_close(readout, expected[None, :, None, :])
    # one query per part, in token order: token 0's parts are queries 0 and 1
    assert weights.shape == (1, 6, 3)
    assert weights.argmax(-1).flatten().tolist() == [0, 1, 2, 0, 1, 1]


def test_a_grouped_memory_rebuilds_combinations_a_whole_token_memory_of_the_same_items_cannot():
    """Three items of width 8 hold three tokens; as two parts of width 4 they hold all nine pairs."""
    torch.manual_seed(0)
    pairs = [(a, b) for a in range(3) for b in range(3)]
    feature_map = tokens(*pairs)
    grouped_error = (grouped_memory(groups=2)(feature_map)[0] - feature_map).square().mean()
    whole = MemoryModule(size=3, dim=8, addressing="euclidean", readout="topk", top_k=1).eval()
    with torch.no_grad():
        whole.items.copy_(torch.stack([token(a, a) for a in range(3)]))
    whole_error = (whole(feature_map)[0] - feature_map).square().mean()
    assert grouped_error < 0.01 < whole_error


def test_grouped_items_are_initialised_updated_and_restarted_as_parts():
    torch.manual_seed(0)
    mem = MemoryModule(size=4, dim=8, addressing="euclidean", readout="topk", top_k=1, init="coreset",
                       update="ema", ema_decay=0.5, groups=2)
    assert mem.items.shape == (4, 4)
    feature_map = torch.randn(2, 8, 3, 3)
    parts = feature_map.flatten(2).transpose(1, 2).reshape(-1, 4)
    mem.initialize_from(feature_map.flatten(2).transpose(1, 2).reshape(-1, 8))
    dist = torch.cdist(mem.items.detach(), parts)
    assert (dist.min(dim=1).values < 1e-5).all()  # every item is one of the 36 parts
    before = mem.items.detach().clone()
    mem.train()
    mem(feature_map)
    assert not torch.equal(before, mem.items)  # EMA moved the addressed items towards their parts
    mem.usage[0] = 0.0
    assert mem.restart_dead_items(min_share=0.5, generator=torch.Generator().manual_seed(0)) >= 1
    assert torch.cdist(mem.items[:1].detach(), parts).min() < 1e-5
    assert "groups=2" in repr(mem)


@pytest.mark.parametrize("groups", [0, 3])
def test_groups_must_divide_the_width(groups):
    with pytest.raises(ValueError, match="memory.groups must be >= 1 and divide memory.dim=8"):
        MemoryModule(size=3, dim=8, groups=groups)
