"""The hypernetwork's layouts: DISP-LLM's own (every block and side independent) and the constrained baseline (one
hidden selection for every block and side, one intermediate width), fitted to the budget."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dsa_core import data
from dsa_core.structural.layouts import Independent, Shared
from dsa_core.structural.selection import CHANNELS, BlockShape, HyperNetwork
from dsa_core.structural.training import StructuralConfig, train_selection

SMOLLM2 = BlockShape(n_blocks=30, hidden=576, intermediate=1536, q_dim=576, kv_dim=192, kv_heads=3)

pytestmark = pytest.mark.usefixtures("one_thread")


def random_scores(layout, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(w, generator=g) for w in layout.widths()]


def test_shared_layout_expands_one_hidden_output_to_every_block_and_side():
    layout = Shared(SMOLLM2)
    assert layout.widths() == [576] + [1536] * 30
    outputs = random_scores(layout, 0)
    blocks = layout.expand(outputs)
    assert len(blocks) == 30 and all(b[0] is outputs[0] and b[4] is outputs[0] and b[3] is outputs[i + 1]
                                     for i, b in enumerate(blocks))
    assert len(Independent(SMOLLM2).expand(random_scores(Independent(SMOLLM2), 0))) == 30


@settings(max_examples=20, deadline=None)
@given(st.floats(0.2, 0.95), st.integers(0, 10_000), st.sampled_from([1, 8]))
def test_shared_fit_has_uniform_widths_shared_channels_and_meets_the_budget(target, seed, align):
    layout = Shared(SMOLLM2)
    scores = random_scores(layout, seed)
    sel = layout.fit(scores, target, align)
    widths = sel.widths
    assert (widths == widths[0]).all()  # uniform per layer type
    assert widths[0][0] == widths[0][1] == widths[0][2] == widths[0][4]
    assert all(torch.equal(block[s], sel.keep[0][0]) for block in sel.keep for s in (0, 1, 2, 4))
    assert (widths[:, :CHANNELS] % align == 0).all() and (widths[:, CHANNELS] == SMOLLM2.kv_heads).all()
    # Within one intermediate step (every block, one aligned channel) of the target.
    step = SMOLLM2.n_blocks * 3 * int(widths[0][0]) * align
    assert abs(sel.params - target * SMOLLM2.dense_params) <= step / 2 + 1
    # Each block keeps its best-scored intermediate channels; the hidden channels are the best shared ones.
    for block, s in zip(sel.keep, scores[1:]):
        assert set(block[3].tolist()) == set(torch.topk(s, block[3].numel()).indices.tolist())
    assert set(sel.keep[0][0].tolist()) == set(torch.topk(scores[0], int(widths[0][0])).indices.tolist())


def test_independent_layout_selects_heads_only_when_asked():
    channels_only, with_heads = Independent(SMOLLM2), Independent(SMOLLM2, heads=True)
    assert channels_only.widths() == [576, 576, 576, 1536, 576] * 30
    assert with_heads.widths() == [576, 576, 576, 1536, 576, 3] * 30
    masks = channels_only.expand([torch.ones(w) for w in channels_only.widths()])
    assert len(masks) == 30 and all(len(b) == 6 and torch.equal(b[CHANNELS], torch.ones(3)) for b in masks)
    # Fitted, every head stays when heads are not selected, whatever the budget; selected, low-scored ones go.
    low_heads = [torch.full((w,), -9.0 if w == 3 else 1.0) for w in with_heads.widths()]
    assert (channels_only.fit(random_scores(channels_only, 0), 0.3).widths[:, CHANNELS] == 3).all()
    assert (with_heads.fit(low_heads, 0.3).widths[:, CHANNELS] < 3).any()


def test_shared_fit_follows_the_hypernetworks_balance():
    layout = Shared(SMOLLM2)
    hidden_heavy = [torch.full((576,), 2.0)] + [torch.linspace(-3, 1, 1536) for _ in range(30)]
    mid_heavy = [torch.linspace(-3, 1, 576)] + [torch.full((1536,), 2.0) for _ in range(30)]
    a, b = layout.fit(hidden_heavy, 0.6), layout.fit(mid_heavy, 0.6)
    assert a.widths[0][0] > b.widths[0][0] and a.widths[0][3] < b.widths[0][3]


def test_training_with_the_shared_layout(tiny):
    ids = data.tokenize(tiny.tokenizer, data.load_text("wikitext2", "train", "local").text[:50_000])
    cfg = StructuralConfig(steps=4, batch_size=1, seqlen=32, target_ratio=0.6, lr=0.02)
    result = train_selection(tiny, ids, cfg, layout=Shared)
    sel = result.selection
    assert len(result.curve) == 4 and sel.ratio == pytest.approx(0.6, abs=0.02)
    assert (sel.widths == sel.widths[0]).all()
    assert isinstance(result.hypernetwork, HyperNetwork) and len(result.hypernetwork.heads) == 1 + 4
