import weakref

import numpy as np
import pytest
import torch

from dsa_core import data
from dsa_core.prune import DenseWeights, MaskCache, achieved_sparsity, prune_sequential, score_model
from tests.reference_wanda import prune_wanda


@pytest.fixture(scope="module")
def windows(tiny):
    ids = data.tokenize(tiny.tokenizer, data.load_text("wikitext2", "train", "local").text[:200_000])
    return data.calibration_windows(ids, 4, 64, seed=0)


def test_fast_mode_masks_each_block_to_its_ratio_and_restores(fresh_tiny, windows):
    dense = DenseWeights(fresh_tiny)
    cache, stats = score_model(fresh_tiny, dense, windows, "wanda", batch_size=2, sample_size=1000)
    assert stats.num_blocks == 4 and len(stats.score_samples[0]) >= 1000
    ratios = np.array([0.1, 0.3, 0.5, 0.7])
    cache.apply(ratios)
    overall, per_block = achieved_sparsity(fresh_tiny)
    assert per_block == pytest.approx(ratios, abs=0.02)
    # Re-masking to another allocation starts from the dense weights, not from the last mask.
    cache.apply(np.full(4, 0.2))
    assert achieved_sparsity(fresh_tiny)[1] == pytest.approx([0.2] * 4, abs=0.02)
    dense.restore()
    assert achieved_sparsity(fresh_tiny)[0] < 0.01


def test_sequential_wanda_matches_reference_transcription(windows):
    from dsa_core.models import load_model

    ours, ref = load_model("random:tiny", device="cpu"), load_model("random:tiny", device="cpu")
    prune_sequential(ours, windows, "wanda", np.full(4, 0.6), batch_size=2)
    prune_wanda(ref.model, windows, 0.6)
    for i in range(4):
        for (name, a), b in zip(ours.linear_layers(i).items(), ref.linear_layers(i).values()):
            agree = ((a.weight == 0) == (b.weight == 0)).float().mean().item()
            assert agree > 0.999, (i, name, agree)


@pytest.mark.parametrize("seed", [0, 1])
def test_real_model_in_float64_is_pruned_exactly_as_the_reference_at_70_percent(seed):
    """SmolLM2 and WikiText-2. In float32 the two orders of float operations flip near-ties in the scores, and the
    flips grow from block to block (here 70 of 210 layers come out the same, and perplexity differs by 9%); in
    float64 every layer must come out the same and so must the perplexity."""
    from dsa_core.evaluate import perplexity
    from dsa_core.models import load_model

    ours, ref = (load_model(None, device="cpu", dtype="fp64") for _ in range(2))
    ids = data.tokenize(ours.tokenizer, data.load_text("wikitext2", "validation", "local").text)
    calib = data.calibration_windows(ids, 4, 128, seed=seed)
    prune_sequential(ours, calib, "wanda", np.full(30, 0.7), batch_size=2)
    prune_wanda(ref.model, calib, 0.7)
    for i in range(30):
        for (name, a), b in zip(ours.linear_layers(i).items(), ref.linear_layers(i).values()):
            assert torch.equal(a.weight, b.weight), (i, name)
    test = data.eval_windows(data.tokenize(ours.tokenizer, data.load_text("wikitext2", "test", "local").text), 128, 2)
    assert perplexity(ours, test) == perplexity(ref, test)


def test_float64_models_keep_float64_statistics_and_scores(windows):
    from dsa_core.calibration import ActivationStats, capture_block_inputs, run_block
    from dsa_core.models import load_model
    from dsa_core.scores import wanda

    lm = load_model("random:tiny", device="cpu", dtype="fp64")
    layers = lm.linear_layers(0)
    with ActivationStats(layers, hessian=True) as acts:
        run_block(lm.blocks[0], capture_block_inputs(lm, windows, 2))
    name, layer = next(iter(layers.items()))
    assert acts.column_sqnorm(name).dtype == acts.hessian_of(name).dtype == torch.float64
    assert wanda(layer.weight, acts.column_sqnorm(name)).dtype == torch.float64


