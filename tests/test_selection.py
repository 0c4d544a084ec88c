"""Staged selection: the share of candidates promoted stays 1/η while the search improves."""

import numpy as np
import optuna
import pytest

from dsa_core.selection import RecentHalvingPruner


def _promoted_share(pruner, values) -> float:
    """Each value reported at stage 0 (step 1) by one trial; the share of trials the pruner lets go on."""
    study = optuna.create_study(pruner=pruner)
    went_on = 0
    for v in values:
        trial = study.ask()
        trial.report(float(v), step=1)
        if trial.should_prune():
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            went_on += 1
            study.tell(trial, float(v))
    return went_on / len(values)


def test_an_improving_search_promotes_one_in_eta_where_successive_halving_promotes_most():
    rng = np.random.RandomState(0)
    improving = np.linspace(10, 1, 400) + rng.normal(0, 1.0, 400)  # offspring of ever better parents
    halving = optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=4)
    with_history = _promoted_share(halving, improving)
    recent = _promoted_share(RecentHalvingPruner(4), improving)
    assert with_history > 0.7
    assert 0.2 <= recent <= 0.32


def test_the_best_of_the_window_goes_on_and_the_worst_stops():
    study = optuna.create_study(pruner=RecentHalvingPruner(2, window=4))
    decisions = []
    for v in [5.0, 4.0, 6.0, 3.0, 7.0, 1.0]:
        trial = study.ask()
        trial.report(v, step=1)
        decisions.append(trial.should_prune())
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    # 5 first (goes on); 4 best of two; 6 worst of three; 3 among the best 2 of four; 7 worst of 4, 6, 3, 7; 1 best.
    assert decisions == [False, False, True, False, True, False]


def test_a_nan_stops_and_a_trial_without_reports_is_never_pruned():
    study = optuna.create_study(pruner=RecentHalvingPruner(2))
    trial = study.ask()
    assert not trial.should_prune()
    trial.report(float("nan"), step=1)
    assert trial.should_prune()


def test_the_reduction_factor_is_at_least_two():
    with pytest.raises(ValueError):
        RecentHalvingPruner(1)
