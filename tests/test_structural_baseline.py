import pytest
import torch

from dsa_core import data
from dsa_core.errors import ConfigError
from dsa_core.structural.baseline import activation_norms, uniform_selection, uniform_widths
from dsa_core.structural.selection import BlockShape

SMOLLM2 = BlockShape(n_blocks=30, hidden=576, intermediate=1536, q_dim=576, kv_dim=192)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def windows(tiny):
    ids = data.tokenize(tiny.tokenizer, data.load_text("wikitext2", "train", "local").text[:50_000])
    return data.calibration_windows(ids, 4, 32, seed=0)


@pytest.mark.parametrize("target", [0.3, 0.5, 0.7, 0.9])
def test_uniform_widths_meet_the_budget(target):
    hidden, mid = uniform_widths(SMOLLM2, target)
    widths = torch.tensor([hidden, hidden, hidden, mid, hidden, SMOLLM2.kv_heads])
    kept = SMOLLM2.block_params(widths) * SMOLLM2.n_blocks
    assert int(kept) / SMOLLM2.dense_params == pytest.approx(target, abs=0.001)
    # Both dimensions shrink by about the same factor.
    assert hidden / SMOLLM2.hidden == pytest.approx(mid / SMOLLM2.intermediate, abs=0.02)
    with pytest.raises(ConfigError):
        uniform_widths(SMOLLM2, 1.5)


@pytest.mark.parametrize("target", [0.3, 0.5, 0.7, 0.9])
def test_aligned_uniform_widths_are_multiples_of_eight_near_the_budget(target):
    hidden, mid = uniform_widths(SMOLLM2, target, align=8)
    assert hidden % 8 == 0 and mid % 8 == 0
    widths = torch.tensor([hidden, hidden, hidden, mid, hidden, SMOLLM2.kv_heads])
    kept = SMOLLM2.block_params(widths) * SMOLLM2.n_blocks
    assert int(kept) / SMOLLM2.dense_params == pytest.approx(target, abs=0.005)


def test_baseline_shares_one_hidden_index_set_and_meets_the_budget(tiny, windows):
    sel = uniform_selection(tiny, windows, 0.6, batch_size=2)
    shared = sel.keep[0][0]
    for block in sel.keep:
        for structure in (0, 1, 2, 4):
            assert torch.equal(block[structure], shared)
        assert block[3].numel() == sel.keep[0][3].numel()
    assert sel.ratio == pytest.approx(0.6, abs=0.01)


def test_channels_with_large_activations_are_kept(fresh_tiny, windows):
    loud = 7
    with torch.no_grad():
        for block in fresh_tiny.blocks:
            block.input_layernorm.weight[loud] = 50.0
            block.mlp.down_proj.weight[:, 3] *= 100.0
    hidden, mid = activation_norms(fresh_tiny, windows, batch_size=2)
    assert int(hidden.argmax()) == loud
    assert (mid.argmax(dim=1) == 3).all()
    sel = uniform_selection(fresh_tiny, windows, 0.2, batch_size=2)
    assert loud in sel.keep[0][0].tolist() and all(3 in block[3].tolist() for block in sel.keep)
