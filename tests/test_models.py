import pytest

from dsa_core.errors import ModelError
from dsa_core.models import load_model


def test_tiny_model_blocks_and_layers(tiny):
    assert tiny.arch == "llama" and len(tiny.blocks) == 4
    names = list(tiny.linear_layers(0))
    assert names == ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                     "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
    info = tiny.describe()
    assert info["prunable_params"] == sum(b["params"] for b in info["blocks"])


def test_unsupported_architecture_names_what_was_found(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=100)).save_pretrained(tmp_path)
    with pytest.raises(ModelError, match="Unsupported architecture 'gpt2'"):
        load_model(str(tmp_path), device="cpu")


@pytest.mark.parametrize("spec,msg", [("/no/such/model", "does not exist"), ("/tmp/x.gguf", "does not exist"),
                                      ("random:nope", "Unknown random shape")])
def test_missing_models_are_clear_errors(spec, msg):
    with pytest.raises(ModelError, match=msg):
        load_model(spec, device="cpu")


def test_local_path_without_config(tmp_path):
    with pytest.raises(ModelError, match="no config.json"):
        load_model(str(tmp_path), device="cpu")


def test_real_smollm2_loads_from_the_package(smollm2):
    assert smollm2.arch == "llama" and len(smollm2.blocks) == 30
    assert smollm2.prunable_params == 30 * 3_538_944


def test_default_model_override_to_a_missing_file_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("DSA_DEFAULT_GGUF", str(tmp_path / "gone.gguf"))
    with pytest.raises(ModelError, match="not a file"):
        load_model(None, device="cpu")
