"""How the hypernetwork's outputs become the six selections of every block, and how its scores are fitted to the
parameter budget. A layout is a small object: `widths()` (one hypernetwork output per entry), `expand(outputs,
fill)` (per block, the six masks or scores in STRUCTURES order; `fill` for what the layout does not select: 1 for
masks, infinity for scores) and `fit(scores, target, align)` (a Selection).

    Independent  DISP-LLM: every block and side selects its own channels, with its own width; with `heads`, each
                 block also selects its own attention heads
    Shared       the same hypernetwork without dimension independence: one hidden selection shared by every block
                 and side, one intermediate width for all blocks (each block keeps its own best channels), so that
                 the widths are uniform per layer type; trained like DISP-LLM, it isolates what independence buys.
                 It keeps every head.

No model code here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from dsa_core.errors import ConfigError
from dsa_core.structural.selection import CHANNELS, STRUCTURES, BlockShape, Selection, fit_budget


def _all_heads(shape: BlockShape, like: torch.Tensor, fill: float) -> torch.Tensor:
    return torch.full((shape.kv_heads,), fill, dtype=like.dtype, device=like.device)


@dataclass(frozen=True)
class Independent:
    shape: BlockShape
    heads: bool = False
    name = "DISP-LLM"

    def widths(self) -> list[int]:
        per_block = self.shape.full_widths if self.heads else self.shape.full_widths[:CHANNELS]
        return per_block * self.shape.n_blocks

    def expand(self, outputs: Sequence[torch.Tensor], fill: float = 1.0) -> list[list[torch.Tensor]]:
        n = len(STRUCTURES) if self.heads else CHANNELS  # outputs per block
        blocks = [list(outputs[i : i + n]) for i in range(0, len(outputs), n)]
        return blocks if self.heads else [[*b, _all_heads(self.shape, b[0], fill)] for b in blocks]

    def fit(self, scores: Sequence[torch.Tensor], target: float, align: int = 1) -> Selection:
        flat = [s for block in self.expand(scores, math.inf) for s in block]
        return fit_budget(self.shape, flat, target, align)


def _aligned(count: float, full: int, align: int) -> int:
    return int(min(full, max(align, align * round(count / align))))


@dataclass(frozen=True)
class Shared:
    shape: BlockShape
    heads: bool = False  # never selected here: what independence buys is measured on channels
    name = "same hypernetwork, uniform widths"

    def widths(self) -> list[int]:
        return [self.shape.hidden] + [self.shape.intermediate] * self.shape.n_blocks

    def expand(self, outputs: Sequence[torch.Tensor], fill: float = 1.0) -> list[list[torch.Tensor]]:
        hidden = outputs[0]
        return [[hidden, hidden, hidden, mid, hidden, _all_heads(self.shape, hidden, fill)] for mid in outputs[1:]]

    def _params(self, hidden: int, mid: int) -> int:
        widths = torch.tensor([hidden, hidden, hidden, mid, hidden, self.shape.kv_heads])
        return int(self.shape.block_params(widths)) * self.shape.n_blocks

    def fit(self, scores: Sequence[torch.Tensor], target: float, align: int = 1) -> Selection:
        """One global threshold on the scores gives the hidden width (the hypernetwork's balance between hidden and
        intermediate channels); the intermediate width shared by all blocks then meets the budget as closely as
        a multiple of `align` can. Each block keeps its best-scored intermediate channels."""
        if not 0.0 < target <= 1.0:
            raise ConfigError(f"Target ratio {target} is outside (0, 1]; give the share of parameters to keep.")
        shape, flat = self.shape, [s.detach().float().cpu() for s in scores]
        budget = target * shape.dense_params

        def widths(threshold: float) -> tuple[int, int]:
            mid = sum(int((s > threshold).sum()) for s in flat[1:]) / shape.n_blocks
            return (_aligned(int((flat[0] > threshold).sum()), shape.hidden, align),
                    _aligned(mid, shape.intermediate, align))

        values = torch.cat(flat)
        lo, hi = float(values.min()) - 1.0, float(values.max()) + 1.0
        for _ in range(64):
            mid_t = (lo + hi) / 2
            lo, hi = (mid_t, hi) if self._params(*widths(mid_t)) > budget else (lo, mid_t)
        hidden = widths(hi)[0]
        per_hidden = self._params(hidden, 0) / shape.n_blocks  # what q/k/v and o_proj keep per block
        exact = (budget / shape.n_blocks - per_hidden) / (shape.mlp_matrices * hidden)
        below = align * math.floor(exact / align)
        mid = min({min(shape.intermediate, max(align, m)) for m in (below, below + align)},
                  key=lambda m: abs(self._params(hidden, m) - budget))
        shared = torch.sort(torch.topk(flat[0], hidden).indices).values
        keep = [[shared, shared, shared, torch.sort(torch.topk(s, mid).indices).values, shared] for s in flat[1:]]
        return Selection(shape, keep)


LAYOUTS = {"independent": Independent, "shared": Shared}
