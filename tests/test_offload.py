"""Blocks kept in CPU memory and loaded one at a time give the same pruning and perplexity as a resident model.

The execution device here is the CPU too, with real copies, so that what the hooks load, write back and drop is
exercised exactly as on a GPU (where the copies cross PCIe)."""

import numpy as np
import pytest
import torch

from dsa_core.models import load_model
from dsa_core.offload import offload_blocks
from dsa_core.session import PruningSession

RATIOS = np.array([0.4, 0.5, 0.6, 0.7])


def session(offload: bool) -> tuple[PruningSession, object]:
    lm = load_model("random:tiny", device="cpu")
    offloader = offload_blocks(lm, "cpu") if offload else None
    return PruningSession(lm, nsamples=2, seqlen=64, data_source="local"), offloader


@pytest.mark.parametrize("metric,mode", [("wanda", "sequential"), ("sparsegpt", "sequential"), ("wanda", "fast")])
def test_offloaded_pruning_matches_a_resident_model(metric, mode):
    (plain, _), (off, offloader) = session(False), session(True)
    results = []
    for s in (plain, off):
        if mode == "fast":  # scores from the dense model, then a re-mask from the cache, as the search does
            s.apply(RATIOS, metric)
        else:
            s.prune_sequential(RATIOS, metric)
        results.append((s.perplexity("wikitext2", "test", 64, 2), s.achieved_sparsity()))
    assert results[0] == results[1]
    assert offloader.resident == len(off.lm.blocks) - 1  # the last block called stays until another is
    offloader.evict()
    for (name, a), b in zip(plain.lm.model.state_dict().items(), off.lm.model.state_dict().values()):
        assert torch.equal(a, b), name
    off.restore()  # the dense weights come back into the blocks' home copies
    assert off.achieved_sparsity()[0] < 0.01


def test_only_changed_blocks_are_written_back():
    lm = load_model("random:tiny", device="cpu")
    offloader = offload_blocks(lm, "cpu")
    q0 = lm.blocks[0].self_attn.q_proj.weight
    home0, home1 = q0.data, lm.blocks[1].self_attn.q_proj.weight.data  # .data: new handles, same storage
    before = home1.clone()
    offloader.load(0)
    assert q0.data_ptr() != home0.data_ptr() and offloader.resident == 0
    with torch.no_grad():
        q0.zero_()  # an in-place change, as pruning makes
    offloader.load(1)  # block 0 goes home with its change; block 1 comes
    assert q0.data_ptr() == home0.data_ptr() and bool((home0 == 0).all())
    with torch.no_grad():
        lm.blocks[1](torch.zeros(1, 4, 64), position_embeddings=(torch.ones(1, 4, 16), torch.zeros(1, 4, 16)))
        home1.add_(1)  # changed at home behind the resident copy's back: only a write-back would undo this
    offloader.remove()
    assert lm.blocks[1].self_attn.q_proj.weight.data_ptr() == home1.data_ptr() and torch.equal(home1, before + 1)
    assert offloader.resident is None
