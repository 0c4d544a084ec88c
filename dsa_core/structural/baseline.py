"""Structural baselines at a parameter budget: uniform widths with one shared hidden index set, and ShortGPT's
removal of whole blocks by Block Influence.

Every block reads and writes the same hidden channels (those with the largest activation norms, summed
over blocks, each block's four hidden-side activations weighted equally) and keeps the same number of
intermediate channels (per block, the largest activation norm × down_proj column norm). Hidden and
intermediate widths shrink by the same factor, the intermediate width then set so that the count meets
the budget. Returns a Selection, so the baseline is compressed and measured exactly like DISP-LLM's.

ShortGPT (Men et al., 2024) removes the blocks whose output is most like their input (Block Influence, the
mean 1 - cos(input, output) on calibration windows), as many as the budget says; the result is the family's
own model with fewer blocks. (SliceGPT-style orthogonal slicing is not offered: see docs/structural.md.)
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from dsa_core.errors import ConfigError
from dsa_core.models import BLOCK_PATHS, LoadedModel
from dsa_core.structural.families import block_parts, family_of
from dsa_core.structural.selection import BlockShape, Selection


def _multiples(width: float, full: int, align: int) -> list[int]:
    """The multiples of `align` (or the full width) just below and above `width`, within [align, full]."""
    lo = align * math.floor(width / align)
    return sorted({min(full, max(align, w)) for w in (lo, lo + align)})


def uniform_widths(shape: BlockShape, target: float, align: int = 1) -> tuple[int, int]:
    """Hidden and intermediate widths shared by all blocks whose kept parameters are closest to `target`,
    each a multiple of `align` (or the full width)."""
    if not 0.0 < target <= 1.0:
        raise ConfigError(f"Target ratio {target} is outside (0, 1]; give the share of parameters to keep.")
    per_hidden = 2 * shape.q_dim + 2 * shape.kv_dim  # q/k/v read and o_proj writes each hidden channel
    budget = target * shape.dense_params / shape.n_blocks
    # Scale both widths by s: s·H·per_hidden + k·s²·H·I = budget, k the MLP's matrices (3, or 2 in OPT).
    k = shape.mlp_matrices
    a, b = k * shape.hidden * shape.intermediate, shape.hidden * per_hidden
    s = (-b + math.sqrt(b * b + 4 * a * budget)) / (2 * a)
    # Of the aligned widths around the solution, the pair whose count is closest to the budget.
    pairs = [(h, m) for h in _multiples(s * shape.hidden, shape.hidden, align)
             for m in _multiples((budget - h * per_hidden) / (k * h), shape.intermediate, align)]
    return min(pairs, key=lambda hm: abs(hm[0] * per_hidden + k * hm[0] * hm[1] - budget))


@torch.no_grad()
def activation_norms(lm: LoadedModel, windows: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Hidden-channel importance (one vector for the whole model) and intermediate-channel importance
    (n_blocks × intermediate) of the dense model on calibration windows."""
    family_of(lm.arch, lm.model.config)
    n, shape = len(lm.blocks), BlockShape.from_config(lm.model.config)
    hidden_sq = torch.zeros(n, 4, shape.hidden, dtype=torch.float64, device=lm.device)
    mid_sq = torch.zeros(n, shape.intermediate, dtype=torch.float64, device=lm.device)

    def accumulate(target: torch.Tensor):
        def hook(module, args, output=None):
            x = args[0] if output is None else (output[0] if isinstance(output, tuple) else output)
            target.add_(x.detach().double().pow(2).flatten(0, -2).sum(0))
        return hook

    handles = []
    for i, block in enumerate(lm.blocks):
        parts = block_parts(block)
        handles += [
            parts.attn_norm.register_forward_hook(accumulate(hidden_sq[i, 0])),
            (parts.attn_post or parts.attn).register_forward_hook(accumulate(hidden_sq[i, 1])),
            parts.mlp_norm.register_forward_hook(accumulate(hidden_sq[i, 2])),
            (parts.mlp_post or parts.mlp).register_forward_hook(accumulate(hidden_sq[i, 3])),
            parts.down.register_forward_pre_hook(accumulate(mid_sq[i])),
        ]
    try:
        for start in range(0, windows.shape[0], batch_size):
            lm.model(input_ids=windows[start : start + batch_size].to(lm.device), use_cache=False)
    finally:
        for h in handles:
            h.remove()
    hidden = (hidden_sq / hidden_sq.sum(-1, keepdim=True).clamp_min(1e-30)).sum((0, 1))
    column_norms = torch.stack([block_parts(b).down.weight.double().norm(dim=0) for b in lm.blocks])
    return hidden.cpu(), (mid_sq.sqrt() * column_norms).cpu()


