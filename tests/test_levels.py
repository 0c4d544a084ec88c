"""The direct allocation search's grid and level-switch mutation (dsa_core.levels): every candidate meets the target
exactly, levels stay in bounds, a start allocation snaps onto the grid, and the sampler starts from it."""

import numpy as np
import optuna
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dsa_core.allocation import MAX_SPARSITY
from dsa_core.errors import ConfigError
from dsa_core.levels import LevelGrid, LevelSwitchSampler, expand_to_units, unit_sizes

SHAPES = [[(64, 64), (16, 64), (160, 64), (64, 160)]] * 3  # three blocks of four layers of different sizes

sizes_st = st.lists(st.integers(1_000, 50_000), min_size=2, max_size=12)
target_st = st.floats(0.05, 0.9)


@settings(max_examples=60, deadline=None)
@given(sizes_st, target_st, st.integers(0, 2**31 - 1))
def test_mutations_keep_the_pruned_total_and_the_bounds(sizes, target, seed):
    grid = LevelGrid(sizes, target)
    rng = np.random.RandomState(seed)
    levels = grid.snap(np.full(len(grid), target))
    assert levels.sum() == grid.total
    for _ in range(30):
        levels = grid.mutate(levels, rng)
        assert levels.sum() == grid.total  # the same number of weights moved up and down
        assert (levels >= 0).all() and (levels <= grid.max_level).all()
        ratios = grid.ratios(levels)
        assert np.average(ratios, weights=sizes) == pytest.approx(target, abs=1e-12)
        assert ratios.min() >= 0 and ratios.max() <= MAX_SPARSITY


@settings(max_examples=60, deadline=None)
@given(sizes_st, target_st, st.lists(st.floats(0, 1), min_size=12, max_size=12))
def test_any_allocation_snaps_to_the_nearest_levels_with_the_exact_total(sizes, target, raw):
    grid = LevelGrid(sizes, target)
    levels = grid.snap(np.asarray(raw[: len(sizes)]))
    assert levels.sum() == grid.total and (levels >= 0).all() and (levels <= grid.max_level).all()


@settings(max_examples=60, deadline=None)
@given(sizes_st, target_st, st.lists(st.floats(-12, 12), min_size=12, max_size=12))
def test_any_move_from_a_start_lands_on_the_grid_with_the_exact_total(sizes, target, moves):
    grid = LevelGrid(sizes, target)
    start = grid.snap(np.full(len(grid), target))
    levels = grid.offset(start, moves[: len(sizes)])
    assert levels.sum() == grid.total and (levels >= 0).all() and (levels <= grid.max_level).all()


def test_a_move_is_in_each_units_own_steps_and_an_even_move_is_none():
    grid = LevelGrid([1000, 1000, 4000], 0.5)  # steps of 1, 1 and 4 quanta
    start = grid.snap(np.full(3, 0.5))
    assert (grid.offset(start, [0, 0, 0]) == start).all()
    assert (grid.offset(start, [2.5, 2.5, 2.5]) == start).all()  # every unit up alike: no change in the total
    # Unit 2 up three of its steps (12 quanta); the mean move, two steps (12 quanta over 6 quanta of steps), is taken
    # out of every unit: unit 2 ends one step (4 quanta) up, the others two steps (2 quanta) down.
    assert (grid.offset(start, [0, 0, 3]) - start).tolist() == [-2, -2, 4]
    with pytest.raises(ConfigError, match="2 steps cannot move"):
        grid.offset(start, [1, -1])


def test_a_switch_moves_the_smaller_units_step_between_two_units():
    grid = LevelGrid([1000, 4000], 0.5, step=0.01)  # quantum 10 weights: steps of 1 and 4 quanta
    assert grid.unit_step.tolist() == [1, 4]
    levels = grid.snap([0.5, 0.5])
    moved = grid.switch(levels, np.random.RandomState(0))
    assert abs(moved - levels).tolist() == [1, 1]


def test_uniform_at_equal_blocks_lands_on_the_grid_exactly():
    grid = LevelGrid([3_538_944] * 30, 0.7)
    assert np.allclose(grid.ratios(grid.snap(np.full(30, 0.7))), 0.7, atol=1e-12)


def test_projection_units_are_the_linear_layers():
    assert unit_sizes(SHAPES, "block").tolist() == [sum(o * i for o, i in SHAPES[0])] * 3
    assert unit_sizes(SHAPES, "projection").tolist() == [o * i for o, i in SHAPES[0]] * 3
    per_layer = expand_to_units([0.1, 0.2, 0.3], SHAPES, "projection")
    assert per_layer.tolist() == [0.1] * 4 + [0.2] * 4 + [0.3] * 4
    assert np.allclose(expand_to_units(per_layer, SHAPES, "block"), [0.1, 0.2, 0.3])


@pytest.mark.parametrize("kw,message", [(dict(step=0.5), "level step"), (dict(target=1.2), "outside")])
def test_bad_grids_are_refused(kw, message):
    with pytest.raises(ConfigError, match=message):
        LevelGrid([100, 200], **{"target": 0.5, **kw})


def test_sampler_starts_from_the_start_then_mutates_the_best():
    grid = LevelGrid([1000] * 6, 0.5)
    start = grid.snap(np.full(6, 0.5))
    sampler = LevelSwitchSampler(seed=0)
    sampler.bind(grid, start)
    study = optuna.create_study(sampler=sampler)
    proposals = []
    for _ in range(20):
        trial = study.ask(grid.distributions())
        levels = grid.levels(trial.params)
        trial.set_user_attr("text", grid.key(levels))
        proposals.append(levels)
        study.tell(trial, float(np.abs(levels - start).sum() + levels[0]))  # lower level in unit 0 is better
    assert (proposals[0] == start).all()
    assert len({grid.key(p) for p in proposals}) == 20  # never a repeat
    assert all(p.sum() == grid.total for p in proposals)
    assert grid.levels(study.best_trial.params)[0] <= start[0]
