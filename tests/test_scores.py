import pytest
import torch

from dsa_core import scores as S
from dsa_core.errors import ConfigError


def test_rank_in_group_row_matches_sort():
    torch.manual_seed(0)
    x = torch.rand(7, 50)
    rank = S.rank_in_group(x, "row")
    assert rank.dtype == torch.int16
    for r in range(7):
        assert torch.equal(rank[r].long(), x[r].argsort().argsort())


def test_rank_in_group_layer_and_masks_remove_floor_of_ratio():
    torch.manual_seed(1)
    x = torch.rand(30, 40)
    rank = S.rank_in_group(x, "layer")
    keep = S.keep_mask_from_rank(rank, 0.37, "layer")
    assert (~keep).sum() == int(1200 * 0.37)
    # the pruned ones are exactly the smallest scores
    assert x[~keep].max() < x[keep].min()
    keep_rows = S.keep_mask_from_rank(S.rank_in_group(x, "row"), 0.5, "row")
    assert ((~keep_rows).sum(1) == 20).all()


def test_large_groups_use_int32():
    rank = S.rank_in_group(torch.rand(2, 40000), "row")
    assert rank.dtype == torch.int32 and rank.max() == 39999


@pytest.mark.parametrize("n,m", [(2, 4), (4, 8)])
def test_nm_rank_prunes_n_lowest_of_every_m(n, m):
    torch.manual_seed(2)
    x = torch.rand(6, 32)
    keep = S.nm_rank(x, m) >= n
    groups = keep.view(6, -1, m)
    assert (groups.sum(-1) == m - n).all()
    xs = x.view(6, -1, m)
    assert (xs.masked_fill(groups, -1).max(-1).values < xs.masked_fill(~groups, 2).min(-1).values).all()


def test_parse_pattern():
    assert S.parse_pattern("unstructured") is None
    assert S.parse_pattern("2:4") == (2, 4)
    for bad in ["4:2", "2-4", "x", "0:4"]:
        with pytest.raises(ConfigError):
            S.parse_pattern(bad)


def _layer_problem(rows=32, cols=256, tokens=2048, seed=0):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(rows, cols, generator=g)
    # Correlated, unevenly scaled inputs: where the Hessian-aware update matters.
    X = torch.randn(tokens, cols, generator=g) @ (torch.eye(cols) + 0.3 * torch.randn(cols, cols, generator=g))
    X *= torch.rand(cols, generator=g) * 3
    H = 2 * X.T @ X / tokens
    return W, X, H


def test_sparsegpt_hits_ratio_and_beats_mask_only_pruning():
    W, X, H = _layer_problem()
    pruned = W.clone()
    S.sparsegpt_prune_(pruned, H, 0.5)
    assert (pruned == 0).float().mean().item() == pytest.approx(0.5, abs=1e-3)
    wanda = W * S.keep_mask_from_rank(S.rank_in_group(S.wanda(W, (X**2).mean(0)), "row"), 0.5, "row")
    err = lambda w: torch.linalg.norm(X @ (W - w).T).item()  # noqa: E731
    assert err(pruned) < 0.9 * err(wanda)
    # The OBS update, not only the mask choice, is what makes the gain: the same mask without it is worse.
    assert err(pruned) < 0.9 * err(W * (pruned != 0))


def test_sparsegpt_prunes_as_the_reference_one_weight_more_per_block_and_none_below_one():
    W, _, H = _layer_problem(seed=4)
    pruned = W.clone()
    S.sparsegpt_prune_(pruned, H, 0.25)
    # Per 128-column block, the weights at or below the (k+1)-th smallest saliency, k = ⌊0.25 · 32 · 128⌋.
    assert [int((pruned[:, i : i + 128] == 0).sum()) for i in (0, 128)] == [1025, 1025]
    few = W.clone()
    S.sparsegpt_prune_(few, H, 1e-4)  # k = 0: nothing, where the reference would prune one weight per block
    assert int((few == 0).sum()) == 0


def test_sparsegpt_ratio_zero_keeps_weights_and_nm_pattern():
    W, _, H = _layer_problem(seed=3)
    same = W.clone()
    S.sparsegpt_prune_(same, H, 0.0)
    assert torch.allclose(same, W, atol=1e-4)
    nm = W.clone()
    S.sparsegpt_prune_(nm, H, 0.5, nm=(2, 4))
    assert ((nm.view(32, -1, 4) == 0).sum(-1) >= 2).all()


def _with_dead_input(cols: int, seed: int):
    W, _, H = _layer_problem(cols=cols, seed=seed)
    H[:, 5] = 0  # an input that never fires
    H[5, :] = 0
    return W, H


@pytest.mark.parametrize("problem", ["fixture", "ragged_dead"])
def test_sparsegpt_solved_blocks_match_the_column_loop(problem):
    # The fixture, and a layer whose last block is short (200 = 128 + 72 columns) with a dead input.
    W, H = _layer_problem()[::2] if problem == "fixture" else _with_dead_input(cols=200, seed=5)
    ratios = [0.0, 0.3, 0.5, 0.7, 0.99]
    loop = S.sparsegpt_levels(W, H, ratios)
    solved = S.sparsegpt_levels_solved(W, H, ratios)
    assert solved.shape == loop.shape == (5, *W.shape) and solved.dtype == torch.float32
    assert torch.equal(solved == 0, loop == 0)
    assert torch.allclose(solved, loop, rtol=1e-4, atol=1e-5)
    assert torch.equal(solved[0], loop[0])  # ratio 0: nothing pruned, so nothing moves
    if problem == "ragged_dead":
        assert (solved[:, :, 5] == 0).all()
    loop64 = S.sparsegpt_levels(W.double(), H.double(), ratios)
    solved64 = S.sparsegpt_levels_solved(W.double(), H.double(), ratios)
    assert torch.equal(solved64 == 0, loop64 == 0)
    assert torch.allclose(solved64, loop64, rtol=1e-10, atol=1e-12)


def test_sparsegpt_solved_rows_in_chunks_give_the_same_weights():
    W, H = _with_dead_input(cols=200, seed=6)
    whole = S.sparsegpt_levels_solved(W, H, [0.5, 0.8])
    chunked = S.sparsegpt_levels_solved(W, H, [0.5, 0.8], chunk_bytes=1)  # one row at a time
    assert torch.allclose(whole, chunked, rtol=1e-5, atol=1e-6)
