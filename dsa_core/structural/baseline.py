"""The structural baseline at a parameter budget: uniform widths and one shared hidden index set.

Every block reads and writes the same hidden channels (those with the largest activation norms, summed
over blocks, each block's four hidden-side activations weighted equally) and keeps the same number of
intermediate channels (per block, the largest activation norm × down_proj column norm). Hidden and
intermediate widths shrink by the same factor, the intermediate width then set so that the count meets
the budget. Returns a Selection, so the baseline is compressed and measured exactly like DISP-LLM's.
"""

from __future__ import annotations

import math

import torch

from dsa_core.errors import ConfigError, ModelError
from dsa_core.models import LoadedModel
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
    # Scale both widths by s: s·H·per_hidden + 3·s²·H·I = budget.
    a, b = 3 * shape.hidden * shape.intermediate, shape.hidden * per_hidden
    s = (-b + math.sqrt(b * b + 4 * a * budget)) / (2 * a)
    # Of the aligned widths around the solution, the pair whose count is closest to the budget.
    pairs = [(h, m) for h in _multiples(s * shape.hidden, shape.hidden, align)
             for m in _multiples((budget - h * per_hidden) / (3 * h), shape.intermediate, align)]
    return min(pairs, key=lambda hm: abs(hm[0] * per_hidden + 3 * hm[0] * hm[1] - budget))


@torch.no_grad()
def activation_norms(lm: LoadedModel, windows: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Hidden-channel importance (one vector for the whole model) and intermediate-channel importance
    (n_blocks × intermediate) of the dense model on calibration windows."""
    if lm.arch != "llama":
        raise ModelError(f"Structural pruning supports LLaMA models, not '{lm.arch}'.")
    n = len(lm.blocks)
    hidden_sq = torch.zeros(n, 4, lm.model.config.hidden_size, dtype=torch.float64, device=lm.device)
    mid_sq = torch.zeros(n, lm.model.config.intermediate_size, dtype=torch.float64, device=lm.device)

    def accumulate(target: torch.Tensor):
        def hook(module, args, output=None):
            x = args[0] if output is None else (output[0] if isinstance(output, tuple) else output)
            target.add_(x.detach().double().pow(2).flatten(0, -2).sum(0))
        return hook

    handles = []
    for i, block in enumerate(lm.blocks):
        handles += [
            block.input_layernorm.register_forward_hook(accumulate(hidden_sq[i, 0])),
            block.self_attn.register_forward_hook(accumulate(hidden_sq[i, 1])),
            block.post_attention_layernorm.register_forward_hook(accumulate(hidden_sq[i, 2])),
            block.mlp.register_forward_hook(accumulate(hidden_sq[i, 3])),
            block.mlp.down_proj.register_forward_pre_hook(accumulate(mid_sq[i])),
        ]
    try:
        for start in range(0, windows.shape[0], batch_size):
            lm.model(input_ids=windows[start : start + batch_size].to(lm.device), use_cache=False)
    finally:
        for h in handles:
            h.remove()
    hidden = (hidden_sq / hidden_sq.sum(-1, keepdim=True).clamp_min(1e-30)).sum((0, 1))
    column_norms = torch.stack([b.mlp.down_proj.weight.double().norm(dim=0) for b in lm.blocks])
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
