"""The contract of a pruning metric, and the registry that the walkers, the CLI and the web app read.

A metric says what it needs from calibration (nothing, each layer's input activations, or their Hessian XᵀX), the
group its scores are compared in (an output row or the whole layer), how it scores a layer's weights, and how it
prunes a layer to a ratio (by default: zero the lowest scores of each group). dsa_core.prune walks the model and
asks the metric; nothing outside a metric's own file tests its name. Tensor arithmetic stays in dsa_core.scores.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from dsa_core import scores as S
from dsa_core.calibration import ActivationStats
from dsa_core.errors import ConfigError

GROUPS = ("row", "layer")


class Metric:
    """One pruning metric. Subclass it in a file of this package, set the class attributes, write `score` (and
    `prune_layer` if pruning is more than masking), and call `register` on an instance."""

    name: ClassVar[str]
    description: ClassVar[str]
    order: ClassVar[int] = 100  # where choices list it (the CLI's --metric, the web app's dropdown): lower first
    needs_inputs: ClassVar[bool] = True  # reads the calibration activations; False: the weights alone
    needs_hessian: ClassVar[bool] = False  # reads each layer's XᵀX (ActivationStats(hessian=True))
    group: ClassVar[str] = "row"  # the comparison group of its scores: "row" (per output) or "layer"
    updates_weights: ClassVar[bool] = False  # prune_layer changes the weights it keeps: re-masking by rank drops that

    def score(self, weight: torch.Tensor, acts: ActivationStats | None, name: str) -> torch.Tensor:
        """Per-weight importance of the layer `name` (low = pruned first); `acts` is None when not `needs_inputs`."""
        raise NotImplementedError

    def rank(self, score: torch.Tensor, nm: tuple[int, int] | None) -> torch.Tensor:
        """Each weight's rank in its comparison group, or in its group of m for an n:m pattern."""
        return S.nm_rank(score, nm[1]) if nm else S.rank_in_group(score, self.group)

    @torch.no_grad()
    def prune_layer(self, module: nn.Linear, acts: ActivationStats | None, name: str, ratio: float,
                    nm: tuple[int, int] | None, exact: bool = True) -> None:
        """Prune one layer in place to `ratio` (or to the n:m pattern), on the activations gathered for its block.
        `exact=False` allows a faster computation of the same pruning up to float rounding (a search's measure)."""
        score = self.score(module.weight, acts, name)
        if nm is not None:
            keep = S.nm_rank(score, nm[1]) >= nm[0]
        else:
            keep = S.keep_mask_from_rank(S.rank_in_group(score, self.group), ratio, self.group)
        module.weight.mul_(keep)


METRICS: dict[str, Metric] = {}  # name -> metric, in `order` once the package is imported


def register(metric: Metric) -> Metric:
    """Add a metric to the registry (its module calls this when imported); ValueError for a malformed one."""
    if not getattr(metric, "name", "") or metric.name in METRICS:
        raise ValueError(f"A metric needs a name of its own; {getattr(metric, 'name', None)!r} is taken or empty.")
    if metric.group not in GROUPS or (metric.needs_hessian and not metric.needs_inputs):
        raise ValueError(f"Metric {metric.name!r}: group must be one of {GROUPS}; a Hessian needs inputs.")
    METRICS[metric.name] = metric
    return metric


def get_metric(name: str) -> Metric:
    """The metric called `name`; ConfigError naming the choices otherwise."""
    if name not in METRICS:
        raise ConfigError(f"Unknown metric '{name}'; choose one of {', '.join(METRICS)}.")
    return METRICS[name]


def check_metric(name: str) -> str:
    """`name` if it is a registered metric (for configuration that validates at its boundary)."""
    return get_metric(name).name
