"""The llm-compressor recipe of an allocation: its modifier, one sparsity per target, targets named as in the model
and in its module order (llm-compressor pairs the list with the matched modules in that order), blocks as targets
when each block has one ratio, linear layers when they differ; what it cannot express is refused."""

import numpy as np
import pytest
import yaml
from torch import nn

from dsa_core.errors import ConfigError
from dsa_core.export import RECIPE_FILE, SparsityProfile, export_model
from dsa_core.models import load_model
from dsa_core.recipe import llmcompressor_recipe, recipe_yaml


@pytest.fixture(scope="module")
def lm():
    return load_model("random:tiny", device="cpu")


def _modifier(recipe: dict) -> tuple[str, dict]:
    (name, modifier), = recipe["sparsity_stage"]["sparsity_modifiers"].items()
    return name, modifier


def _in_module_order(lm, targets: list[str]) -> bool:
    order = {name: i for i, (name, _) in enumerate(lm.model.named_modules())}
    return all(t in order for t in targets) and [order[t] for t in targets] == sorted(order[t] for t in targets)


def test_one_ratio_per_block_targets_the_blocks(lm):
    ratios = [0.5, 0.6, 0.7, 0.8]
    name, m = _modifier(llmcompressor_recipe(lm, ratios, "wanda"))
    assert name == "WandaPruningModifier" and m["mask_structure"] == "0:0"
    assert m["targets"] == [f"model.layers.{i}" for i in range(4)] and m["sparsity"] == ratios
    assert _in_module_order(lm, m["targets"])


def test_ratios_per_linear_layer_target_each_layer_by_its_name(lm):
    ratios = np.linspace(0.3, 0.8, 28)
    name, m = _modifier(llmcompressor_recipe(lm, ratios, "sparsegpt", "unstructured"))
    modules = dict(lm.model.named_modules())
    assert name == "SparseGPTModifier" and len(m["targets"]) == len(m["sparsity"]) == 28
    assert all(isinstance(modules[t], nn.Linear) for t in m["targets"]) and _in_module_order(lm, m["targets"])
    assert m["targets"][:2] == ["model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.k_proj"]
    assert m["sparsity"] == [float(r) for r in ratios]  # exact, as SparseGPT's per-block counts need
    (_, read), = yaml.safe_load(recipe_yaml(llmcompressor_recipe(lm, ratios, "sparsegpt")))["sparsity_stage"][
        "sparsity_modifiers"].items()
    assert read["sparsity"] == m["sparsity"]  # and so does the YAML file llm-compressor reads


def test_n_m_patterns_and_unsupported_metrics(lm):
    assert _modifier(llmcompressor_recipe(lm, [0.5] * 4, "wanda", "2:4"))[1]["mask_structure"] == "2:4"
    with pytest.raises(ConfigError, match="wanda and sparsegpt"):
        llmcompressor_recipe(lm, [0.5] * 4, "magnitude")
    with pytest.raises(ValueError, match="ratios fit neither"):
        llmcompressor_recipe(lm, [0.5] * 5, "wanda")


def test_an_export_carries_its_recipe_as_yaml(lm, tmp_path):
    from dsa_core.session import PruningSession

    session = PruningSession(lm, nsamples=2, seqlen=64, data_source="local")
    ratios = [0.4, 0.5, 0.6, 0.7]
    session.apply(np.asarray(ratios), "wanda")
    profile = SparsityProfile("levels:40,50,60,70", ratios, "wanda", "unstructured", 0.55, {"nsamples": 2})
    export_model(session, tmp_path / "out", profile)
    session.restore()
    text = (tmp_path / "out" / RECIPE_FILE).read_text()
    assert yaml.safe_load(text) == llmcompressor_recipe(lm, ratios, "wanda") and text == recipe_yaml(
        llmcompressor_recipe(lm, ratios, "wanda"))