def uniform_selection(lm: LoadedModel, windows: torch.Tensor, target: float, batch_size: int = 4,
                      align: int = 1) -> Selection:
    """The baseline's selection at `target` of the blocks' linear-layer parameters."""
    shape = BlockShape.from_config(lm.model.config)
    hidden_w, mid_w = uniform_widths(shape, target, align)
    hidden_score, mid_score = activation_norms(lm, windows, batch_size)
    shared = torch.sort(torch.topk(hidden_score, hidden_w).indices).values
    keep = [[shared, shared, shared, torch.sort(torch.topk(mid_score[i], mid_w).indices).values, shared]
            for i in range(shape.n_blocks)]
    return Selection(shape, keep)


# ShortGPT (Men et al., 2024): remove whole blocks, those whose output is most like their input.


@torch.no_grad()
def block_influence(lm: LoadedModel, windows: torch.Tensor, batch_size: int) -> torch.Tensor:
    """ShortGPT's Block Influence of every block on calibration windows: 1 - the mean over tokens of the cosine
    similarity between the block's input and output hidden states."""
    family_of(lm.arch, lm.model.config)
    n = len(lm.blocks)
    total, tokens = torch.zeros(n, dtype=torch.float64), 0

    def hook(i: int):
        def record(module, args, output):
            out = output[0] if isinstance(output, tuple) else output
            cos = F.cosine_similarity(args[0].float(), out.float(), dim=-1)
            total[i] += float(cos.double().sum())
        return record

    handles = [block.register_forward_hook(hook(i)) for i, block in enumerate(lm.blocks)]
    try:
        for start in range(0, windows.shape[0], batch_size):
            batch = windows[start : start + batch_size]
            lm.model(input_ids=batch.to(lm.device), use_cache=False)
            tokens += batch.numel()
    finally:
        for h in handles:
            h.remove()
    return 1.0 - total / tokens


def blocks_to_remove(influence: torch.Tensor, target: float) -> list[int]:
    """The blocks of least influence whose removal keeps the share of block parameters closest to `target`
    (every block has the same parameters), at least one block kept."""
    if not 0.0 < target <= 1.0:
        raise ConfigError(f"Target ratio {target} is outside (0, 1]; give the share of parameters to keep.")
    n = influence.numel()
    k = min(n - 1, round((1.0 - target) * n))
    return sorted(torch.argsort(influence, stable=True)[:k].tolist())


def remove_blocks(lm: LoadedModel, drop: list[int]) -> nn.Module:
    """A copy of the dense model without the blocks `drop`: the family's own class, one block list shorter, its
    layer indices (the KV cache's) and per-layer attention types renumbered."""
    model = copy.deepcopy(lm.model)
    path = BLOCK_PATHS[lm.arch].split(".")
    parent = model
    for attr in path[:-1]:
        parent = getattr(parent, attr)
    blocks = getattr(parent, path[-1])
    kept = [i for i in range(len(blocks)) if i not in set(drop)]
    for new, old in enumerate(kept):
        for module in blocks[old].modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = new
    setattr(parent, path[-1], nn.ModuleList(blocks[i] for i in kept))
    config = model.config
    if getattr(config, "layer_types", None) is not None:
        config.layer_types = [config.layer_types[i] for i in kept]
    config.num_hidden_layers = len(kept)
    return model
