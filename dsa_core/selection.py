"""Staged selection of a search's candidates: measured on few tokens first, on more only when among the best.

Optuna's SuccessiveHalvingPruner ranks a candidate among every trial that ever reached the same stage. An
evolutionary search improves as it goes, so most new offspring of its best candidates beat the best 1/η of the
whole history and are promoted: on an H200, 68% of the allocation search's candidates reached the last of three
stages at η = 4, where 1/16 was meant, and the last stage took 70% of the time. `RecentHalvingPruner` ranks a
candidate among the latest ones measured at its stage instead, as EvoPress ranks one generation's offspring, which
keeps the promoted share at 1/η whatever the search's progress.
"""

from __future__ import annotations

import math

import optuna
from optuna.trial import FrozenTrial, TrialState

WINDOW_PER_PROMOTED = 4  # a stage's window holds this many candidates per one promoted


class RecentHalvingPruner(optuna.pruners.BasePruner):
    """Successive halving over a sliding window: a trial reporting at step η^s (stage s) goes on when its value is
    among the best max(1, n // η) of the latest n = `window` values reported at that step (its own included;
    fewer at the start, where the best of those so far goes on). Trials of other workers count too."""

    def __init__(self, reduction_factor: int, window: int | None = None):
        if reduction_factor < 2:
            raise ValueError("The reduction factor must be at least 2.")
        self.eta = reduction_factor
        self.window = window or WINDOW_PER_PROMOTED * reduction_factor

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        step = trial.last_step
        if step is None:
            return False
        value = trial.intermediate_values[step]
        if math.isnan(value):
            return True
        others = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED,
                                                                         TrialState.RUNNING))
                  if t.number < trial.number and step in t.intermediate_values]
        recent = [t.intermediate_values[step] for t in others[-(self.window - 1):]] + [value]
        kept = max(1, len(recent) // self.eta)
        return value > sorted(recent)[kept - 1]
