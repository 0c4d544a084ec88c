"""ShortGPT's baseline: Block Influence finds a block that changes nothing, the budget says how many blocks go, and
the model without them is the family's own class computing what the dense model computes around them."""

import pytest
import torch

from dsa_core.models import load_model
from dsa_core.structural.baseline import block_influence, blocks_to_remove, remove_blocks

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model_with_an_idle_block():
    lm = load_model("random:tiny", device="cpu")
    with torch.no_grad():  # block 2 adds nothing to the residual stream: an identity
        lm.blocks[2].self_attn.o_proj.weight.zero_()
        lm.blocks[2].mlp.down_proj.weight.zero_()
    return lm


@pytest.fixture(scope="module")
def ids():
    return torch.randint(0, 5000, (2, 24), generator=torch.Generator().manual_seed(0))


def test_the_idle_block_has_no_influence_and_goes_first(model_with_an_idle_block, ids):
    influence = block_influence(model_with_an_idle_block, ids, batch_size=1)
    assert influence.shape == (4,) and float(influence[2]) == pytest.approx(0.0, abs=1e-6)
    assert (influence[[0, 1, 3]] > 1e-3).all()
    assert blocks_to_remove(influence, 0.75) == [2]
    assert len(blocks_to_remove(influence, 0.5)) == 2 and 2 in blocks_to_remove(influence, 0.5)
    assert len(blocks_to_remove(influence, 0.01)) == 3  # at least one block stays


def test_removing_the_idle_block_keeps_the_function(model_with_an_idle_block, ids):
    lm = model_with_an_idle_block
    short = remove_blocks(lm, [2])
    assert type(short) is type(lm.model) and short.config.num_hidden_layers == 3
    assert lm.model.config.num_hidden_layers == 4 and len(lm.blocks) == 4  # the dense model is untouched
    torch.testing.assert_close(short(input_ids=ids).logits, lm.model(input_ids=ids).logits, rtol=1e-4, atol=1e-4)
    args = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False, pad_token_id=0)
    assert torch.equal(short.generate(ids[:1, :8], **args), lm.model.generate(ids[:1, :8], **args))
    assert [b.self_attn.layer_idx for b in short.model.layers] == [0, 1, 2]


def test_layer_types_follow_the_kept_blocks_in_gemma():
    from tests.test_structural_families import dense_model

    lm = dense_model("gemma3_text")  # layers: sliding, full, sliding, full; window 6
    with torch.no_grad():
        for i in (0, 3):
            lm.blocks[i].self_attn.o_proj.weight.zero_()
            lm.blocks[i].mlp.down_proj.weight.zero_()
    short = remove_blocks(lm, [0, 3])
    assert short.config.layer_types == ["full_attention", "sliding_attention"]
    ids = torch.randint(0, 300, (2, 20), generator=torch.Generator().manual_seed(1))  # longer than the window
    torch.testing.assert_close(short(input_ids=ids).logits, lm.model(input_ids=ids).logits, rtol=1e-4, atol=1e-4)
