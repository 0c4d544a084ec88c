import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dsa_core.errors import ConfigError
from dsa_core.structural.compressed import compress
from dsa_core.structural.selection import (
    CHANNELS,
    BlockShape,
    HyperNetwork,
    Selection,
    fit_budget,
    group_by_block,
    gumbel_sigmoid_ste,
)

SHAPE = BlockShape(n_blocks=3, hidden=24, intermediate=40, q_dim=24, kv_dim=12, kv_heads=2)


def channel_scores(g: torch.Generator) -> list[torch.Tensor]:
    """Random scores for every channel; heads not selected (infinite scores), as DISP-LLM by default."""
    return [torch.randn(w, generator=g) if i < CHANNELS else torch.full((w,), float("inf"))
            for _ in range(SHAPE.n_blocks) for i, w in enumerate(SHAPE.full_widths)]


def lowest(scores: list[torch.Tensor]) -> list[torch.Tensor]:
    """The same scores with every channel's equal and low (heads as they were)."""
    return [s if s.isinf().all() else torch.full_like(s, -1.0) for s in scores]


def random_selection(shape: BlockShape, keep: float, seed: int = 0) -> Selection:
    g = torch.Generator().manual_seed(seed)
    return Selection(shape, [[torch.sort(torch.randperm(w, generator=g)[: max(1, int(w * keep))]).values
                              for w in shape.full_widths] for _ in range(shape.n_blocks)])


def test_dense_count_is_the_blocks_linear_parameters(tiny):
    shape = BlockShape.from_config(tiny.model.config)
    assert shape.dense_params == tiny.prunable_params
    assert Selection.full(shape).ratio == 1.0


def test_kept_count_equals_the_compressed_models_sliced_weights(tiny):
    shape = BlockShape.from_config(tiny.model.config)
    sel = random_selection(shape, 0.6)
    model = compress(tiny, sel)
    linears = sum(m.weight.numel() for layer in model.model.layers for m in layer.modules()
                  if isinstance(m, torch.nn.Linear))
    assert linears == sel.params
    assert sel.params < shape.dense_params


def test_block_params_is_differentiable_in_the_widths():
    widths = torch.tensor([[10.0, 12.0, 8.0, 30.0, 20.0, 2.0]], requires_grad=True)
    SHAPE.block_params(widths).sum().backward()
    # d/d attn_in = q + 2 kv; d/d mlp_mid = 2 mlp_in + mlp_out; d/d heads = what one key/value head's share reads
    assert widths.grad[0, 0] == SHAPE.q_dim + 2 * SHAPE.kv_dim
    assert widths.grad[0, 3] == 2 * 8 + 20
    assert widths.grad[0, 5] == (10 * (SHAPE.q_dim + 2 * SHAPE.kv_dim) + 12 * SHAPE.q_dim) / SHAPE.kv_heads


@settings(max_examples=25, deadline=None)
@given(st.floats(0.05, 0.99), st.integers(0, 10_000))
def test_fit_budget_lands_within_one_channel_of_the_target(target, seed):
    scores = channel_scores(torch.Generator().manual_seed(seed))
    sel = fit_budget(SHAPE, scores, target)
    # The largest step one channel makes: an intermediate channel (≤ 3 hidden) or an MLP-input channel.
    step = max(3 * SHAPE.hidden, 2 * SHAPE.intermediate, SHAPE.q_dim + 2 * SHAPE.kv_dim)
    floor = fit_budget(SHAPE, lowest(scores), 0.001).params  # one channel each
    assert abs(sel.params - target * SHAPE.dense_params) <= step or sel.params == floor
    assert all(k.numel() >= 1 for block in sel.keep for k in block)
    assert (sel.widths[:, CHANNELS] == SHAPE.kv_heads).all()  # infinite scores: every head kept


