"""An allocation as a recipe for llm-compressor (vllm-project/llm-compressor), so that its users prune to the ratios
found here with their own tool: its WandaPruningModifier or SparseGPTModifier with one sparsity per target, the
per-layer sparsity its issue #1231 asks for. Targets are the decoder blocks when every linear layer of a block
shares its ratio, else the linear layers themselves, each named as in the model (llm-compressor matches exact names
and takes the list in the model's module order). Written as YAML, llm-compressor's recipe format, without
importing it (its pins conflict with ours): `bench/bench_llmcompressor.py --recipe` checks that it prunes as we do.
"""

from __future__ import annotations

import yaml

from dsa_core.errors import ConfigError
from dsa_core.models import BLOCK_PATHS, LoadedModel
from dsa_core.prune import layer_ratios
from dsa_core.scores import parse_pattern

MODIFIERS = {"wanda": "WandaPruningModifier", "sparsegpt": "SparseGPTModifier"}


def llmcompressor_recipe(lm: LoadedModel, ratios, metric: str, pattern: str = "unstructured") -> dict:
    """The recipe (as a dict) that prunes `lm` with `metric` to `ratios` (one per block or per linear layer)."""
    if metric not in MODIFIERS:
        raise ConfigError(f"llm-compressor recipes are written for {' and '.join(MODIFIERS)}, not '{metric}'.")
    nm = parse_pattern(pattern)
    blocks = range(len(lm.blocks))
    per_layer = layer_ratios(ratios, [len(lm.linear_layers(i)) for i in blocks])
    prefix = BLOCK_PATHS[lm.arch]
    if all(len(set(r)) == 1 for r in per_layer):
        targets, sparsity = [f"{prefix}.{i}" for i in blocks], [r[0] for r in per_layer]
    else:
        targets = [f"{prefix}.{i}.{name}" for i in blocks for name in lm.linear_layers(i)]
        sparsity = [x for r in per_layer for x in r]
    # Exact ratios (YAML keeps a float's every digit): SparseGPT prunes ⌊rows · 128 · ratio⌋ weights of each block of
    # columns, a count that a ratio rounded to 6 decimals can move by one.
    modifier = {"sparsity": [float(s) for s in sparsity],
                "mask_structure": "0:0" if nm is None else f"{nm[0]}:{nm[1]}", "targets": targets}
    return {"sparsity_stage": {"sparsity_modifiers": {MODIFIERS[metric]: modifier}}}


def recipe_yaml(recipe: dict) -> str:
    return yaml.safe_dump(recipe, sort_keys=False, width=120)
