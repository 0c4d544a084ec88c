"""Structural pruning on every supported family (tiny random configs): the compressed model computes what the masked
training-time model computes (Gemma's (1 + w) norms before and after each half-block, q/k norms, Qwen2's biases,
grouped-query attention, sliding-window layers, scaled and tied embeddings, soft-capped logits; OPT's LayerNorms with
bias, learned positions, fc1/fc2 ReLU MLP, projections in and out of a narrower embedding, with and without linear
biases), generates the same tokens with a KV cache, keeps the parameter count within 0.1% of the target, and saves and
reloads through AutoModelForCausalLM. Training runs on each family's masked model; Gemma's windows start with <bos>;
OPT's post-norm blocks (opt-350m) are refused in a sentence."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from dsa_core.errors import ModelError
from dsa_core.models import LoadedModel
from dsa_core.structural.baseline import block_influence, remove_blocks, uniform_selection
from dsa_core.structural.compressed import compress, load_compressed
from dsa_core.structural.families import FAMILIES, family_of
from dsa_core.structural.layouts import Independent
from dsa_core.structural.masking import MaskedBlocks
from dsa_core.structural.selection import CHANNELS, BlockShape, HyperNetwork, Selection, fit_budget
from dsa_core.structural.training import StructuralConfig, _random_windows, train_selection

COMMON = dict(vocab_size=300, hidden_size=128, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4,
              num_key_value_heads=2, head_dim=32, max_position_embeddings=128)
ALTERNATING = dict(layer_types=["sliding_attention", "full_attention"] * 2, sliding_window=6)
EXTRA = {
    "llama": dict(attention_bias=True, mlp_bias=True),
    "mistral": dict(sliding_window=6),
    "qwen2": {},
    "qwen3": {},
    "gemma2": dict(ALTERNATING, query_pre_attn_scalar=20, attn_logit_softcapping=5.0, final_logit_softcapping=3.0),
    "gemma3_text": dict(ALTERNATING, query_pre_attn_scalar=20),
}
# OPT names its widths differently and has no grouped-query attention: its own settings, whole.
OPT = dict(vocab_size=300, hidden_size=128, ffn_dim=256, num_hidden_layers=4, num_attention_heads=4,
           max_position_embeddings=128, dropout=0.0)
OPT_CASES = {
    "opt": dict(OPT, word_embed_proj_dim=96),  # opt-350m's projections in and out, with pre-norm blocks
    "opt-no-bias": dict(OPT, enable_bias=False),  # the LayerNorms' biases still reach q/k/v and fc1
}
ARCHS = [a for a in FAMILIES if a != "opt"] + list(OPT_CASES)

pytestmark = pytest.mark.usefixtures("one_thread")


def dense_model(case: str) -> LoadedModel:
    """A random model of the family with norms away from their neutral value and large projections, so that a
    wrong fold, slice or norm statistic would show."""
    arch = case.split("-")[0]
    family = FAMILIES[arch]
    torch.manual_seed(0)
    settings = OPT_CASES[case] if arch == "opt" else dict(COMMON, **EXTRA[arch])
    model = AutoModelForCausalLM.from_config(family.config(**settings)).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(0.5 * torch.randn(p.shape, generator=g) + (0.0 if family.gemma_norms else 1.0))
            elif "bias" in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            elif ".layers." in name:
                p.mul_(5.0)
    model.requires_grad_(False)
    return LoadedModel(model, None, f"tiny {arch}", arch, torch.device("cpu"), torch.float32)


def hypernetwork_selection(shape: BlockShape, target: float, seed: int) -> Selection:
    """The budget fit of an untrained hypernetwork's scores plus noise: widths that differ block by block; every
    head kept, as DISP-LLM keeps them."""
    hn = HyperNetwork(shape.full_widths[:CHANNELS] * shape.n_blocks, seed=seed)
    g = torch.Generator().manual_seed(seed)
    return Independent(shape).fit([s + torch.randn(s.shape, generator=g) for s in hn.scores()], target)


def masked_logits(lm: LoadedModel, sel: Selection, ids: torch.Tensor) -> torch.Tensor:
    with MaskedBlocks(lm.blocks) as masked:
        masked.masks = sel.masks(lm.device)
        return lm.model(input_ids=ids, use_cache=False).logits


@pytest.fixture(scope="module")
def ids():
    return torch.randint(0, COMMON["vocab_size"], (2, 20), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("arch", ARCHS)
def test_compressed_equals_masked_and_meets_the_budget(arch, ids):
    lm = dense_model(arch)
    shape = BlockShape.from_config(lm.model.config)
    assert shape.dense_params == lm.prunable_params
    sel = hypernetwork_selection(shape, 0.7, seed=3)
    assert (sel.widths.max(0) > sel.widths.min(0)).any()
    expected = masked_logits(lm, sel, ids)
    assert (expected - lm.model(input_ids=ids).logits).abs().max() > 0.1  # the masks matter
    compressed = compress(lm, sel)
    assert type(compressed).__name__.startswith("Disp") and compressed.config.model_type == f"disp_{lm.arch}"
    torch.testing.assert_close(compressed(input_ids=ids).logits, expected, rtol=1e-4, atol=1e-4)
    layers = compressed.model.decoder.layers if lm.arch == "opt" else compressed.model.layers
    linears = sum(m.weight.numel() for layer in layers for m in layer.modules()
                  if isinstance(m, torch.nn.Linear))
    assert linears == sel.params
    assert abs(sel.params / (0.7 * shape.dense_params) - 1) < 0.001
    full = compress(lm, Selection.full(shape))
    torch.testing.assert_close(full(input_ids=ids).logits, lm.model(input_ids=ids).logits, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("arch", ARCHS)
def test_generation_with_a_cache_and_save_and_reload(arch, ids, tmp_path):
    lm = dense_model(arch)
    sel = hypernetwork_selection(BlockShape.from_config(lm.model.config), 0.5, seed=4)
    compressed = compress(lm, sel)
    prompt, args = ids[:1, :8], dict(max_new_tokens=10, min_new_tokens=10, do_sample=False, pad_token_id=0)
    with MaskedBlocks(lm.blocks) as masked:  # 18 tokens: past the sliding window of 6
        masked.masks = sel.masks()
        expected = lm.model.generate(prompt, **args)
    assert torch.equal(compressed.generate(prompt, **args), expected)
    compressed.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert type(loaded) is type(compressed) and loaded.config.disp_widths == sel.widths.tolist()
    torch.testing.assert_close(loaded(input_ids=ids).logits, compressed(input_ids=ids).logits)
    assert sum(p.numel() for p in loaded.parameters()) == sum(p.numel() for p in compressed.parameters())
    if lm.model.config.tie_word_embeddings:
        assert loaded.lm_head.weight.data_ptr() == loaded.get_input_embeddings().weight.data_ptr()


def with_heads_dropped(sel: Selection) -> Selection:
    """The selection with each even block's first key/value head (and its query heads) dropped."""
    keep = [[*block[:-1], block[-1][1:] if i % 2 == 0 else block[-1]] for i, block in enumerate(sel.keep)]
    return Selection(sel.shape, keep)