@settings(max_examples=25, deadline=None)
@given(st.floats(0.05, 0.99), st.integers(0, 10_000))
def test_aligned_fit_budget_keeps_multiples_of_eight_near_the_target(target, seed):
    scores = channel_scores(torch.Generator().manual_seed(seed))
    sel = fit_budget(SHAPE, scores, target, align=8)
    channels = sel.widths[:, :CHANNELS]
    assert (channels % 8 == 0).all() and (channels >= 8).all()
    # Each structure keeps its best-scored channels.
    for block, flat in zip(sel.keep, group_by_block(scores)):
        for keep, s in zip(block, flat):
            assert set(keep.tolist()) == set(torch.topk(s, keep.numel()).indices.tolist())
    step = 8 * max(3 * SHAPE.hidden, 2 * SHAPE.intermediate, SHAPE.q_dim + 2 * SHAPE.kv_dim)
    floor = fit_budget(SHAPE, lowest(scores), 0.001, align=8).params
    assert abs(sel.params - target * SHAPE.dense_params) <= step or sel.params == floor


def test_fit_budget_keeps_the_highest_scores():
    scores = [torch.arange(w, dtype=torch.float32) for _ in range(SHAPE.n_blocks) for w in SHAPE.full_widths]
    sel = fit_budget(SHAPE, scores, 0.5)
    for block in sel.keep:
        for keep, w in zip(block, SHAPE.full_widths):
            assert keep.tolist() == list(range(w - keep.numel(), w))  # a suffix: the largest scores
    with pytest.raises(ConfigError):
        fit_budget(SHAPE, scores, 0.0)


def test_fit_budget_drops_the_heads_scored_lowest_and_counts_their_share():
    scores = [torch.full((w,), 1.0) for _ in range(SHAPE.n_blocks) for w in SHAPE.full_widths]
    scores[CHANNELS] = torch.tensor([-5.0, 2.0])  # block 0: its first key/value head scored far below the rest
    sel = fit_budget(SHAPE, scores, 0.9)
    assert sel.keep[0][CHANNELS].tolist() == [1]
    assert all(block[CHANNELS].tolist() == [0, 1] for block in sel.keep[1:])
    # Block 0 lost half of q/k/v's rows and of o_proj's columns, nothing else.
    attention = 24 * (SHAPE.q_dim + 2 * SHAPE.kv_dim) + 24 * SHAPE.q_dim
    assert sel.params == SHAPE.dense_params - attention // 2


def test_hypernetwork_is_seeded_and_its_inputs_are_not_trained():
    widths = SHAPE.full_widths * SHAPE.n_blocks
    a, b = HyperNetwork(widths, seed=3), HyperNetwork(widths, seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a.logits(), b.logits()))
    assert not torch.equal(HyperNetwork(widths, seed=4).inputs, a.inputs)
    assert "inputs" in dict(a.named_buffers()) and "inputs" not in dict(a.named_parameters())
    assert [z.numel() for z in a.logits()] == widths


def test_samples_are_binary_with_straight_through_gradients():
    hn = HyperNetwork(SHAPE.full_widths * SHAPE.n_blocks, seed=0)
    masks = hn.sample(torch.Generator().manual_seed(0))
    assert all(set(m.unique().tolist()) <= {0.0, 1.0} for m in masks)
    # The offset makes the first masks keep almost every channel.
    kept = float(torch.cat(masks).detach().mean())
    assert kept > 0.99
    sum(m.sum() for m in masks).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in hn.heads.parameters())
    assert hn.gru.weight_hh_l0.grad.abs().sum() > 0


def test_gumbel_sigmoid_follows_the_logits():
    g = torch.Generator().manual_seed(0)
    high = gumbel_sigmoid_ste(torch.full((4000,), 2.0), 0.4, 0.0, g).mean()
    low = gumbel_sigmoid_ste(torch.full((4000,), -2.0), 0.4, 0.0, g).mean()
    # P(keep) = 1 - exp(-exp(logit)) for Gumbel noise, whatever the temperature.
    assert float(high) == pytest.approx(1 - np.exp(-np.exp(2.0)), abs=0.03)
    assert float(low) == pytest.approx(1 - np.exp(-np.exp(-2.0)), abs=0.03)


def test_masks_and_selection_round_trip():
    sel = random_selection(SHAPE, 0.5, seed=1)
    flat = [m for block in sel.masks() for m in block]
    again = Selection.from_masks(SHAPE, flat)
    assert all(torch.equal(a, b) for x, y in zip(sel.keep, again.keep) for a, b in zip(x, y))
    assert np.array_equal(sel.widths, again.widths)
    assert len(group_by_block(flat)) == SHAPE.n_blocks