def test_alpha_hill_of_a_float64_weight_is_computed_in_float64():
    from dsa_core.prune import alpha_hill

    w = torch.randn(64, 48, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    eigs = np.sort(np.linalg.svd(w.numpy(), compute_uv=False) ** 2)
    half, n = len(eigs) // 2, len(eigs) - len(eigs) // 2
    expected = 1 + n / (np.log(eigs[half:]).sum() - n * np.log(eigs[half]))
    assert alpha_hill(w) == pytest.approx(expected, rel=1e-12)


def test_fast_and_sequential_agree_on_the_first_block(fresh_tiny, windows):
    dense = DenseWeights(fresh_tiny)
    cache, _ = score_model(fresh_tiny, dense, windows, "wanda", batch_size=2)
    cache.apply(np.full(4, 0.5))
    fast = [m.weight.clone() for m in fresh_tiny.linear_layers(0).values()]
    dense.restore()
    prune_sequential(fresh_tiny, windows, "wanda", np.full(4, 0.5), batch_size=2)
    for a, b in zip(fast, fresh_tiny.linear_layers(0).values()):
        assert torch.equal(a, b.weight)


@pytest.mark.parametrize("metric,pattern,expect", [("sparsegpt", "unstructured", 0.5), ("sparsegpt", "2:4", 0.5),
                                                   ("magnitude", "unstructured", 0.5), ("wanda", "4:8", 0.5)])
def test_sequential_metrics_and_patterns_hit_target(fresh_tiny, windows, metric, pattern, expect):
    prune_sequential(fresh_tiny, windows, metric, np.full(4, expect), pattern=pattern, batch_size=2)
    assert achieved_sparsity(fresh_tiny)[0] == pytest.approx(expect, abs=0.01)


def test_stats_outlier_ratios_are_exact_shares(fresh_tiny, windows):
    from dsa_core import scores as S
    from dsa_core.calibration import ActivationStats, capture_block_inputs

    dense = DenseWeights(fresh_tiny)
    _, stats = score_model(fresh_tiny, dense, windows, "wanda", batch_size=2)
    inputs = capture_block_inputs(fresh_tiny, windows, 2)
    layers = fresh_tiny.linear_layers(0)
    from dsa_core.calibration import run_block

    with ActivationStats(layers) as acts:
        run_block(fresh_tiny.blocks[0], inputs)
    all_scores = torch.cat([S.wanda(m.weight, acts.column_sqnorm(n)).flatten() for n, m in layers.items()])
    expected = (all_scores > 5 * all_scores.mean()).float().mean().item()
    assert stats.outlier_ratios[5.0][0] == pytest.approx(expected, rel=1e-5)
    assert stats.params[0] == all_scores.numel()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("metric", ["wanda", "magnitude"])  # ranks within rows, within layers
def test_replayed_masking_equals_eager_masking(windows, metric):
    from dsa_core.models import load_model

    lm = load_model("random:tiny", device="cuda")
    dense = DenseWeights(lm)
    cache, _ = score_model(lm, dense, windows, metric, batch_size=2, sample_size=1000)
    assert cache._graph is not None
    eager = MaskCache(dense, [[r.cpu() for r in b] for b in cache.ranks], cache.group, None)  # ranks off the GPU: eager
    assert eager._graph is None
    graph = weakref.ref(cache._graph)
    for ratios in ([0.1, 0.3, 0.5, 0.7], [0.0] * 4, [1.0] * 4, [0.55, 0.0, 1.0, 0.25]):
        cache.apply(np.array(ratios))
        replayed = [m.weight.clone() for i in range(4) for m in lm.linear_layers(i).values()]
        eager.apply(np.array(ratios))
        assert all(torch.equal(a, m.weight) for a, m in
                   zip(replayed, (m for i in range(4) for m in lm.linear_layers(i).values())))
    del cache  # no reference cycle holds the graph: it goes at once (see test_graphs)
    assert graph() is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_replayed_masking_prunes_a_whole_int16_group():
    """A row of 2¹⁵ weights has int16 ranks 0…32767; pruning all of it must not overflow the graph's input."""
    layer = torch.nn.Linear(2**15, 2, bias=False).cuda()
    dense = DenseWeights.__new__(DenseWeights)
    dense.layers = [[(layer, layer.weight.detach().clone())]]
    rank = torch.stack([torch.randperm(2**15, device="cuda") for _ in range(2)]).to(torch.int16)
    cache = MaskCache(dense, [[rank]], "row", None)
    cache.apply(np.array([1.0]))
    assert cache._graph is not None and int((layer.weight != 0).sum()) == 0
    cache.apply(np.array([0.0]))
    assert torch.equal(layer.weight, dense.layers[0][0][1])


@pytest.mark.parametrize("metric", ["wanda", "sparsegpt"])
def test_a_sequential_prune_resumed_from_an_earlier_run_prunes_exactly_as_a_fresh_one(fresh_tiny, windows, metric):
    from dsa_core.calibration import capture_block_inputs
    from dsa_core.prune import run_bytes

    dense = DenseWeights(fresh_tiny)
    inputs = capture_block_inputs(fresh_tiny, windows, 2)
    parent, child = np.array([0.5, 0.6, 0.4, 0.5]), np.array([0.5, 0.6, 0.5, 0.4])  # a level switch in blocks 2, 3
    prune_sequential(fresh_tiny, None, metric, child, batch_size=2, inputs=inputs)
    fresh = [m.weight.clone() for i in range(4) for m in fresh_tiny.linear_layers(i).values()]
    dense.restore()
    kept = prune_sequential(fresh_tiny, None, metric, parent, batch_size=2, inputs=inputs, record=True)
    assert kept.shared_blocks(kept.ratios) == 4 and kept.shared_blocks([[0.5] * 7] * 4) == 1
    dense.restore()
    done = []
    run = prune_sequential(fresh_tiny, None, metric, child, batch_size=2, inputs=inputs, resume=kept, record=True,
                           progress=lambda phase, i, n: done.append(i))
    assert done == [3, 4]  # blocks 0 and 1 taken from the parent's run
    resumed = [m.weight for i in range(4) for m in fresh_tiny.linear_layers(i).values()]
    assert all(torch.equal(a, b) for a, b in zip(fresh, resumed))
    assert run.inputs[:2] == kept.inputs[:2] and run_bytes([kept, run]) < 2 * run_bytes([kept])  # shared, not copied
    dense.restore()


def test_sparsegpt_sequential_by_the_solved_loop_prunes_as_the_reference_loop_up_to_rounding(fresh_tiny, windows):
    """A search's sequential measure (exact=False) takes SparseGPT's batched-solve form: the same masks in every
    block and the same weights up to float rounding; n:m patterns keep the loop."""
    from dsa_core.calibration import capture_block_inputs

    dense = DenseWeights(fresh_tiny)
    inputs = capture_block_inputs(fresh_tiny, windows, 2)
    ratios = np.array([0.5, 0.7, 0.6, 0.4])

    def pruned(**kw) -> list[torch.Tensor]:
        dense.restore()
        prune_sequential(fresh_tiny, None, "sparsegpt", ratios, batch_size=2, inputs=inputs, **kw)
        return [m.weight.detach().clone() for i in range(4) for m in fresh_tiny.linear_layers(i).values()]

    loop, solved = pruned(), pruned(exact=False)
    assert all(torch.equal(a == 0, b == 0) for a, b in zip(loop, solved))
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-5) for a, b in zip(loop, solved))
    assert not all(torch.equal(a, b) for a, b in zip(loop, solved))  # another order of float operations
    nm = [pruned(pattern="2:4"), pruned(pattern="2:4", exact=False)]
    assert all(torch.equal(a, b) for a, b in zip(*nm))
    dense.restore()