@pytest.mark.parametrize("arch", ARCHS)
def test_heads_dropped_compress_to_the_masked_model_and_a_smaller_kv_cache(arch, ids, tmp_path):
    lm = dense_model(arch)
    shape = BlockShape.from_config(lm.model.config)
    sel = with_heads_dropped(hypernetwork_selection(shape, 0.7, seed=3))
    assert sel.widths[0, -1] == shape.kv_heads - 1 and sel.widths[1, -1] == shape.kv_heads
    expected = masked_logits(lm, sel, ids)
    compressed = compress(lm, sel)
    torch.testing.assert_close(compressed(input_ids=ids).logits, expected, rtol=1e-4, atol=1e-4)
    layers = compressed.model.decoder.layers if lm.arch == "opt" else compressed.model.layers
    assert sum(m.weight.numel() for layer in layers for m in layer.modules()
               if isinstance(m, torch.nn.Linear)) == sel.params
    # The cache holds the kept key/value heads only; generation with it matches the masked model's.
    prompt, args = ids[:1, :8], dict(max_new_tokens=10, min_new_tokens=10, do_sample=False, pad_token_id=0)
    out = compressed.generate(prompt, **args, return_dict_in_generate=True)
    cached = out.past_key_values.layers
    assert [c.keys.shape[1] for c in cached] == sel.widths[:, -1].tolist()
    with MaskedBlocks(lm.blocks) as masked:
        masked.masks = sel.masks()
        assert torch.equal(out.sequences, lm.model.generate(prompt, **args))
    compressed.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    torch.testing.assert_close(loaded(input_ids=ids).logits, compressed(input_ids=ids).logits)


def test_models_saved_with_five_widths_per_block_keep_every_head(ids, tmp_path):
    lm = dense_model("qwen3")
    sel = hypernetwork_selection(BlockShape.from_config(lm.model.config), 0.7, seed=3)
    sel = Selection(sel.shape, [block[:-1] for block in sel.keep])  # five per block: every head
    compressed = compress(lm, sel)
    compressed.config.disp_widths = [w[:5] for w in compressed.config.disp_widths]  # as saved before heads
    compressed.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    torch.testing.assert_close(loaded(input_ids=ids).logits, masked_logits(lm, sel, ids), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("arch", ["qwen3", "gemma3_text", "opt"])
def test_training_runs_on_the_masked_family_model(arch):
    lm = dense_model(arch)
    text = torch.randint(0, COMMON["vocab_size"], (2000,), generator=torch.Generator().manual_seed(5))
    cfg = StructuralConfig(steps=3, batch_size=1, seqlen=16, target_ratio=0.6)
    result = train_selection(lm, text, cfg)
    assert len(result.curve) == 3 and result.selection.ratio == pytest.approx(0.6, abs=0.01)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in lm.model.modules())


