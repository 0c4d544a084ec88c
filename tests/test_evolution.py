"""The GA sampler on synthetic objectives (no model): it starts from random search's own first trials, stays in
the space, never proposes a function twice, and beats random search where the objective has structure."""

import zlib

import numpy as np
import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution

from dsa_core.evolution import EvolutionSampler

SPACE = {f"g{i}": CategoricalDistribution(list("abcdefghij")) for i in range(5)}
SPACE["lam"] = FloatDistribution(0.02, 0.3, step=0.01)
TARGET = dict(g0="c", g1="h", g2="a", g3="e", g4="j", lam=0.17)


def objective(params: dict) -> float:
    """Separable with a rugged part: each wrong gene costs 1, λ costs its squared distance to 0.17 (scaled)."""
    miss = sum(params[k] != v for k, v in TARGET.items() if k != "lam")
    return miss + 100 * (params["lam"] - TARGET["lam"]) ** 2


def run(sampler: optuna.samplers.BaseSampler, trials: int) -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=sampler)
    for _ in range(trials):
        trial = study.ask(SPACE)
        study.tell(trial, objective(trial.params))
    return study


def test_first_trials_are_random_searchs_own():
    ga = run(EvolutionSampler(SPACE, population=8, initial=12, seed=3), 12)
    rnd = run(optuna.samplers.RandomSampler(seed=3), 12)
    assert [t.params for t in ga.trials] == [t.params for t in rnd.trials]


def test_children_are_new_and_inside_the_space():
    study = run(EvolutionSampler(SPACE, population=6, seed=0), 120)
    keys = [tuple(sorted(t.params.items())) for t in study.trials]
    assert len(set(keys)) == len(keys)
    for t in study.trials:
        assert SPACE["lam"].low <= t.params["lam"] <= SPACE["lam"].high
        assert abs(round((t.params["lam"] - 0.02) / 0.01) - (t.params["lam"] - 0.02) / 0.01) < 1e-9


def test_novelty_is_judged_by_the_key():
    """Two params that encode one function (here: g4 is ignored) count as the same child."""
    key = lambda p: tuple(sorted((k, v) for k, v in p.items() if k != "g4"))  # noqa: E731
    study = run(EvolutionSampler(SPACE, population=6, seed=1, key=key), 80)
    keys = [key(t.params) for t in study.trials]
    assert len(set(keys)) == len(keys)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_beats_random_search_with_the_same_budget(seed):
    ga = run(EvolutionSampler(SPACE, population=12, seed=seed), 150)
    rnd = run(optuna.samplers.RandomSampler(seed=seed), 150)
    assert ga.best_value < rnd.best_value
    assert np.mean([t.value for t in ga.trials[-50:]]) < np.mean([t.value for t in rnd.trials[-50:]])


def hashed_phenotype(params: dict) -> np.ndarray:
    """Genes → a point unrelated to their neighbours' (rugged in the genes), λ → one smooth coordinate."""
    genes = ",".join(str(params[k]) for k in sorted(params) if k != "lam")
    point = np.random.RandomState(zlib.crc32(genes.encode())).rand(4)
    return np.append(point, 3 * params["lam"])


def smooth_objective(params: dict) -> float:
    return float(np.linalg.norm(hashed_phenotype(params) - 0.5)) + 0.01


def run_phenotypic(sampler: optuna.samplers.BaseSampler, trials: int) -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=sampler)
    for _ in range(trials):
        trial = study.ask(SPACE)
        trial.set_user_attr("ratios", hashed_phenotype(trial.params).tolist())
        study.tell(trial, smooth_objective(trial.params))
    return study


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_preselection_wins_where_the_objective_is_smooth_only_in_the_phenotype(seed):
    ga = run_phenotypic(EvolutionSampler(SPACE, population=12, seed=seed, phenotype=hashed_phenotype), 150)
    rnd = run_phenotypic(optuna.samplers.RandomSampler(seed=seed), 150)
    assert ga.best_value < rnd.best_value


def test_a_child_that_repeats_an_evaluated_allocation_is_never_proposed():
    coarse = lambda p: np.array([float(p["g0"] < "f"), p["lam"]])  # noqa: E731  (few distinct allocations)
    sampler = EvolutionSampler(SPACE, population=6, initial=6, seed=0, phenotype=coarse)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=sampler)
    for _ in range(36):
        trial = study.ask(SPACE)
        trial.set_user_attr("ratios", coarse(trial.params).tolist())
        study.tell(trial, objective(trial.params))
    bred = [tuple(t.user_attrs["ratios"]) for t in study.trials[6:]]
    earlier = [set(tuple(t.user_attrs["ratios"]) for t in study.trials[:i + 6]) for i in range(len(bred))]
    assert not any(r in seen for r, seen in zip(bred, earlier))  # 30 bred of 58 possible allocations


def run_breeding_ahead(seed: int, trials: int) -> optuna.Study:
    """As the search does on a GPU: the next child is prepared while a trial is in flight, before it is told."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = EvolutionSampler(SPACE, population=6, initial=8, seed=seed)
    study = optuna.create_study(sampler=sampler)
    for _ in range(trials):
        trial = study.ask(SPACE)
        sampler.prepare(study)
        prepared = sampler._prepared
        study.tell(trial, objective(trial.params))
        if prepared:  # past the random phase, the next trial is exactly the child bred ahead
            assert study.ask(SPACE).params == prepared
            study.tell(study.trials[-1].number, objective(prepared))
    return study


def test_children_bred_ahead_are_new_and_reproducible():
    a, b = run_breeding_ahead(4, 60), run_breeding_ahead(4, 60)
    assert [t.params for t in a.trials] == [t.params for t in b.trials]
    keys = [tuple(sorted(t.params.items())) for t in a.trials]
    assert len(set(keys)) == len(keys)  # a child bred while its sibling was in flight never repeats it
