"""A search's SparseGPT fitness puts together one-shot SparseGPT weights per layer, rounded to 1% levels."""

import numpy as np
import pytest
import torch

from dsa_core import scores as S
from dsa_core.calibration import ActivationStats, run_block
from dsa_core.fitness import Fitness
from dsa_core.session import PruningSession
from dsa_core.sparsegpt_levels import BATCH, BATCHES_KEPT, SparseGPTLevels


@pytest.fixture
def session(fresh_tiny):
    return PruningSession(fresh_tiny, nsamples=2, seqlen=64, data_source="local")


def _one_shot(session, block: int, layer: int, ratio: float) -> torch.Tensor:
    """SparseGPT on one dense layer with the dense model's Hessian, as the reference prunes it."""
    session.restore()
    inputs = session.block_inputs()
    for i in range(block):
        inputs = run_block(session.lm.blocks[i], inputs)
    layers = session.lm.linear_layers(block)
    with ActivationStats(layers, hessian=True) as acts:
        run_block(session.lm.blocks[block], inputs)
    name, module = list(layers.items())[layer]
    w = module.weight.detach().clone()
    S.sparsegpt_prune_(w, acts.hessian_of(name), ratio)
    return w


def _assert_same_pruning(got: torch.Tensor, want: torch.Tensor) -> None:
    """The cache solves SparseGPT's column loop in one go: the same mask, and the same weights up to rounding."""
    assert torch.equal(got == 0, want == 0)
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-5)


def test_each_layer_gets_its_one_shot_sparsegpt_weights_at_its_ratio_rounded_to_one_percent(session):
    ratios = np.array([0.534, 0.6, 0.7, 0.456])
    session.apply_sparsegpt_levels(ratios)
    got = [m.weight.detach().clone() for m in session.lm.linear_layers(2).values()]
    _assert_same_pruning(got[0], _one_shot(session, 2, 0, 0.70))
    session.apply_sparsegpt_levels(ratios)
    got = list(session.lm.linear_layers(0).values())[6].weight.detach().clone()
    _assert_same_pruning(got, _one_shot(session, 0, 6, 0.53))
    # A level is pruned once: applying again computes nothing new.
    done = session._sparsegpt_levels.computed
    session.apply_sparsegpt_levels(ratios)
    assert session._sparsegpt_levels.computed == done


def test_levels_are_pruned_a_batch_at_a_time_and_the_least_recently_used_go_first(session):
    session.restore()
    levels = SparseGPTLevels(session.lm, session.dense, session.block_inputs(), budget_bytes=0)
    levels.apply(np.full(4, 0.5))
    assert len(levels.kept) == 1  # nothing fits the budget, so only the last level asked for stays
    roomy = SparseGPTLevels(session.lm, session.dense, session.block_inputs(), budget_bytes=1 << 40)
    roomy.apply(np.full(4, 0.5))
    layers = sum(len(b) for b in session.dense.layers)
    assert roomy.computed == layers * BATCH
    roomy.apply(np.full(4, 0.52))  # neighbours of 0.5: already there
    assert roomy.computed == layers * BATCH
    per_layer = np.full(layers, 0.5)
    per_layer[3] = 0.99
    roomy.apply(per_layer)  # one ratio per linear layer; the top level is reachable
    assert roomy.computed == layers * BATCH + BATCH
    w = list(session.lm.linear_layers(0).values())[3].weight
    assert (w == 0).float().mean().item() == pytest.approx(0.99, abs=0.01)


def test_a_budget_that_keeps_few_levels_prunes_fewer_neighbours_per_pass(session):
    """Neighbours a budget cannot keep would be evicted before their use: each pass makes as many as it keeps."""
    session.restore()
    level_bytes = sum(m.weight.numel() * m.weight.element_size() for block in session.dense.layers for m, _ in block)
    layers = sum(len(b) for b in session.dense.layers)
    tight = SparseGPTLevels(session.lm, session.dense, session.block_inputs(),
                            budget_bytes=BATCHES_KEPT * 3 * level_bytes)
    assert tight.batch == 3
    tight.apply(np.full(4, 0.5))
    assert tight.computed == layers * 3
    w = list(session.lm.linear_layers(1).values())[2].weight
    assert (w == 0).float().mean().item() == pytest.approx(0.5, abs=0.01)
    assert SparseGPTLevels(session.lm, session.dense, session.block_inputs(), budget_bytes=0).batch == 1


def test_the_sparsegpt_fitness_sees_the_weight_update_and_the_dense_model_comes_back(session):
    fit = Fitness(session, "sparsegpt", 0.6, "kl", [2])
    ratios = np.full(4, 0.6)
    with_update = fit.measure("a", ratios, 0)
    session.apply(ratios, "sparsegpt")  # the mask alone, from SparseGPT's saliency order
    mask_only = fit.stages[0]()
    assert 0 < with_update < mask_only
    session.restore()
    assert fit.stages[0]() == 0.0
