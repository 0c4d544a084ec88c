"""The compressed model (index-select / index-add, sliced weights) computes what the masked training-time model
computes, keeps the dense function when nothing is pruned, generates with a KV cache, and round-trips through
save_pretrained / from_pretrained."""

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from dsa_core.errors import ModelError
from dsa_core.models import LoadedModel
from dsa_core.structural.compressed import DispLlamaForCausalLM, as_loaded, compress, load_compressed
from dsa_core.structural.masking import MaskedBlocks
from dsa_core.structural.selection import BlockShape, Selection


def random_selection(shape: BlockShape, keep: float, seed: int = 0) -> Selection:
    g = torch.Generator().manual_seed(seed)
    return Selection(shape, [[torch.sort(torch.randperm(w, generator=g)[: max(1, int(w * keep))]).values
                              for w in shape.full_widths] for _ in range(shape.n_blocks)])


def perturb(lm: LoadedModel, seed: int = 0) -> LoadedModel:
    """Norm weights away from 1 and larger projections, so that folding and slicing errors would show."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in lm.model.named_parameters():
            if "layernorm" in name or name.endswith("norm.weight"):
                p.copy_(1 + 0.5 * torch.randn(p.shape, generator=g))
            elif ".layers." in name:
                p.mul_(5.0) if name.endswith("weight") else p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return lm


def masked_logits(lm: LoadedModel, sel: Selection, ids: torch.Tensor) -> torch.Tensor:
    with MaskedBlocks(lm.blocks) as masked:
        masked.masks = sel.masks(lm.device)
        return lm.model(input_ids=ids, use_cache=False).logits


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model():
    from dsa_core.models import load_model

    return perturb(load_model("random:tiny", device="cpu"))


@pytest.fixture(scope="module")
def ids():
    return torch.randint(0, 5000, (2, 24), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("keep", [0.3, 0.7])
def test_compressed_equals_masked_model(model, ids, keep):
    sel = random_selection(BlockShape.from_config(model.model.config), keep, seed=int(keep * 10))
    expected = masked_logits(model, sel, ids)
    got = compress(model, sel)(input_ids=ids).logits
    assert (expected - model.model(input_ids=ids).logits).abs().max() > 0.1  # the masks matter
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_compressed_equals_masked_model_with_biases(ids):
    config = LlamaConfig(vocab_size=5000, hidden_size=32, intermediate_size=80, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, attention_bias=True, mlp_bias=True)
    torch.manual_seed(0)
    dense = AutoModelForCausalLM.from_config(config).eval()
    lm = perturb(LoadedModel(dense, None, "biased", "llama", torch.device("cpu"), torch.float32), seed=1)
    sel = random_selection(BlockShape.from_config(config), 0.5, seed=2)
    torch.testing.assert_close(compress(lm, sel)(input_ids=ids).logits, masked_logits(lm, sel, ids),
                               rtol=1e-4, atol=1e-4)


def test_full_selection_is_the_dense_model(model, ids):
    full = compress(model, Selection.full(BlockShape.from_config(model.model.config)))
    torch.testing.assert_close(full(input_ids=ids).logits, model.model(input_ids=ids).logits, rtol=1e-4, atol=1e-4)


def test_bf16_compressed_model_is_as_close_as_the_bf16_masked_model(model, ids):
    from dsa_core.models import load_model

    sel = random_selection(BlockShape.from_config(model.model.config), 0.6, seed=5)
    reference = masked_logits(model, sel, ids)
    half = perturb(load_model("random:tiny", device="cpu", dtype="bf16"))
    masked_error = (masked_logits(half, sel, ids).float() - reference).abs().mean()
    compressed_error = (compress(half, sel)(input_ids=ids).logits.float() - reference).abs().mean()
    assert compressed_error <= 1.5 * masked_error + 1e-3


def test_greedy_generation_with_cache_matches_the_masked_model(model, ids):
    sel = random_selection(BlockShape.from_config(model.model.config), 0.5, seed=7)
    compressed = compress(model, sel)
    prompt = ids[:1, :8]
    args = dict(max_new_tokens=8, min_new_tokens=8, do_sample=False, pad_token_id=0)
    with MaskedBlocks(model.blocks) as masked:
        masked.masks = sel.masks()
        expected = model.model.generate(prompt, **args)
    assert torch.equal(compressed.generate(prompt, **args), expected)


def test_static_cache_decoding_is_one_graph_and_matches_generate(model, ids):
    """Serving engines (and bench/bench_structural_speed.py) decode from a static KV cache with each step replayed
    from one CUDA graph: the compressed model's step must trace without a break (no value read back to Python) and
    decode what generate() does."""
    from transformers import StaticCache

    compressed = compress(model, random_selection(BlockShape.from_config(model.model.config), 0.5, seed=3))
    prompt, new = ids[:, :8], 5
    expected = compressed.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new,
                                   min_new_tokens=new, do_sample=False, pad_token_id=0)[:, 8:]
    cache = StaticCache(config=compressed.config, max_cache_len=8 + new)
    position = torch.tensor([8])

    def step(token: torch.Tensor) -> torch.Tensor:
        logits = compressed(input_ids=token, past_key_values=cache, cache_position=position, use_cache=True).logits
        position.add_(1)
        return logits[:, -1:].argmax(-1)

    one_graph = torch.compile(step, backend="eager", fullgraph=True, dynamic=False)
    with torch.no_grad():
        logits = compressed(input_ids=prompt, past_key_values=cache, use_cache=True, logits_to_keep=1).logits
        tokens = [logits[:, -1:].argmax(-1)]
        for _ in range(new - 1):
            tokens.append(one_graph(tokens[-1]))
    assert torch.equal(torch.cat(tokens, dim=1), expected)


def test_hidden_states_are_recorded(model, ids):
    sel = random_selection(BlockShape.from_config(model.model.config), 0.5)
    out = compress(model, sel)(input_ids=ids, output_hidden_states=True)
    assert len(out.hidden_states) == model.model.config.num_hidden_layers + 1


def test_save_and_load_round_trip(model, ids, tmp_path):
    sel = random_selection(BlockShape.from_config(model.model.config), 0.5, seed=3)
    compressed = compress(model, sel)
    compressed.save_pretrained(tmp_path)
    model.tokenizer.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert isinstance(loaded, DispLlamaForCausalLM)
    assert loaded.config.model_type == "disp_llama" and loaded.config.disp_widths == sel.widths.tolist()
    assert loaded.model.layers[1].mlp_out_index.dtype == torch.long
    torch.testing.assert_close(loaded(input_ids=ids).logits, compressed(input_ids=ids).logits)
    lm = load_compressed(tmp_path, device="cpu")
    assert lm.arch == "disp_llama" and lm.tokenizer is not None
    assert sum(p.numel() for p in lm.model.parameters()) == sum(p.numel() for p in compressed.parameters())


def test_load_compressed_refuses_a_dense_model(model, tmp_path):
    model.model.save_pretrained(tmp_path)
    model.tokenizer.save_pretrained(tmp_path)
    with pytest.raises(ModelError, match="not a compressed"):
        load_compressed(tmp_path, device="cpu")


def test_as_loaded_measures_like_the_dense_model(model, ids):
    from dsa_core.evaluate import perplexity

    full = as_loaded(compress(model, Selection.full(BlockShape.from_config(model.model.config))), model, "full")
    assert perplexity(full, ids, 2) == pytest.approx(perplexity(model, ids, 2), rel=1e-4)


@pytest.mark.integration
def test_smollm2_trained_briefly_compresses_to_the_masked_model(smollm2, tmp_path):
    from dsa_core import data
    from dsa_core.structural.training import StructuralConfig, train_selection

    ids = data.tokenize(smollm2.tokenizer, data.load_text("wikitext2", "train", "local").text[:200_000])
    cfg = StructuralConfig(target_ratio=0.7, steps=2, batch_size=1, seqlen=32)
    result = train_selection(smollm2, ids, cfg)
    sel = result.selection
    assert sel.ratio == pytest.approx(0.7, rel=0.01)
    assert (sel.widths.max(0) > sel.widths.min(0)).any()  # widths differ between blocks
    window = ids[None, 1000:1064]
    expected = masked_logits(smollm2, sel, window)
    compressed = compress(smollm2, sel)
    torch.testing.assert_close(compressed(input_ids=window).logits, expected, rtol=1e-3, atol=1e-3)
    compressed.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    torch.testing.assert_close(loaded(input_ids=window).logits, expected, rtol=1e-3, atol=1e-3)
