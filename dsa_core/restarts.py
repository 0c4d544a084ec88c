"""Where a hybrid search's refinement starts again once it stops improving.

A refinement by level switches descends into the basin of its start and stays there: on Gemma 3 270M, searches
whose refinements started from allocations 0.003-0.01 apart (mean absolute difference per block) ended within 5% of
each other on test, while one that started 0.065 away ended 8-11% lower (bench/results/h200_round12.log). So a
restart takes the best allocation the search measured at its last stage (a function of its first phase, or ATP's)
that lies at least a few levels away from every allocation refined so far: a start in another basin, not a
neighbour of one already explored.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

RESTART_LEVELS = 3  # a restart's start lies at least this many level steps (mean per unit) from every one explored


@dataclass(frozen=True)
class Start:
    """A candidate start: its spec (a function's text or a baseline such as "atp:beta=0.01"), its fitness at the
    last stage and its allocation, one ratio per unit of the refinement."""

    spec: str
    fitness: float
    ratios: np.ndarray


def distance(a: Sequence[float], b: Sequence[float]) -> float:
    """Mean absolute difference per unit between two allocations."""
    return float(np.mean(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))))


def next_start(pool: Sequence[Start], explored: Sequence[Sequence[float]], min_distance: float) -> Start | None:
    """The best start of `pool` at least `min_distance` from every allocation in `explored` (the starts refined
    so far and where their refinements ended), or None when every one is nearer."""
    for start in sorted(pool, key=lambda s: s.fitness):
        if all(distance(start.ratios, other) >= min_distance for other in explored):
            return start
    return None
