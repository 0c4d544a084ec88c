"""Where a hybrid's refinement starts again: the best start at a distance from everything refined so far."""

import numpy as np
import pytest

from dsa_core.restarts import Start, distance, next_start


def test_distance_is_the_mean_absolute_difference_per_unit():
    assert distance([0.5, 0.7, 0.9], [0.6, 0.7, 0.6]) == pytest.approx(0.4 / 3)
    assert distance([0.5, 0.5], [0.5, 0.5]) == 0


def test_the_next_start_is_the_best_one_far_enough_from_every_explored_allocation():
    near = Start("W:near", 1.0, np.array([0.61, 0.79]))  # the best, but beside the explored start
    far = Start("W:far", 1.2, np.array([0.5, 0.9]))
    farther = Start("atp:beta=0.01", 1.1, np.array([0.8, 0.6]))
    explored = [np.array([0.6, 0.8]), np.array([0.62, 0.78])]  # a start and where its refinement ended
    assert next_start([far, near, farther], explored, 0.03) is farther
    assert next_start([far, near], explored, 0.03) is far
    assert next_start([near], explored, 0.03) is None
    assert next_start([far, near, farther], [], 0.03) is near  # nothing explored: the best
