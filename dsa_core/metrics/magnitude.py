"""Magnitude pruning: |W|, compared across the whole layer (as the reference implementations do); no data needed."""

from __future__ import annotations

import torch

from dsa_core import scores as S
from dsa_core.calibration import ActivationStats
from dsa_core.metrics.base import Metric, register


class Magnitude(Metric):
    name = "magnitude"
    description = "|W|, smallest weights of each layer first; needs no calibration data."
    order = 0
    needs_inputs = False
    group = "layer"

    def score(self, weight: torch.Tensor, acts: ActivationStats | None, name: str) -> torch.Tensor:
        return S.magnitude(weight)


register(Magnitude())
