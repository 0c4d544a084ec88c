"""DSA's evolutionary search as an Optuna sampler: elitist selection, tournament, uniform crossover, mutation,
and pre-selection of children by a surrogate of the fitness.

Optuna's NSGAIISampler, used as a single-objective GA, lost to random search on SmolLM2 (bench/bench_search.py,
3 of 3 seeds). The space is rugged in the genes: one changed op, or a crossover of two good functions, gives an
unrelated allocation, so recombining genes alone searches little better than drawing at random. It is smooth in
what the genes produce (the phenotype: each block's sparsity ratio): allocations that differ a little score
about the same. So each trial breeds `preselect` new children and evaluates only the one whose ratios lie
nearest, by a k-nearest-neighbour estimate, to the allocations that scored best so far; a child whose ratios
repeat an evaluated allocation is not new and is never proposed. λ moves by a small Gaussian step rather than a
fresh draw. The first `initial` trials are random (Optuna's RandomSampler, so a GA and a random search of one
seed share them); every later trial is bred from two parents, each the winner of a tournament among the best
`population` functions found so far (by any worker of the study).
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution
from optuna.trial import FrozenTrial, TrialState

RETRIES = 100  # draws per wanted child (and batches of children) before giving up and returning a random function
NEIGHBOURS = 5  # of the k-nearest-neighbour fitness estimate
PHENOTYPE_DECIMALS = 6  # ratios equal to this many decimals are one allocation

Phenotype = Callable[[dict], "np.ndarray | None"]  # params -> per-block ratios (None: the function fails)


class EvolutionSampler(optuna.samplers.BaseSampler):
    """A steady-state GA over a fixed space of categorical genes and one float gene (λ).

    `key` maps params to the identity of what they encode (an allocation function's canonical text), so that
    novelty is judged on functions rather than raw params. `phenotype` (set by the search once the model's block
    statistics exist) maps params to the allocation they give; without it children are not pre-selected.
    `mutation` is the per-gene probability of a categorical redraw (default 1 / number of genes); λ moves by a
    Gaussian step of `step_sd` of its range with probability ½. Completed trials carry their ratios in the
    `ratios` user attribute. Children's phenotypes are computed in `threads` threads (default: one per core)."""

    def __init__(self, space: dict[str, BaseDistribution], population: int = 24, mutation: float | None = None,
                 initial: int | None = None, preselect: int = 16, tournament: int = 2, step_sd: float = 0.1,
                 seed: int | None = None, key: Callable[[dict], Any] | None = None,
                 phenotype: Phenotype | None = None, threads: int | None = None):
        self._space = space
        self._population = population
        self._mutation = mutation if mutation is not None else 1.0 / len(space)
        self._initial = initial if initial is not None else population
        self._preselect = preselect
        self._tournament = tournament
        self._step_sd = step_sd
        self._key = key or (lambda params: tuple(sorted(params.items())))
        self.phenotype = phenotype
        self._threads = threads or os.cpu_count() or 1
        self._history = _History(self._space, self._key)
        self._prepared: dict[str, Any] | None = None  # params bred ahead by `prepare`
        self._rng = np.random.RandomState(seed)
        self._random = optuna.samplers.RandomSampler(seed=seed)

    def reseed_rng(self) -> None:
        self._rng.seed()
        self._random.reseed_rng()

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self._space

    def prepare(self, study: optuna.Study) -> None:
        """Breed the next trial's params now, from the study as it stands; the next `sample_relative` returns them.
        The search calls this on a second thread while it evaluates a trial, so breeding costs no wall time."""
        self._prepared = self._propose(study)

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        if self._prepared is not None:
            params, self._prepared = self._prepared, None
            return params
        return self._propose(study)

    def _propose(self, study: optuna.Study) -> dict[str, Any]:
        """A child of the best functions so far, new in key and in phenotype; {} while the study is in its
        random phase (Optuna then samples each param independently, at random)."""
        running = self._history.update(study.get_trials(
            deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING, TrialState.PRUNED)))
        ranked = self._history.ranked
        if len(ranked) < self._initial:
            return {}  # Optuna falls back to sample_independent: random
        seen = self._history.keys | running
        elite, keys = [], set()
        for _, _, key, t in ranked:
            if key not in keys:
                keys.add(key)
                elite.append(t)
                if len(elite) == self._population:
                    break
        points, log_fitness = self._history.known()
        wanted = self._preselect if self.phenotype is not None and len(points) else 1
        evaluated = self._history.evaluated
        for _ in range(RETRIES):
            batch = []
            for _ in range(RETRIES * wanted):
                child = self._breed(elite)
                key = self._key(child)
                if key not in seen:
                    seen.add(key)
                    batch.append(child)
                    if len(batch) == wanted:
                        break
            if wanted == 1 or not batch:
                return batch[0] if batch else {}
            # Phenotypes of new (pre-process, reduction) pairs take a pass over the score samples: in threads,
            # since numpy releases the GIL for them.
            with ThreadPoolExecutor(min(len(batch), self._threads)) as pool:
                ratios = list(pool.map(self.phenotype, batch))
            children = [(c, r) for c, r in zip(batch, ratios)
                        if r is None or _phenotype_key(r) not in evaluated]
            if children:  # else every child allocates exactly as an evaluated function: breed again
                return min(children, key=lambda c: _estimate(c[1], points, log_fitness))[0]
        return {}

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        return self._random.sample_independent(study, trial, param_name, param_distribution)

    def _breed(self, elite: list[FrozenTrial]) -> dict[str, Any]:
        a, b = self._select(elite), self._select(elite)
        child = {name: (a.params[name] if self._rng.rand() < 0.5 else b.params[name]) for name in self._space}
        return self._mutate(child)

    def _select(self, elite: list[FrozenTrial]) -> FrozenTrial:
        picks = self._rng.choice(len(elite), size=min(self._tournament, len(elite)), replace=False)
        return elite[min(picks)]  # elite is sorted best first

    def _mutate(self, params: dict[str, Any]) -> dict[str, Any]:
        out = dict(params)
        for name, dist in self._space.items():
            if isinstance(dist, CategoricalDistribution):
                if self._rng.rand() < self._mutation:
                    out[name] = dist.choices[self._rng.randint(len(dist.choices))]
            elif isinstance(dist, FloatDistribution) and self._rng.rand() < 0.5:
                value = out[name] + self._rng.normal(0.0, self._step_sd * (dist.high - dist.low))
                if dist.step is not None:
                    value = dist.low + round((value - dist.low) / dist.step) * dist.step
                out[name] = float(min(dist.high, max(dist.low, value)))
        return out


