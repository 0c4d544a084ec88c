"""SparseGPT (Frantar & Alistarh 2023): masks by the OBS error w²/[H⁻¹]²_jj per row and updates the kept weights.

Its score (the saliency) is what fast mode re-masks by; pruning a layer runs the reference's column loop with the
weight update (dsa_core.scores.sparsegpt_prune_), which re-masking by rank cannot reproduce (`updates_weights`).
A search's sequential measure may take the loop's batched-solve form instead (`exact=False`): the same masks and
weights up to rounding, without the loop's ~8 kernel launches per input column, which bound it on a GPU.
"""

from __future__ import annotations

import torch
from torch import nn

from dsa_core import scores as S
from dsa_core.calibration import ActivationStats
from dsa_core.metrics.base import Metric, register


class SparseGPT(Metric):
    name = "sparsegpt"
    description = "OBS saliency from each layer's Hessian, per output row, with SparseGPT's weight update."
    order = 2
    needs_hessian = True
    updates_weights = True

    def score(self, weight: torch.Tensor, acts: ActivationStats | None, name: str) -> torch.Tensor:
        factor, _ = S.inverse_hessian_factor(acts.hessian_of(name))
        return S.sparsegpt_saliency(weight, factor)

    @torch.no_grad()
    def prune_layer(self, module: nn.Linear, acts: ActivationStats | None, name: str, ratio: float,
                    nm: tuple[int, int] | None, exact: bool = True) -> None:
        S.sparsegpt_prune_(module.weight, acts.hessian_of(name), ratio, nm, exact=exact)


register(SparseGPT())
