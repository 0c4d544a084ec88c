"""Configuration of a structural-pruning run and the training of its hypernetwork.

The objective is DISP-LLM's: language-model cross-entropy of the masked model plus
λ·|log(kept-parameter ratio / p)|, on random windows of the calibration text (never a test split). Only the
hypernetwork learns; the base model stays frozen. The binary masks are then fitted to the parameter budget
(`selection.fit_budget`). No perplexity, compression or storage here.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields

import torch
import torch.nn.functional as F

from dsa_core.errors import ConfigError, ModelError
from dsa_core.models import LoadedModel, pick_device
from dsa_core.settings import option, shared, validate_declared
from dsa_core.structural.families import family_of
from dsa_core.structural.layouts import Independent
from dsa_core.structural.masking import MaskedBlocks
from dsa_core.structural.selection import BlockShape, HyperNetwork, Selection

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]

# On a CPU the GPU-sized defaults take over an hour (SmolLM2: 200 steps of 4×512 tokens, then the whole test split
# at 2048, three times). These keep a default CPU run to minutes; the higher learning rate lets the hypernetwork
# reach the budget in that many steps (at 1e-3 its kept ratio barely leaves 1.0 in 100 steps).
CPU_DEFAULTS = {"steps": 100, "batch_size": 1, "seqlen": 256, "lr": 1e-2, "eval_seqlen": 512, "eval_windows": 16,
                "baseline_samples": 8}

# Stronger baselines a run may measure beside DISP-LLM and the uniform one, at the same budget and calibration text
# (the runner builds them): what each is, by name.
EXTRA_BASELINES = {
    "hypernet": "the same hypernetwork with uniform widths (layouts.Shared), trained the same steps",
    "shortgpt": "ShortGPT: the blocks of least Block Influence removed",
}


@dataclass
class StructuralConfig:
    """A structural-pruning run: what to prune, to which share of the blocks' linear-layer parameters, how
    the hypernetwork trains, and how the result is measured."""

    model: str | None = shared("model", help="a LLaMA, Mistral, Qwen2/3, Gemma 2/3 or pre-norm OPT model: hub "
                               "id, local directory, .gguf file, gemma3-270m, random:<shape>; default: "
                               "SmolLM2-135M-Instruct")
    target_ratio: float = option(0.7, "share of the blocks' linear-layer parameters to keep")
    steps: int = option(200, "hypernetwork training steps", minimum=1)
    batch_size: int = shared("batch_size", default=4, help="windows per training step")
    seqlen: int = shared("seqlen", default=512, help="tokens per training window")
    lr: float = option(1e-3, "learning rate")
    weight_decay: float = 0.05
    lam: float = option(16.0, "weight λ of |log(ratio / target)|")
    temperature: float = option(0.4, "temperature of the hypernetwork's Gumbel-sigmoid")
    offset: float = option(3.0, "offset added to the hypernetwork's logits in its Gumbel-sigmoid")
    calib: str = shared("calib")
    data_source: str = shared("data_source")
    eval_seqlen: int = option(2048, "tokens per test window", minimum=16)
    eval_windows: int | None = option(None, "cap on WikiText-2 test windows (0 on the command line: the whole test "
                                      "split)", type=int, minimum=1)
    baseline: bool = True  # the uniform-width baseline by activation norms, untrained
    extra_baselines: list[str] = field(default_factory=list)  # names of EXTRA_BASELINES, measured the same way
    baseline_samples: int = option(32, "calibration windows for the baseline's activation norms", minimum=1)
    max_train_seconds: float | None = option(None, "stop training after this long, whatever --steps says", type=float)
    # GPU matrix kernels want widths in multiples of 8.
    align: int = option(8, "round kept widths to multiples of this (1: exact widths)", minimum=1)
    prune_heads: bool = option(False, "also select whole attention heads (each key/value head with its query heads), "
                               "so that the KV cache shrinks too; DISP-LLM itself keeps every head")
    seed: int = shared("seed")
    device: str | None = shared("device")
    dtype: str | None = shared("dtype")

    @classmethod
    def defaults_for(cls, device: str | None, **settings) -> StructuralConfig:
        """The defaults sized for `device` (CPU_DEFAULTS on a CPU, `None` meaning the one `pick_device` picks),
        then `settings`."""
        sized = CPU_DEFAULTS if pick_device(device).type == "cpu" else {}
        return cls(**{**sized, "device": device, **settings})

    def validate(self) -> StructuralConfig:
        validate_declared(self)
        if not 0.0 < self.target_ratio < 1.0:
            raise ConfigError(f"Target ratio {self.target_ratio} is outside (0, 1); give the share of "
                              "parameters to keep, such as 0.7.")
        if self.lr <= 0 or self.weight_decay < 0 or self.lam < 0:
            raise ConfigError("The learning rate must be positive; weight decay and λ cannot be negative.")
        if self.temperature <= 0:
            raise ConfigError("The Gumbel-sigmoid temperature must be positive.")
        unknown = [name for name in self.extra_baselines if name not in EXTRA_BASELINES]
        if unknown:
            raise ConfigError(f"Unknown baseline '{unknown[0]}'; choose among uniform, {', '.join(EXTRA_BASELINES)}.")
        if self.max_train_seconds is not None and self.max_train_seconds <= 0:
            raise ConfigError("The training time limit must be positive.")
        return self

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> StructuralConfig:
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ConfigError(f"Unknown configuration keys: {', '.join(sorted(unknown))}.")
        return cls(**d).validate()


@dataclass
class TrainingResult:
    """The trained hypernetwork's selection (fitted to the budget), the ratio its own masks kept before
    fitting, and one loss-curve point per step."""

    selection: Selection
    raw_ratio: float
    curve: list[dict] = field(default_factory=list)
    hypernetwork: HyperNetwork | None = None


def _random_windows(ids: torch.Tensor, n: int, seqlen: int, generator: torch.Generator,
                    bos_id: int | None = None) -> torch.Tensor:
    """n random windows of seqlen tokens; with `bos_id` (LoadedModel.window_bos: Gemma), each is <bos> followed by
    seqlen - 1 text tokens, as in dsa_core.data's windows."""
    if bos_id is not None and ids.numel() and int(ids[0]) == bos_id:
        ids = ids[1:]
    span = seqlen - (bos_id is not None)
    starts = torch.randint(0, ids.numel() - span, (n,), generator=generator)
    windows = torch.stack([ids[s : s + span] for s in starts.tolist()])
    return windows if bos_id is None else torch.cat([windows.new_full((n, 1), bos_id), windows], dim=1)


