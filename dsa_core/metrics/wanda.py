"""Wanda (Sun et al. 2024): |W_ij| · ‖X_j‖₂, compared within each output row; the weights are only masked."""

from __future__ import annotations

import torch

from dsa_core import scores as S
from dsa_core.calibration import ActivationStats
from dsa_core.metrics.base import Metric, register


class Wanda(Metric):
    name = "wanda"
    description = "|W| times the input's norm, per output row; one calibration pass, no weight update."
    order = 1

    def score(self, weight: torch.Tensor, acts: ActivationStats | None, name: str) -> torch.Tensor:
        return S.wanda(weight, acts.column_sqnorm(name))


register(Wanda())
