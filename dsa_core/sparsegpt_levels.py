"""SparseGPT's pruned weights at the levels a search visits (EvoPress's level database): what a search's SparseGPT
fitness measures, so that it sees SparseGPT's weight update and not only its mask.

Re-masking from SparseGPT's saliency order (MaskCache) drops the OBS update, which is most of what SparseGPT does
at high sparsity; on an H200, searches on the masks alone found allocations that beat uniform there and lost to it
once pruned with SparseGPT (Gemma 3 270M at 70%: ATP's β chosen on the masks gave 142.2 against uniform's 120.3).
Here every linear layer takes its SparseGPT weights at its ratio rounded to a `LEVEL_STEP` grid, pruned once from
the dense model's Hessians (one-shot per layer, as EvoPress's database; the faithful protocol stays sequential).
A layer's levels are computed on first use, up to `BATCH` neighbours in one batched pass, and kept while the memory
budget allows, least recently used going first. Fewer neighbours when the budget could not keep them: a pass costs
about its number of levels (on a CPU exactly so), and neighbours evicted before their use were paid for nothing.
The levels come from `sparsegpt_levels_solved`, which solves each block's column loop as batched triangular solves
(same weights up to rounding): the reference loop launches ~8 small kernels per input column, ~38 s per search
candidate on a shared H200.
"""

from __future__ import annotations

from collections import OrderedDict

import torch

from dsa_core.allocation import MAX_SPARSITY
from dsa_core.calibration import ActivationStats, BlockInputs, run_block
from dsa_core.models import LoadedModel, free_memory
from dsa_core.prune import DenseWeights, layer_ratios
from dsa_core.scores import sparsegpt_levels_solved

LEVEL_STEP = 0.01  # ratios resolve to 1%: finer than a block's level switch, coarse enough to be revisited
BATCH = 16  # levels pruned together at most: they share H⁻¹ and the block-by-block pass
BATCHES_KEPT = 2  # a batch of neighbours only pays if the budget keeps this many batches of every layer
MEMORY_SHARE = 0.1  # of the free GPU memory (or available RAM) the kept levels may take: searches share a GPU


class SparseGPTLevels:
    """Per linear layer, the dense model's SparseGPT Hessian, and that layer's pruned weights by level."""

    @torch.no_grad()
    def __init__(self, lm: LoadedModel, dense: DenseWeights, inputs: BlockInputs | None,
                 budget_bytes: int | None = None, batch: int | None = None,
                 statistics: list[ActivationStats] | None = None):
        """`lm` must hold its dense weights; `inputs` are what enters block 0 for the calibration windows; or, in
        their place, `statistics`: per block, the Hessians a sequential run pruned it on (prune.SequentialRun), for
        levels pruned as after that run's earlier blocks. `batch`: levels per pass (default: as many as the budget
        keeps, at most `BATCH`)."""
        self.dense = dense
        self.hessians: list[list[torch.Tensor]] = []
        for i, block in enumerate(lm.blocks):
            layers = lm.linear_layers(i)
            if statistics is not None:
                acts = statistics[i]
            else:
                with ActivationStats(layers, hessian=True) as acts:
                    inputs = run_block(block, inputs)
            self.hessians.append([acts.hessian_of(name) for name in layers])
        if budget_bytes is None:
            budget_bytes = int(MEMORY_SHARE * free_memory(dense.layers[0][0][1].device))
        self.budget = budget_bytes
        level_bytes = sum(m.weight.numel() * m.weight.element_size() for block in dense.layers for m, _ in block)
        self.batch = batch or max(1, min(BATCH, budget_bytes // (BATCHES_KEPT * level_bytes)))
        self.kept: OrderedDict[tuple[int, int, int], torch.Tensor] = OrderedDict()
        self.bytes = 0
        self.computed = 0  # levels pruned so far (a level evicted and needed again counts twice)

    @torch.no_grad()
    def apply(self, ratios) -> None:
        """Every layer to its SparseGPT weights at its ratio (one per block, or per linear layer)."""
        per_layer = layer_ratios(ratios, [len(block) for block in self.dense.layers])
        for b, (block, rs) in enumerate(zip(self.dense.layers, per_layer)):
            for j, ((module, _), r) in enumerate(zip(block, rs)):
                module.weight.copy_(self._weights(b, j, int(round(min(r, MAX_SPARSITY) / LEVEL_STEP))))

    def _weights(self, b: int, j: int, level: int) -> torch.Tensor:
        key = (b, j, level)
        if key not in self.kept:
            top = int(round(MAX_SPARSITY / LEVEL_STEP))
            lo = max(0, min(level - self.batch // 2, top + 1 - self.batch))
            # The level asked for goes in last, so that evictions while the others go in never take it.
            levels = [v for v in range(lo, min(top, lo + self.batch - 1) + 1)
                      if (b, j, v) not in self.kept and v != level]
            levels.append(level)
            dense = self.dense.layers[b][j][1]
            ratios = [round(v * LEVEL_STEP, 6) for v in levels]
            pruned = sparsegpt_levels_solved(dense, self.hessians[b][j], ratios).to(dense.dtype)
            self.computed += len(levels)
            for v, w in zip(levels, pruned):
                self._keep((b, j, v), w.clone())  # a clone, so that an evicted level frees its own memory
        self.kept.move_to_end(key)
        return self.kept[key]

    def _keep(self, key: tuple[int, int, int], w: torch.Tensor) -> None:
        self.kept[key] = w
        self.bytes += w.numel() * w.element_size()
        while self.bytes > self.budget and len(self.kept) > 1:
            _, old = self.kept.popitem(last=False)
            self.bytes -= old.numel() * old.element_size()