def test_a_cache_rescored_on_a_sequential_run_re_masks_that_run_exactly_and_its_neighbours_up_to_the_change(
        fresh_tiny, windows):
    """Re-masked from the statistics a sequential run recorded, the run's own allocation gets the run's weights;
    a level switch in blocks 2 and 3 gets the weights its own sequential prune gives in blocks 0 to 2 (block 3 saw
    other inputs), where the dense model's scores give other masks. SparseGPT's level database on the run's Hessians
    gives the run's weights up to rounding (its levels come from the solved column loop)."""
    from dsa_core.calibration import capture_block_inputs
    from dsa_core.prune import rescored_cache, score_model
    from dsa_core.sparsegpt_levels import SparseGPTLevels

    dense = DenseWeights(fresh_tiny)
    inputs = capture_block_inputs(fresh_tiny, windows, 2)
    parent, child = np.array([0.5, 0.6, 0.4, 0.5]), np.array([0.5, 0.6, 0.5, 0.4])

    def weights():
        return [[m.weight.clone() for m in fresh_tiny.linear_layers(i).values()] for i in range(4)]

    def same_blocks(a, b):
        return [all(torch.equal(x, y) for x, y in zip(p, q)) for p, q in zip(a, b)]

    run = prune_sequential(fresh_tiny, None, "wanda", parent, batch_size=2, inputs=inputs, statistics=True)
    assert not run.weights and run.shared_blocks(run.ratios) == 0  # statistics alone: nothing to resume from
    pruned_parent = weights()
    dense.restore()
    prune_sequential(fresh_tiny, None, "wanda", child, batch_size=2, inputs=inputs)
    pruned_child = weights()
    cache = rescored_cache(dense, run.statistics, "wanda")
    cache.apply(parent)
    assert all(same_blocks(weights(), pruned_parent))
    cache.apply(child)
    assert same_blocks(weights(), pruned_child) == [True, True, True, False]
    dense_cache, _ = score_model(fresh_tiny, dense, None, "wanda", inputs=inputs)
    dense_cache.apply(child)
    assert not all(same_blocks(weights(), pruned_child))
    dense.restore()
    run = prune_sequential(fresh_tiny, None, "sparsegpt", parent, batch_size=2, inputs=inputs, record=True,
                           statistics=True)
    pruned_parent = weights()
    assert len(run.statistics) == 4 and run.statistics[0].H
    dense.restore()
    SparseGPTLevels(fresh_tiny, dense, None, statistics=run.statistics).apply(parent)
    assert all(torch.allclose(a, b, atol=1e-5) for p, q in zip(weights(), pruned_parent) for a, b in zip(p, q))
    dense.restore()