def train_selection(lm: LoadedModel, ids: torch.Tensor, cfg: StructuralConfig, progress: Progress | None = None,
                    on_step: Callable[[dict], None] | None = None, layout: type = Independent) -> TrainingResult:
    """Train a hypernetwork on windows of the token ids `ids` and return its selection. `layout` (layouts.py) maps
    its outputs to the blocks' selections: DISP-LLM's own by default."""
    family_of(lm.arch, lm.model.config)  # refuses the families it cannot prune, in a sentence
    if ids.numel() <= cfg.seqlen:
        raise ConfigError(f"The calibration text has {ids.numel()} tokens, too short for windows of {cfg.seqlen}.")
    shape = BlockShape.from_config(lm.model.config)
    space = layout(shape, cfg.prune_heads)
    hn = HyperNetwork(space.widths(), temperature=cfg.temperature, offset=cfg.offset, seed=cfg.seed).to(lm.device)
    optimizer = torch.optim.AdamW(hn.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    data_gen = torch.Generator().manual_seed(cfg.seed)
    noise_gen = torch.Generator(lm.device).manual_seed(cfg.seed)
    curve: list[dict] = []
    started = time.perf_counter()
    hn.train()
    with MaskedBlocks(lm.blocks) as masked:
        for step in range(1, cfg.steps + 1):
            batch = _random_windows(ids, cfg.batch_size, cfg.seqlen, data_gen, lm.window_bos).to(lm.device)
            masks = space.expand(hn.sample(noise_gen))
            masked.masks = masks
            logits = lm.model(input_ids=batch, use_cache=False).logits
            ce = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), batch[:, 1:].flatten())
            widths = torch.stack([torch.stack([m.sum() for m in block]) for block in masks])
            ratio = shape.block_params(widths).sum() / shape.dense_params
            reg = cfg.lam * torch.log(ratio / cfg.target_ratio).abs()
            loss = ce + reg
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            point = {"step": step, "loss": loss.item(), "ce": ce.item(), "reg": reg.item(), "ratio": ratio.item(),
                     "seconds": time.perf_counter() - started}
            if not all(math.isfinite(v) for v in point.values()):
                raise ModelError(f"Training diverged at step {step} (loss {point['loss']}); lower --lr.")
            curve.append(point)
            if on_step:
                on_step(point)
            if progress:
                progress("training", step, cfg.steps)
            if cfg.max_train_seconds is not None and time.perf_counter() - started > cfg.max_train_seconds:
                log.warning("training stopped after %d of %d steps: time limit of %.0f s", step, cfg.steps,
                            cfg.max_train_seconds)
                break
    hn.eval()
    scores = hn.scores()
    raw = Selection.from_masks(shape, [(s > 0).float() for block in space.expand(scores) for s in block])
    selection = space.fit(scores, cfg.target_ratio, cfg.align)
    log.info("hypernetwork kept %.4f of the parameters; fitted to %.4f", raw.ratio, selection.ratio)
    return TrainingResult(selection=selection, raw_ratio=raw.ratio, curve=curve, hypernetwork=hn)
