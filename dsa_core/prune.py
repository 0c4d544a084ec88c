"""Walk a model's blocks to score and prune it, in two modes.

Fast mode (`score_model`): one pass through the dense model computes every layer's scores, the block
statistics allocations need (BlockStats), and a `MaskCache` of each weight's rank in its comparison group;
any allocation is then applied by `MaskCache.apply` without recomputing scores.
Sequential mode (`prune_sequential`): the faithful protocol of Wanda and SparseGPT; calibration inputs
propagate block by block through the already-pruned earlier blocks, and each block is scored on them.
The metric (dsa_core.metrics) says what to gather for a block, how to score a layer and how to prune it; this module
only walks. `ON_DEMAND_STATS` computes the statistics a scoring pass does not make, when an allocation needs them.
Both keep the dense weights (`DenseWeights`) so that a model can be restored and pruned again. Both take one
ratio per block, or one per linear layer (`layer_ratios`): the direct allocation search can work at either grain.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import torch
from torch import nn

from dsa_core import scores as S
from dsa_core.calibration import ActivationStats, BlockInputs, capture_block_inputs, run_block
from dsa_core.graphs import CapturedWork, on_one_gpu
from dsa_core.metrics import get_metric
from dsa_core.models import LoadedModel, widened
from dsa_core.stats import OUTLIER_MULTIPLIERS, BlockStats

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]  # (phase, done, total)


def _silent(phase: str, done: int, total: int) -> None:
    pass


def layer_ratios(ratios, layers_per_block: list[int]) -> list[list[float]]:
    """Per block, one ratio per linear layer: `ratios` holds one per block (each of its layers takes it) or one per
    linear layer, in module order, block after block."""
    r = [float(x) for x in np.asarray(ratios, dtype=np.float64).ravel()]
    if len(r) == len(layers_per_block):
        return [[x] * n for x, n in zip(r, layers_per_block)]
    if len(r) == sum(layers_per_block):
        out, i = [], 0
        for n in layers_per_block:
            out.append(r[i : i + n])
            i += n
        return out
    raise ValueError(f"{len(r)} ratios fit neither the {len(layers_per_block)} blocks nor their "
                     f"{sum(layers_per_block)} linear layers.")


class DenseWeights:
    """A copy of every prunable weight as loaded, so that pruning can be undone and redone."""

    def __init__(self, lm: LoadedModel):
        self.layers: list[list[tuple[nn.Linear, torch.Tensor]]] = [
            [(m, m.weight.detach().clone()) for m in lm.linear_layers(i).values()] for i in range(len(lm.blocks))
        ]

    @torch.no_grad()
    def restore(self) -> None:
        for block in self.layers:
            for module, dense in block:
                module.weight.copy_(dense)


class MaskCache:
    """Per layer, the rank of each weight in its comparison group (row or layer; or its n:m group).

    On a GPU that holds the weights, their dense copies and the ranks, `apply` replays a CUDA graph of the masking
    kernels (dsa_core.graphs), each layer's pruned count given in a device tensor: launching 2 kernels per layer
    from Python takes longer than the GPU needs for them."""

    def __init__(self, dense: DenseWeights, ranks: list[list[torch.Tensor]], group: str, nm: tuple[int, int] | None):
        self.dense, self.ranks, self.group, self.nm = dense, ranks, group, nm
        self._graph: CapturedWork[None] | None = None
        # The graph's input: per layer, the rank of the last weight pruned (count − 1, so that it fits the ranks'
        # int16 even when a whole group of 2¹⁵ is pruned; the comparison casts it to the ranks' type).
        self._last_pruned: torch.Tensor | None = None
        layers = [(module, w, rank) for block, block_ranks in zip(dense.layers, ranks)
                  for (module, w), rank in zip(block, block_ranks)]
        device = layers[0][2].device if layers else torch.device("cpu")
        if nm is None and on_one_gpu(_layer_tensors(layers), device):
            self._last_pruned = torch.zeros(len(layers), dtype=torch.int64, device=device)
            # Plain functions of the layers, not methods: a graph in a reference cycle is freed only by a collection.
            self._graph = CapturedWork(partial(_mask_layers, layers, self._last_pruned),
                                       partial(_layer_tensors, layers), device)

    @torch.no_grad()
    def apply(self, ratios: np.ndarray) -> None:
        """Prune every block (or every linear layer: see `layer_ratios`) to its ratio (ignored for n:m patterns,
        whose ratio is n/m) from the dense weights."""
        per_layer = layer_ratios(ratios, [len(block) for block in self.ranks])
        if self._graph is not None:
            last = [S.pruned_count(rank, r, self.group) - 1
                    for block, rs in zip(self.ranks, per_layer) for rank, r in zip(block, rs)]
            try:
                self._last_pruned.copy_(torch.tensor(last))
                self._graph()
                return
            except RuntimeError as e:
                log.warning("Re-masking without a CUDA graph, which failed: %s", str(e).splitlines()[0])
                self._graph = None
        for b, block in enumerate(self.dense.layers):
            for (module, dense), rank, r in zip(block, self.ranks[b], per_layer[b]):
                if self.nm is not None:
                    keep = rank >= self.nm[0]
                else:
                    keep = S.keep_mask_from_rank(rank, r, self.group)
                w = module.weight  # where it lives now: a block offloaded to CPU memory may be away from its cache
                torch.mul(dense.to(w.device), keep.to(w.device), out=w)


def _mask_layers(layers: list[tuple[nn.Linear, torch.Tensor, torch.Tensor]], last_pruned: torch.Tensor) -> None:
    for i, (module, dense, rank) in enumerate(layers):
        torch.mul(dense, rank > last_pruned[i], out=module.weight)


def _layer_tensors(layers: list[tuple[nn.Linear, torch.Tensor, torch.Tensor]]) -> list[torch.Tensor]:
    return [t for module, dense, rank in layers for t in (module.weight, dense, rank)]


def achieved_sparsity(lm: LoadedModel) -> tuple[float, list[float]]:
    """Overall and per-block share of zero weights, counted from the prunable weights themselves."""
    per_block, zeros, total = [], 0, 0
    for i in range(len(lm.blocks)):
        z = n = 0
        for m in lm.linear_layers(i).values():
            z += int((m.weight == 0).sum())
            n += m.weight.numel()
        per_block.append(z / n)
        zeros, total = zeros + z, total + n
    return zeros / total, per_block


def alpha_hill(weight: torch.Tensor) -> float:
    """PL_Alpha_Hill of a weight's empirical spectral density (AlphaPruning's 'xmin_mid' estimator):
    Hill estimate over the upper half of the eigenvalues of WᵀW."""
    eigs = torch.linalg.svdvals(widened(weight)).pow(2).sort().values
    eigs = eigs[eigs > 1e-5]
    i = len(eigs) // 2
    n = len(eigs) - i
    logs = eigs.log()
    return float(1 + n / (logs[i:].sum() - n * logs[i]))


class _StatsBuilder:
    """Accumulates BlockStats block by block from the allocation scores (Wanda's, or |W| without data)."""

    def __init__(self, metric: str, sample_size: int, seed: int):
        self.metric, self.sample_size = metric, sample_size
        self.gen = torch.Generator().manual_seed(seed)
        self.params, self.shapes, self.samples = [], [], []
        self.outliers: dict[float, list[float]] = {m: [] for m in OUTLIER_MULTIPLIERS}

    def add(self, layer_scores: list[torch.Tensor], weights: list[torch.Tensor]) -> None:
        numel = sum(s.numel() for s in layer_scores)
        mean = sum(float(s.sum(dtype=torch.float64)) for s in layer_scores) / numel
        for m in OUTLIER_MULTIPLIERS:
            self.outliers[m].append(sum(int((s > m * mean).sum()) for s in layer_scores) / numel)
        # A sample of the block's scores, each layer contributing in proportion to its size.
        parts = []
        for s in layer_scores:
            k = max(1, round(self.sample_size * s.numel() / numel))
            idx = torch.randint(s.numel(), (k,), generator=self.gen).to(s.device)
            parts.append(s.flatten()[idx].cpu())
        self.samples.append(torch.cat(parts).numpy().astype(np.float32))
        self.params.append(numel)
        self.shapes.append([tuple(w.shape) for w in weights])

    def build(self) -> BlockStats:
        return BlockStats(
            params=np.asarray(self.params, dtype=np.int64),
            layer_shapes=self.shapes,
            score_samples=self.samples,
            outlier_ratios={m: np.asarray(v) for m, v in self.outliers.items()},
            metric=self.metric,
        )


@torch.no_grad()
def score_model(
    lm: LoadedModel,
    dense: DenseWeights,
    windows: torch.Tensor | None,
    metric: str,
    pattern: str = "unstructured",
    batch_size: int = 8,
    sample_size: int = 2**18,
    seed: int = 0,
    progress: Progress = _silent,
    inputs: BlockInputs | None = None,
    with_ranks: bool = True,
) -> tuple[MaskCache | None, BlockStats]:
    """Fast mode: one pass through the dense model; scores of every layer become ranks and BlockStats.
    Without ranks (an allocation for sequential pruning needs only the statistics) no cache is returned."""
    method = get_metric(metric)
    nm = S.parse_pattern(pattern)
    builder = _StatsBuilder("wanda" if method.needs_inputs else "magnitude", sample_size, seed)
    if not method.needs_inputs:
        inputs = None
    elif inputs is None:
        inputs = capture_block_inputs(lm, windows, batch_size)
    ranks = []
    n = len(lm.blocks)
    for i in range(n):
        layers = lm.linear_layers(i)
        acts = None
        if inputs is not None:
            with ActivationStats(layers, hessian=method.needs_hessian) as acts:
                inputs = run_block(lm.blocks[i], inputs)
        block_ranks, alloc_scores = [], []
        for name, module in layers.items():
            score = method.score(module.weight, acts, name)
            if with_ranks:
                block_ranks.append(method.rank(score, nm))
            # Allocation statistics use Wanda's scores whenever activations exist (as OWL and DSA do).
            alloc_scores.append(S.wanda(module.weight, acts.column_sqnorm(name)) if acts else score)
        builder.add(alloc_scores, [m.weight for m in layers.values()])
        ranks.append(block_ranks)
        del acts, alloc_scores
        progress("scoring", i + 1, n)
    return (MaskCache(dense, ranks, method.group, nm) if with_ranks else None), builder.build()


def block_alpha_hill(dense: DenseWeights) -> np.ndarray:
    """Per block, the mean PL_Alpha_Hill of its dense linear layers (AlphaPruning); one SVD per layer."""
    return np.asarray([np.mean([alpha_hill(w) for _, w in block]) for block in dense.layers])


# BlockStats fields that a scoring pass leaves None, each with how to compute it from the dense weights; an allocation
# declares what it reads (allocation.required_stats) and PruningSession.stats makes these on request.
ON_DEMAND_STATS: dict[str, Callable[[DenseWeights], np.ndarray]] = {"alpha_hill": block_alpha_hill}


@dataclass
class SequentialRun:
    """What a sequential prune leaves so that a later one can skip the blocks it shares: per block, its per-layer
    ratios, the inputs it was pruned on and its pruned weights. Blocks before the first whose ratios differ prune
    alike, so a search's level switch (two units changed) need only redo the blocks from the first change on."""

    ratios: list[list[float]]
    inputs: list[BlockInputs]
    weights: list[list[torch.Tensor]]
    # With `statistics`, per block what its metric gathered on the inputs it was pruned on (input norms, Hessians),
    # so that other allocations can be scored as if pruned after this run's earlier blocks (`rescored_cache`).
    statistics: list[ActivationStats] = field(default_factory=list)

    def shared_blocks(self, per_layer: list[list[float]]) -> int:
        """How many leading blocks `per_layer` prunes exactly as this run did (none from a run of statistics alone)."""
        k = 0
        while k < min(len(self.weights), len(per_layer)) and self.ratios[k] == per_layer[k]:
            k += 1
        return k


@torch.no_grad()
def rescored_cache(dense: DenseWeights, statistics: list[ActivationStats], metric: str,
                   pattern: str = "unstructured") -> MaskCache:
    """A MaskCache whose ranks score each block on the statistics a sequential run pruned it on, not the dense
    model's: an allocation re-masked from it is pruned as if after that run's earlier blocks, which is what a
    sequential prune of an allocation near that run's does (exactly, up to the first block whose ratio differs)."""
    method = get_metric(metric)
    nm = S.parse_pattern(pattern)
    ranks = [[method.rank(method.score(w, acts, name), nm) for name, (_, w) in zip(acts.layers, block)]
             for block, acts in zip(dense.layers, statistics)]
    return MaskCache(dense, ranks, method.group, nm)


def run_bytes(runs: list[SequentialRun]) -> int:
    """Memory held by runs together (blocks a later run shares with an earlier one are counted once)."""
    seen: dict[int, int] = {}
    for run in runs:
        for block_inputs, weights in zip(run.inputs, run.weights):
            for t in (*block_inputs.hidden, *weights):
                seen[id(t)] = t.numel() * t.element_size()
        for acts in run.statistics:
            for t in (*acts.sq.values(), *acts.H.values()):
                seen[id(t)] = t.numel() * t.element_size()
    return sum(seen.values())


@torch.no_grad()
def prune_sequential(
    lm: LoadedModel,
    windows: torch.Tensor | None,
    metric: str,
    ratios: np.ndarray,
    pattern: str = "unstructured",
    batch_size: int = 8,
    progress: Progress = _silent,
    inputs: BlockInputs | None = None,
    resume: SequentialRun | None = None,
    record: bool = False,
    exact: bool = True,
    statistics: bool = False,
) -> SequentialRun | None:
    """Faithful mode: block by block, gather statistics on inputs that went through the pruned earlier
    blocks, prune the block to its ratio (or each linear layer to its own: see `layer_ratios`), and recompute its
    outputs for the next block. The weights must be dense on entry. With `resume` (a run of the same model, metric,
    pattern and calibration inputs), the blocks it shares with that run take its weights instead of being pruned
    again; with `record`, returns this run for a later one to resume from; with `statistics`, the run (or, without
    `record`, a run of nothing else) holds each block's calibration statistics (for `rescored_cache`; resuming from a
    run without them gives a run without them). `exact=False`: a metric may prune its layers by a faster form, equal
    up to rounding (Metric.prune_layer); a resumed run must have been made alike."""
    method = get_metric(metric)
    nm = S.parse_pattern(pattern)
    n = len(lm.blocks)
    per_layer = layer_ratios(ratios, [len(lm.linear_layers(i)) for i in range(n)])
    if method.needs_inputs and inputs is None:
        inputs = capture_block_inputs(lm, windows, batch_size)
    start = 0 if resume is None or not method.needs_inputs else resume.shared_blocks(per_layer)
    for i in range(start):
        for module, w in zip(lm.linear_layers(i).values(), resume.weights[i]):
            module.weight.copy_(w)
    if 0 < start < n:
        inputs = resume.inputs[start]
    run = None
    if record and method.needs_inputs:  # a metric that reads no inputs prunes a block at once: nothing worth keeping
        run = SequentialRun(per_layer, resume.inputs[:start] if start else [], resume.weights[:start] if start else [],
                            resume.statistics[:start] if start and statistics else [])
    elif statistics and method.needs_inputs:
        run = SequentialRun(per_layer, [], [])
    statistics = statistics and run is not None and len(run.statistics) == start
    for i in range(start, n):
        layers = lm.linear_layers(i)
        acts = None
        if method.needs_inputs:
            with ActivationStats(layers, hessian=method.needs_hessian) as acts:
                run_block(lm.blocks[i], inputs)
        for (name, module), ratio in zip(layers.items(), per_layer[i]):
            method.prune_layer(module, acts, name, ratio, nm, exact)
        if statistics:
            run.statistics.append(acts)
        del acts
        if run is not None and record:
            run.inputs.append(inputs)
            run.weights.append([m.weight.detach().clone() for m in layers.values()])
        if method.needs_inputs and i + 1 < n:
            inputs = run_block(lm.blocks[i], inputs)
        progress("pruning", i + 1, n)
    return run
