"""The landscape benchmark's own arithmetic (bench/bench_landscape.py): a searched `levels:` text is taken as it is
only when it is an allocation of the grid, and every point of the line meets the target exactly, ends included."""

import numpy as np
import pytest

from bench.bench_landscape import levels_of, line
from dsa_core.levels import LevelGrid


def test_levels_text_is_taken_as_it_is_and_refused_off_the_grid():
    grid = LevelGrid([4096] * 4, 0.5)
    assert list(levels_of(grid, None, "levels:40,50,50,60", 0.5)) == [40, 50, 50, 60]
    for wrong in ("levels:40,50,50,61", "levels:50,50,100"):  # another total; another number of units
        with pytest.raises(SystemExit, match="not an allocation of this grid"):
            levels_of(grid, None, wrong, 0.5)


def test_the_line_runs_from_one_end_to_the_other_on_the_grid():
    grid = LevelGrid([4096, 4096, 8192, 2048], 0.6)
    a = grid.snap(np.full(len(grid), 0.6))
    b = grid.snap(np.array([0.4, 0.7, 0.65, 0.5]))
    points = line(grid, a, b, 5)
    assert [t for t, _ in points] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert grid.key(points[0][1]) == grid.key(a) and grid.key(points[-1][1]) == grid.key(b)
    assert all(levels.sum() == grid.total for _, levels in points)
    moved = [np.abs(grid.ratios(levels) - grid.ratios(a)).mean() for _, levels in points]
    assert moved == sorted(moved) and moved[0] == 0  # each point further from a
