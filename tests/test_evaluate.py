"""Perplexity: the standard protocol, and the search's repeated measurement of one set of windows (replayed from a
CUDA graph on a GPU, which the last tests need)."""

import gc
import math
import weakref

import pytest
import torch

from dsa_core.evaluate import FixedWindowsKL, FixedWindowsPerplexity, nll_sum, perplexity
from dsa_core.models import load_model
from dsa_core.offload import offload_blocks
from dsa_core.prune import DenseWeights

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")


def windows(lm, n=3, seqlen=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, lm.model.config.vocab_size, (n, seqlen), generator=g)


def prune_smallest(lm, ratio):
    """Zero each linear layer's `ratio` smallest weights in place."""
    with torch.no_grad():
        for i in range(len(lm.blocks)):
            for m in lm.linear_layers(i).values():
                k = int(m.weight.numel() * ratio)
                if k:
                    m.weight[m.weight.abs() <= m.weight.abs().flatten().kthvalue(k).values] = 0


def test_perplexity_is_the_exponent_of_the_mean_token_nll(tiny):
    w = windows(tiny)
    logits = tiny.model(input_ids=w).logits.float()
    nll = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), w[:, 1:].reshape(-1))
    assert perplexity(tiny, w) == pytest.approx(math.exp(float(nll)), rel=1e-5)


def test_batching_does_not_change_the_sum(tiny):
    w = windows(tiny, n=5)
    total, count = nll_sum(tiny, w, batch_size=1)
    assert count == 5 * 31
    assert nll_sum(tiny, w, batch_size=2)[0] == pytest.approx(total, rel=1e-5)


def test_fixed_windows_follow_the_weights_on_cpu(fresh_tiny):
    w = windows(fresh_tiny)
    measure = FixedWindowsPerplexity(fresh_tiny, w)
    dense = measure()
    assert dense == perplexity(fresh_tiny, w)
    prune_smallest(fresh_tiny, 0.5)
    assert measure() == perplexity(fresh_tiny, w) != dense


def test_a_kl_on_the_first_windows_shares_the_dense_logits_of_a_larger_one(fresh_tiny):
    w = windows(fresh_tiny, n=5)
    every = FixedWindowsKL(fresh_tiny, w, batch_size=2)
    first = FixedWindowsKL(fresh_tiny, w[:3], 2, every.dense)
    assert [d.shape[0] for d in first.dense] == [2, 1]
    assert all(a.data_ptr() == b.data_ptr() for a, b in zip(first.dense, every.dense))  # views, not copies
    alone = FixedWindowsKL(fresh_tiny, w[:3], 2)  # its own dense logits of the same windows
    assert first() == alone() == 0.0
    prune_smallest(fresh_tiny, 0.5)
    assert first() == alone() > 0


@cuda
def test_replayed_graph_equals_eager_perplexity_as_weights_change():
    lm = load_model("random:tiny", device="cuda")
    w, dense = windows(lm, n=5, seqlen=64), DenseWeights(lm)
    measure = FixedWindowsPerplexity(lm, w, batch_size=2)  # three batches in one graph
    for ratio in (0.0, 0.5, 0.7, 0.0):
        dense.restore()
        prune_smallest(lm, ratio)
        assert measure() == perplexity(lm, w, batch_size=2)
    assert measure.graph is not None


@cuda
def test_a_dropped_measure_frees_its_graph_at_once():
    """Without a reference cycle: a dead graph collected later, during another capture, would break that one."""
    lm = load_model("random:tiny", device="cuda")
    measure = FixedWindowsPerplexity(lm, windows(lm))
    measure()
    graph = weakref.ref(measure.graph)
    gc.disable()
    try:
        del measure
        assert graph() is None
    finally:
        gc.enable()


@cuda
def test_a_replaced_weight_is_captured_again():
    lm = load_model("random:tiny", device="cuda")
    w = windows(lm)
    measure = FixedWindowsPerplexity(lm, w)
    before = measure()
    layer = lm.linear_layers(0)["mlp.down_proj"]
    layer.weight = torch.nn.Parameter(torch.zeros_like(layer.weight))
    assert measure() == perplexity(lm, w) != before


@cuda
def test_offloaded_blocks_are_measured_eagerly():
    lm = load_model("random:tiny", device="cuda")
    w = windows(lm)
    offload_blocks(lm, "cuda")
    measure = FixedWindowsPerplexity(lm, w)
    assert measure.graph is None and measure() == perplexity(lm, w)