@pytest.mark.parametrize("arch", ["qwen3", "opt"])
def test_training_selects_heads_when_asked(arch):
    lm = dense_model(arch)
    shape = BlockShape.from_config(lm.model.config)
    text = torch.randint(0, COMMON["vocab_size"], (2000,), generator=torch.Generator().manual_seed(5))
    cfg = StructuralConfig(steps=3, batch_size=1, seqlen=16, target_ratio=0.6, prune_heads=True)
    result = train_selection(lm, text, cfg)
    assert [z.numel() for z in result.hypernetwork.logits()] == shape.full_widths * shape.n_blocks
    assert result.selection.ratio == pytest.approx(0.6, abs=0.01)
    # Pushed hard enough, the heads go first where their scores say so.
    scores = [s.clone() for s in result.hypernetwork.scores()]
    scores[5] = torch.full_like(scores[5], -50.0)
    scores[5][0] = 50.0
    assert fit_budget(shape, scores, 0.6).widths[0, -1] == 1


def test_gemma_windows_start_with_bos_and_others_do_not():
    ids = torch.cat([torch.tensor([2]), torch.arange(10, 200)])
    g = torch.Generator().manual_seed(0)
    with_bos = _random_windows(ids, 8, 16, g, bos_id=2)
    assert with_bos.shape == (8, 16) and (with_bos[:, 0] == 2).all()
    assert (with_bos[:, 2:] - with_bos[:, 1:-1] == 1).all()  # then 15 consecutive text tokens, never the text's <bos>
    plain = _random_windows(ids, 64, 16, g)
    assert plain.shape == (64, 16) and (plain[:, 0] != 2).any() and (plain[:, 2:] - plain[:, 1:-1] == 1).all()


def test_gemma_compressed_model_keeps_bos_per_window():
    from dsa_core.models import window_bos_id

    class Tok:
        bos_token_id = 2

    assert window_bos_id("disp_gemma3_text", Tok()) == 2 and window_bos_id("disp_llama", Tok()) is None


@pytest.mark.parametrize("arch, message", [("gemma3", "multimodal"), ("bert", "does not support")])
def test_other_families_are_refused_in_a_sentence(arch, message):
    with pytest.raises(ModelError, match=message) as e:
        family_of(arch)
    assert "LLaMA, Mistral, Qwen2, Qwen3, Gemma 2, Gemma 3 and OPT" in str(e.value)


def test_post_norm_opt_is_refused_in_a_sentence():
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(FAMILIES["opt"].config(**OPT, do_layer_norm_before=False)).eval()
    lm = LoadedModel(model, None, "tiny post-norm opt", "opt", torch.device("cpu"), torch.float32)
    text = torch.randint(0, OPT["vocab_size"], (2000,), generator=torch.Generator().manual_seed(5))
    with pytest.raises(ModelError, match=r"post-norm \(do_layer_norm_before=False, as in opt-350m\)") as e:
        train_selection(lm, text, StructuralConfig(steps=1, batch_size=1, seqlen=16))
    assert str(e.value).count(".") == 2 and "opt-125m" in str(e.value)  # one sentence (and "opt-1.3b")
    with pytest.raises(ModelError, match="post-norm"):
        compress(lm, Selection.full(BlockShape.from_config(model.config)))
    assert family_of("opt", dense_model("opt").model.config).title == "OPT"


def test_opt_baselines_meet_the_budget_and_keep_the_family(ids):
    """The uniform baseline counts OPT's two MLP matrices; ShortGPT removes OPT blocks from model.decoder.layers."""
    lm = dense_model("opt")
    shape = BlockShape.from_config(lm.model.config)
    assert not shape.gated and shape.mlp_matrices == 2
    sel = uniform_selection(lm, ids, 0.6, batch_size=2)
    assert abs(sel.ratio - 0.6) < 0.01
    torch.testing.assert_close(compress(lm, sel)(input_ids=ids).logits, masked_logits(lm, sel, ids), rtol=1e-4,
                               atol=1e-4)
    influence = block_influence(lm, ids, batch_size=2)
    assert influence.shape == (4,) and (influence > 0).all()
    short = remove_blocks(lm, [1, 2])
    assert len(short.model.decoder.layers) == 2 and short(input_ids=ids).logits.shape == (2, 20, 300)


def test_load_compressed_reads_any_family(tmp_path, tiny):
    lm = dense_model("gemma3_text")
    compress(lm, hypernetwork_selection(BlockShape.from_config(lm.model.config), 0.5, seed=6)).save_pretrained(tmp_path)
    tiny.tokenizer.save_pretrained(tmp_path)
    loaded = load_compressed(tmp_path, device="cpu")
    assert loaded.arch == "disp_gemma3_text"
