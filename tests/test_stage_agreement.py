"""The stage-agreement benchmark's own arithmetic (bench/bench_stage_agreement.py): the children it measures are
distinct level switches of their parent at the same total, and the ranks it reports are the promoted quarter's."""

import numpy as np

from bench.bench_stage_agreement import children, promoted_ranks
from dsa_core.levels import LevelGrid


def test_children_are_distinct_switches_of_the_parent_at_its_total():
    grid = LevelGrid([4096, 4096, 8192, 2048, 4096], 0.6)
    parent = grid.snap(np.full(len(grid), 0.6))
    kids = children(grid, parent, 12, seed=0)
    keys = {grid.key(k) for k in kids}
    assert len(keys) == 12 and grid.key(parent) not in keys
    assert all(k.sum() == parent.sum() for k in kids)
    assert [grid.key(k) for k in children(grid, parent, 12, seed=0)] == [grid.key(k) for k in kids]  # seeded


def test_promoted_ranks_are_the_faithful_ranks_of_the_cheap_best_quarter():
    faithful = np.array([0.5, 0.1, 0.9, 0.3, 0.7, 0.2, 0.8, 0.4])  # ranks 4 0 7 2 5 1 6 3
    assert sorted(promoted_ranks(faithful, faithful, 0.25)) == [0, 1]  # a perfect cheap stage
    assert sorted(promoted_ranks(-faithful, faithful, 0.25)) == [6, 7]  # a reversed one
    assert len(promoted_ranks(faithful[:3], faithful[:3], 0.25)) == 1  # at least one goes on
