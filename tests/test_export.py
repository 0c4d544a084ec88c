"""Exporting a pruned model: the Hugging Face directory reloads with from_pretrained and computes the same
outputs, its config records the profile and the function, and a 2:4 model's compressed-tensors copy
decompresses (by compressed-tensors itself) to the same weights and the same perplexity."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors import safe_open

from dsa_core import functions
from dsa_core.allocation import allocate
from dsa_core.errors import ConfigError
from dsa_core.evaluate import perplexity
from dsa_core.export import COMPRESSED_DIR, SparsityProfile, export_model, is_n_m_sparse, load_compressed, read_record
from dsa_core.models import LoadedModel, load_model
from dsa_core.prune import achieved_sparsity
from dsa_core.session import PruningSession

FUNCTION = "W:(NO_OP)-(MEAN)-(NEG)-(BAND=0.1)"


@pytest.fixture
def session():
    return PruningSession(load_model("random:tiny", device="cpu"), nsamples=2, seqlen=64, data_source="local")


def prune(session: PruningSession, spec: str, target: float, pattern: str = "unstructured") -> SparsityProfile:
    ratios = np.full(4, target) if spec == "uniform" else allocate(session.stats("wanda"), spec, target).ratios
    session.apply(ratios, "wanda", pattern)
    return SparsityProfile(spec, [float(r) for r in ratios], "wanda", pattern, target, {"nsamples": 2, "seqlen": 64})


def test_export_reloads_with_from_pretrained_and_records_the_profile(session, tmp_path):
    profile = prune(session, FUNCTION, 0.6)
    assert len(set(profile.ratios)) > 1  # a non-uniform profile, so the record is worth checking
    result = export_model(session, tmp_path / "out", profile, extra={"perplexity": 12.5})
    assert result.compressed is None and not (tmp_path / "out" / COMPRESSED_DIR).exists()

    reloaded = load_model(str(tmp_path / "out"), device="cpu")  # a local directory: plain from_pretrained
    ids = session.eval_windows("wikitext2", "test", 64, 2)[0]
    with torch.no_grad():
        assert torch.equal(reloaded.model(input_ids=ids).logits, session.lm.model(input_ids=ids).logits)
    assert reloaded.tokenizer.encode("sparse weights") == session.lm.tokenizer.encode("sparse weights")
    overall, per_block = session.achieved_sparsity()
    assert (overall, per_block) == achieved_sparsity(reloaded)

    record = read_record(tmp_path / "out")
    assert record["allocation"] == FUNCTION and record["ratios"] == profile.ratios
    assert (record["metric"], record["pattern"], record["target"]) == ("wanda", "unstructured", 0.6)
    assert record["function"]["text"] == functions.to_text(functions.parse(FUNCTION))
    assert functions.from_dict(record["function"]["json"]) == functions.parse(FUNCTION)
    assert record["achieved_per_block"] == per_block and record["perplexity"] == 12.5
    assert record["protocol"] == {"nsamples": 2, "seqlen": 64}
    assert reloaded.model.config.sparsity_explorer["ratios"] == profile.ratios
    assert not hasattr(session.lm.model.config, "sparsity_explorer")  # the live model is left as it was
    assert SparsityProfile.from_dict(record).ratios == profile.ratios


def test_baseline_records_no_function(session, tmp_path):
    export_model(session, tmp_path, prune(session, "owl", 0.5))
    assert read_record(tmp_path)["function"] is None


def test_2of4_compressed_tensors_round_trip(session, tmp_path):
    profile = prune(session, "uniform", 0.5, "2:4")
    result = export_model(session, tmp_path, profile)
    cdir = tmp_path / COMPRESSED_DIR
    assert result.compressed == cdir

    config = json.loads((cdir / "config.json").read_text())
    q = config["quantization_config"]
    assert q["quant_method"] == "compressed-tensors"
    s = q["sparsity_config"]
    assert (s["format"], s["sparsity_structure"], s["targets"], s["ignore"]) == \
        ("sparse-24-bitmask", "2:4", ["Linear"], ["lm_head"])
    assert config["sparsity_explorer"]["pattern"] == "2:4"
    with safe_open(cdir / "model.safetensors", "pt") as f:
        keys = set(f.keys())
        packed = f.get_tensor("model.layers.0.mlp.down_proj.compressed")
    assert "model.layers.0.mlp.down_proj.weight" not in keys and "model.layers.0.mlp.down_proj.bitmask" in keys
    assert packed.shape == (64, 80)  # half of the 160 inputs kept

    model = load_compressed(cdir)
    dense = session.lm.model.state_dict()
    restored = model.state_dict()
    assert restored.keys() == dense.keys()
    assert all(torch.equal(restored[k], dense[k]) for k in dense)
    assert all(is_n_m_sparse(m.weight, 2, 4) for n, m in model.named_modules() if n.endswith("_proj"))

    windows = session.eval_windows("wikitext2", "test", 64, 2)[0]
    lm = LoadedModel(model, session.lm.tokenizer, str(cdir), "llama", torch.device("cpu"), torch.float32)
    assert perplexity(lm, windows, 1) == pytest.approx(session.perplexity("wikitext2", "test", 64, 2), rel=1e-6)


@pytest.mark.parametrize("case,message", [
    ("unpruned", "profile says 50.0%"),
    ("not 2:4", "is not 2:4 sparse"),
    ("compressed unstructured", "2:4 models only"),
    ("ratios", "has 3 ratios"),
])
def test_inconsistent_exports_are_refused(session, tmp_path, case, message):
    profile = SparsityProfile("uniform", [0.5] * 4, "wanda", "2:4" if case == "not 2:4" else "unstructured", 0.5)
    if case != "unpruned":
        session.apply(np.full(4, 0.5), "wanda")
    if case == "ratios":
        profile.ratios = [0.5] * 3
    with pytest.raises(ConfigError, match=message):
        export_model(session, tmp_path / "out", profile, compressed=case == "compressed unstructured")
    assert not (tmp_path / "out").exists()


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dsa_core", *args], capture_output=True, text=True, timeout=300)


QUICK = ["--model", "random:tiny", "--nsamples", "2", "--seqlen", "64", "--eval-windows", "2", "--device", "cpu",
         "--data-source", "local"]


def test_cli_exports_2of4_and_refuses_a_non_empty_directory(tmp_path):
    target = tmp_path / "model"
    args = ["export", *QUICK, "--pattern", "2:4", "--sparsity", "0.5", "--out", str(target), "--json"]
    out = run(*args)
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["compressed"] == str(target / COMPRESSED_DIR) and summary["achieved_sparsity"] == 0.5
    record = read_record(target)
    assert record["perplexity"] == summary["perplexity"] > 1
    assert record["protocol"]["mode"] == "sequential" and record["protocol"]["windows"] == 2
    assert (target / COMPRESSED_DIR / "model.safetensors").is_file()
    again = run(*args)
    assert again.returncode == 2 and "not empty" in again.stderr and "Traceback" not in again.stderr
