"""Save a pruned model for deployment, with a record of how it was pruned.

`export_model` writes a Hugging Face directory (safetensors weights, config, tokenizer) that
`AutoModelForCausalLM.from_pretrained` loads as it is; its config.json carries a `sparsity_explorer` key with the
sparsity profile (allocation, per-block ratios, metric, pattern, target, achieved sparsity, protocol) and, for a DSA
function, the function itself. A 2:4 model is also written in compressed-tensors' `sparse-24-bitmask` format (in
the `compressed-tensors/` sub-directory), the sparse format vLLM's compressed-tensors integration reads; the format
is produced and read back by the compressed-tensors package, never by hand. This module writes what it is given:
it never scores, prunes or evaluates.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from dsa_core import functions
from dsa_core.errors import ConfigError, ModelError
from dsa_core.models import LoadedModel
from dsa_core.prune import achieved_sparsity
from dsa_core.recipe import MODIFIERS, llmcompressor_recipe, recipe_yaml
from dsa_core.scores import parse_pattern
from dsa_core.session import PruningSession
from dsa_core.settings import check_shared

log = logging.getLogger(__name__)

CONFIG_KEY = "sparsity_explorer"
COMPRESSED_DIR = "compressed-tensors"
RECIPE_FILE = "llmcompressor_recipe.yaml"
FORMAT_VERSION = 1
SPARSITY_TOLERANCE = 0.02  # how far the weights' share of zeros may stray from the profile's target


@dataclass
class SparsityProfile:
    """How a model was pruned: the allocation as written (baseline, preset or function text), the ratio of each
    block, the score metric, the pattern, the target sparsity, and the protocol (calibration, mode, results)."""

    allocation: str
    ratios: list[float]
    metric: str
    pattern: str
    target: float
    protocol: dict = field(default_factory=dict)

    def validate(self) -> SparsityProfile:
        check_shared("metric", self.metric)
        check_shared("sparsity", self.target)
        parse_pattern(self.pattern)
        if not self.ratios or any(not 0.0 <= r < 1.0 for r in self.ratios):
            raise ConfigError("A sparsity profile needs one ratio in [0, 1) per block.")
        return self

    def function(self) -> functions.AllocationFunction | None:
        """The DSA function this allocation names (its text form or a preset), None for a baseline."""
        spec = self.allocation.strip()
        if spec[:2].upper() == "W:":
            return functions.parse(spec)
        return functions.PRESETS.get(spec.lower())

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ratios"] = [float(r) for r in self.ratios]
        fn = self.function()
        d["function"] = None if fn is None else {"text": functions.to_text(fn), "json": functions.to_dict(fn),
                                                 "formula": functions.display_formula(fn)}
        return d

    @classmethod
    def from_dict(cls, d: dict) -> SparsityProfile:
        return cls(allocation=d["allocation"], ratios=list(d["ratios"]), metric=d["metric"], pattern=d["pattern"],
                   target=float(d["target"]), protocol=dict(d.get("protocol") or {})).validate()


@dataclass
class ExportResult:
    path: Path
    compressed: Path | None
    achieved_sparsity: float
    record: dict


def is_n_m_sparse(weight: torch.Tensor, n: int, m: int) -> bool:
    """Whether at least n of every m consecutive weights along the input dimension are zero."""
    rows, cols = weight.shape
    if cols % m:
        return False
    return bool(((weight.view(rows, cols // m, m) == 0).sum(-1) >= n).all())


def _unpruned_linears(model: nn.Module, pruned: set[int]) -> list[str]:
    """Names of the linear layers outside the decoder blocks (the LM head), which pruning leaves dense."""
    return [name for name, m in model.named_modules() if isinstance(m, nn.Linear) and id(m) not in pruned]


def _check_weights(lm: LoadedModel, profile: SparsityProfile) -> tuple[float, list[float]]:
    if len(profile.ratios) != len(lm.blocks):
        raise ConfigError(f"The profile has {len(profile.ratios)} ratios but the model has {len(lm.blocks)} blocks.")
    overall, per_block = achieved_sparsity(lm)
    if abs(overall - profile.target) > SPARSITY_TOLERANCE:
        raise ConfigError(f"The model's weights are {overall:.1%} zero but the profile says {profile.target:.1%}; "
                          "prune the model with this profile before exporting it.")
    nm = parse_pattern(profile.pattern)
    if nm is not None:
        for i in range(len(lm.blocks)):
            for name, m in lm.linear_layers(i).items():
                if not is_n_m_sparse(m.weight, *nm):
                    raise ConfigError(f"Layer {name} of block {i} is not {profile.pattern} sparse; prune the model "
                                      f"with --pattern {profile.pattern} before exporting it.")
    return overall, per_block


def _prepare_dir(path: Path, overwrite: bool) -> None:
    if path.exists() and not path.is_dir():
        raise ConfigError(f"Export path {path} is a file; give a directory.")
    if path.is_dir() and any(path.iterdir()):
        if not overwrite:
            raise ConfigError(f"Export directory {path} is not empty; choose another or pass --overwrite.")
        if (path / COMPRESSED_DIR).is_dir():  # a stale compressed copy would contradict the new export
            shutil.rmtree(path / COMPRESSED_DIR)
    path.mkdir(parents=True, exist_ok=True)


def _write_compressed(lm: LoadedModel, path: Path, sparsity: float) -> None:
    """The 2:4 model in compressed-tensors' sparse-24-bitmask format: kept values plus a bitmask per layer, and the
    `quantization_config.sparsity_config` entry of config.json that vLLM reads to pick its 2:4 kernels."""
    try:
        from compressed_tensors.compressors import ModelCompressor
        from compressed_tensors.config import Sparse24BitMaskConfig
    except ImportError as e:
        raise ModelError("The 2:4 compressed export needs the 'compressed-tensors' package (see requirements.txt).") \
            from e
    pruned = {id(m) for i in range(len(lm.blocks)) for m in lm.linear_layers(i).values()}
    config = Sparse24BitMaskConfig(global_sparsity=sparsity, sparsity_structure="2:4", targets=["Linear"],
                                   ignore=_unpruned_linears(lm.model, pruned))
    compressor = ModelCompressor(sparsity_config=config)
    path.mkdir(parents=True, exist_ok=True)
    lm.model.save_pretrained(path, state_dict=compressor.compress(lm.model))
    lm.tokenizer.save_pretrained(path)
    compressor.update_config(str(path))


def export_model(source: PruningSession | LoadedModel, path: str | Path, profile: SparsityProfile, *,
                 compressed: bool | None = None, overwrite: bool = False, extra: dict | None = None) -> ExportResult:
    """Write the model as it is now (pruned) to `path`; see the module docstring for the layout.

    compressed: also write the compressed-tensors copy; None means "when the pattern is 2:4".
    extra: further JSON-able facts to record beside the profile (perplexity, environment...).
    """
    lm = source.lm if isinstance(source, PruningSession) else source
    profile.validate()
    if compressed is None:
        compressed = profile.pattern == "2:4"
    if compressed and profile.pattern != "2:4":
        raise ConfigError(f"The compressed-tensors export holds 2:4 models only; this one is {profile.pattern}.")
    overall, per_block = _check_weights(lm, profile)
    path = Path(path).expanduser()
    _prepare_dir(path, overwrite)
    record = {"format_version": FORMAT_VERSION, "source_model": lm.name, **profile.to_dict(),
              "achieved_sparsity": overall, "achieved_per_block": per_block, **(extra or {})}
    json.dumps(record, allow_nan=False)  # refuse what config.json could not hold before writing anything
    setattr(lm.model.config, CONFIG_KEY, record)
    try:
        lm.model.save_pretrained(path)
        lm.tokenizer.save_pretrained(path)
        if compressed:
            _write_compressed(lm, path / COMPRESSED_DIR, overall)
        if profile.metric in MODIFIERS:
            recipe = llmcompressor_recipe(lm, profile.ratios, profile.metric, profile.pattern)
            (path / RECIPE_FILE).write_text(recipe_yaml(recipe))
    finally:
        delattr(lm.model.config, CONFIG_KEY)  # the session's model stays as it was loaded
    log.info("Exported %s to %s%s", lm.name, path, " (+ compressed-tensors 2:4)" if compressed else "")
    return ExportResult(path, path / COMPRESSED_DIR if compressed else None, overall, record)


def read_record(path: str | Path) -> dict:
    """The `sparsity_explorer` record of an exported directory."""
    config = Path(path) / "config.json"
    try:
        return json.loads(config.read_text())[CONFIG_KEY]
    except (OSError, ValueError, KeyError) as e:
        raise ModelError(f"{path} holds no Sparsity Explorer export record ({e}).") from e


@torch.no_grad()
def load_compressed(path: str | Path, dtype: torch.dtype | None = None) -> nn.Module:
    """A compressed-tensors 2:4 directory decompressed back to a dense model on the CPU, by compressed-tensors
    itself (transformers no longer decompresses sparse formats)."""
    from compressed_tensors.compressors import ModelCompressor
    from transformers import AutoConfig, AutoModelForCausalLM

    compressor = ModelCompressor.from_pretrained(str(path))
    if compressor is None or compressor.sparsity_config is None:
        raise ModelError(f"{path} is not a compressed-tensors sparse model.")
    config = AutoConfig.from_pretrained(path)
    del config.quantization_config  # a plain skeleton; the compressor fills in its weights
    model = AutoModelForCausalLM.from_config(config, dtype=dtype or config.dtype)
    compressor.decompress(str(path), model)
    model.tie_weights()
    return model.eval().requires_grad_(False)