class _History:
    """What the sampler knows of a study's trials, taken in once each: a finished trial (COMPLETE or PRUNED) never
    changes, so each call reads only the trials finished since the last one rather than rebuilding everything,
    which at a few thousand trials cost more than breeding."""

    def __init__(self, space: dict[str, BaseDistribution], key: Callable[[dict], Any]):
        self._names = set(space)
        self._key = key
        self._taken: set[int] = set()  # ids of the finished trials taken in
        self.keys: set = set()  # their keys
        self.ranked: list[tuple[float, int, Any, FrozenTrial]] = []  # (value, number, key, trial), best first
        self.evaluated: set[bytes] = set()  # phenotype keys of the complete trials' allocations
        self._points = np.empty((0, 0))  # their allocations, a row each (rows beyond _rows are spare capacity)
        self._log_fitness = np.empty(0)
        self._rows = 0

    def update(self, trials: list[FrozenTrial]) -> set:
        """Take in the newly finished trials; returns the keys of the running ones."""
        running = set()
        for t in trials:
            if t._trial_id in self._taken or set(t.params) != self._names:
                continue
            key = self._key(t.params)
            if t.state == TrialState.RUNNING:
                running.add(key)
                continue
            self._taken.add(t._trial_id)
            self.keys.add(key)
            if t.state == TrialState.COMPLETE:
                bisect.insort(self.ranked, (t.value, t.number, key, t), key=lambda r: r[:2])
                if t.user_attrs.get("ratios"):
                    self._add(np.asarray(t.user_attrs["ratios"], dtype=np.float64), t.value)
        return running

    def _add(self, ratios: np.ndarray, value: float) -> None:
        if self._rows == len(self._points):  # grow by doubling: appending stays O(blocks) on average
            grown = np.empty((max(16, 2 * self._rows), len(ratios)))
            if self._rows:
                grown[:self._rows] = self._points[:self._rows]
            self._points, self._log_fitness = grown, np.resize(self._log_fitness, len(grown))
        self._points[self._rows] = ratios
        self._log_fitness[self._rows] = np.log(max(value, 1e-12))
        self._rows += 1
        self.evaluated.add(_phenotype_key(ratios))

    def known(self) -> tuple[np.ndarray, np.ndarray]:
        """The evaluated allocations (a row each) and the log of their fitness."""
        return self._points[:self._rows], self._log_fitness[:self._rows]


def _phenotype_key(ratios: np.ndarray) -> bytes:
    return np.round(ratios, PHENOTYPE_DECIMALS).tobytes()


def _estimate(ratios: np.ndarray | None, points: np.ndarray, log_fitness: np.ndarray) -> float:
    """Log-fitness of an allocation estimated from the evaluated ones (rows of `points`) nearest to it
    (inverse-distance weights); +inf for a function that fails, so that it is picked only when nothing else is new."""
    if ratios is None:
        return np.inf
    d = np.linalg.norm(points - ratios, axis=1)
    nearest = np.argpartition(d, NEIGHBOURS)[:NEIGHBOURS] if len(d) > NEIGHBOURS else np.arange(len(d))
    w = 1.0 / (d[nearest] + 1e-9)
    return float(np.sum(w * log_fitness[nearest]) / np.sum(w))
