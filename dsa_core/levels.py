"""Direct search of sparsity allocations (EvoPress, Sieberling et al., ICML 2025), as an Optuna sampler.

A candidate is one sparsity level per unit (a decoder block, or each linear layer of every block) on a grid in
which every level of every unit stands for the same number of weights, `quantum`. A level switch moves the same
number of quanta up in one unit and down in another, so the total number of pruned weights, and with it the
parameter-weighted mean sparsity, never changes: every candidate meets the target exactly, with no repair step.
A unit's natural step is `step` of its own size (1% by default), in whole quanta; a switch between two units moves
the smaller of their two steps. Offspring are mutations of a parent picked by tournament among the best complete
candidates (EvoPress keeps one parent: `parents=1`); the many-offspring, few-tokens selection of EvoPress is the
search's staged fitness (dsa_core.selection's pruner), not the sampler's business. No model code here.
"""

from __future__ import annotations

import bisect
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState

from dsa_core.allocation import MAX_SPARSITY, check_target, fit_to_target
from dsa_core.errors import ConfigError

RETRIES = 200  # mutations tried for one new candidate before giving up (every neighbour already seen)
MEAN_SWITCHES = 3.0  # switches per mutation, geometric with this mean (EvoPress samples a count too)


class LevelGrid:
    """Levels of `sizes` (weights per unit) at `target` sparsity: level l of unit u prunes l·quantum weights, where
    quantum = step × the smallest unit; the levels always sum to `total`."""

    def __init__(self, sizes, target: float, step: float = 0.01):
        self.sizes = np.asarray(sizes, dtype=np.float64)
        if self.sizes.ndim != 1 or not len(self.sizes) or (self.sizes <= 0).any():
            raise ConfigError("A level grid needs one positive size per unit.")
        if not 0 < step <= 0.1:
            raise ConfigError(f"The level step {step} must lie in (0, 0.1]: a fraction of a unit, such as 0.01.")
        self.target = check_target(target)
        self.quantum = step * float(self.sizes.min())
        self.unit_step = np.maximum(1, np.rint(step * self.sizes / self.quantum)).astype(np.int64)
        self.max_level = np.floor(MAX_SPARSITY * self.sizes / self.quantum + 1e-9).astype(np.int64)
        self.total = int(round(self.target * self.sizes.sum() / self.quantum))
        if self.total > self.max_level.sum():
            raise ConfigError(f"Target {target} is beyond what the grid can prune within [0, {MAX_SPARSITY}].")

    def __len__(self) -> int:
        return len(self.sizes)

    def distributions(self) -> dict[str, BaseDistribution]:
        return {f"u{i}": IntDistribution(0, int(m)) for i, m in enumerate(self.max_level)}

    def levels(self, params: dict) -> np.ndarray:
        return np.asarray([params[f"u{i}"] for i in range(len(self))], dtype=np.int64)

    def params(self, levels: np.ndarray) -> dict[str, int]:
        return {f"u{i}": int(v) for i, v in enumerate(levels)}

    def ratios(self, levels: np.ndarray) -> np.ndarray:
        """Each unit's sparsity; the last rounding of the quantum count is absorbed by `fit_to_target`, which moves
        every ratio by the same δ of order step / units."""
        raw = np.asarray(levels, dtype=np.float64) * self.quantum / self.sizes
        return fit_to_target(raw, self.sizes, self.target)

    def snap(self, ratios) -> np.ndarray:
        """The levels nearest to any allocation (uniform, a function's, a refined one), summing to `total`: round,
        then add or take single quanta where the rounding cost least."""
        r = np.clip(np.asarray(ratios, dtype=np.float64), 0.0, MAX_SPARSITY)
        if r.shape != self.sizes.shape:
            raise ConfigError(f"{r.size} ratios cannot start a search over {len(self)} units.")
        exact = r * self.sizes / self.quantum
        levels = np.clip(np.rint(exact), 0, self.max_level).astype(np.int64)
        while (gap := self.total - int(levels.sum())) != 0:
            sign = 1 if gap > 0 else -1
            room = (levels < self.max_level) if sign > 0 else (levels > 0)
            cost = np.where(room, sign * (levels - exact), np.inf)  # units rounded the other way first
            order = np.argsort(cost, kind="stable")[: min(abs(gap), int(room.sum()))]
            levels[order] += sign
        return levels

    def offset(self, start: np.ndarray, steps) -> np.ndarray:
        """The levels `steps` away from `start`: one real number per unit, in units of its own step. The moves'
        weighted mean is taken out first, so that they add up to no change in the total; the result is snapped."""
        z = np.asarray(steps, dtype=np.float64)
        if z.shape != self.sizes.shape:
            raise ConfigError(f"{z.size} steps cannot move an allocation of {len(self)} units.")
        step = self.unit_step.astype(np.float64)
        z = z - float((z * step).sum() / step.sum())
        return self.snap((np.asarray(start, dtype=np.float64) + step * z) * self.quantum / self.sizes)

    def switch(self, levels: np.ndarray, rng: np.random.RandomState) -> np.ndarray | None:
        """One level switch: `up` gains q quanta and `down` loses q, q the smaller of their steps; None when the
        two drawn units cannot move (a bound)."""
        up = rng.randint(len(self))
        down = (up + 1 + rng.randint(len(self) - 1)) % len(self)  # any other unit
        q = min(self.unit_step[up], self.unit_step[down])
        if levels[up] + q > self.max_level[up] or levels[down] - q < 0:
            return None
        out = levels.copy()
        out[up] += q
        out[down] -= q
        return out

    def mutate(self, levels: np.ndarray, rng: np.random.RandomState) -> np.ndarray:
        out = levels
        for _ in range(rng.geometric(1.0 / MEAN_SWITCHES)):  # at least one switch, MEAN_SWITCHES on average
            for _ in range(RETRIES):
                moved = self.switch(out, rng)
                if moved is not None:
                    out = moved
                    break
        return out

    @staticmethod
    def key(levels: np.ndarray) -> str:
        """The identity of a candidate in a study (its `text`): the levels themselves."""
        return "levels:" + ",".join(str(int(v)) for v in levels)


class LevelSwitchSampler(optuna.samplers.BaseSampler):
    """Proposes level-switch mutations of the best complete candidates. `bind` gives it the grid and the start
    (the search does, once the model's sizes are known); the first trial is the start itself."""

    def __init__(self, parents: int = 1, tournament: int = 2, seed: int | None = None):
        self._parents, self._tournament = parents, tournament
        self._rng = np.random.RandomState(seed)
        self.grid: LevelGrid | None = None
        self.start: np.ndarray | None = None
        self._history = _Seen()

    def bind(self, grid: LevelGrid, start: np.ndarray) -> None:
        self.grid, self.start = grid, np.asarray(start, dtype=np.int64)

    def reseed_rng(self) -> None:
        self._rng.seed()

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self.grid.distributions() if self.grid is not None else {}

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        if self.grid is None:
            raise RuntimeError("LevelSwitchSampler.bind must be called before the search asks for a trial.")
        seen, elite = self._history.update(study, trial.number, set(search_space), self._parents)
        start_key = self.grid.key(self.start)
        if start_key not in seen:
            return self.grid.params(self.start)
        elite = [self.grid.levels(t.params) for t in elite] or [self.start]
        for _ in range(RETRIES):
            picks = self._rng.choice(len(elite), size=min(self._tournament, len(elite)), replace=False)
            child = self.grid.mutate(elite[int(min(picks))], self._rng)  # elite is sorted best first
            if self.grid.key(child) not in seen:
                return self.grid.params(child)
        return self.grid.params(self.grid.mutate(elite[0], self._rng))  # a repeat: the search records it as one

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        raise RuntimeError(f"LevelSwitchSampler samples every level jointly; '{param_name}' is not in its grid.")


class _Seen:
    """The keys of a study's trials and its complete trials best first, each finished trial taken in once (a
    finished trial never changes); running trials' keys are read afresh every time."""

    def __init__(self):
        self._taken: set[int] = set()
        self._keys: set[str] = set()
        self._ranked: list[tuple[float, int, FrozenTrial]] = []

    def update(self, study: optuna.Study, asking: int, names: set[str],
               best: int) -> tuple[set[str], list[FrozenTrial]]:
        """The keys seen (finished or running, trial `asking` aside) and the `best` complete trials."""
        running = set()
        states = (TrialState.COMPLETE, TrialState.RUNNING, TrialState.PRUNED)
        for t in study.get_trials(deepcopy=False, states=states):
            if t._trial_id in self._taken or t.number == asking:
                continue
            key = t.user_attrs.get("text")
            if t.state == TrialState.RUNNING:
                running.add(key)
                continue
            self._taken.add(t._trial_id)
            self._keys.add(key)
            if t.state == TrialState.COMPLETE and set(t.params) == names:
                bisect.insort(self._ranked, (t.value, t.number, t), key=lambda r: r[:2])
        return self._keys | running, [t for _, _, t in self._ranked[:best]]


def unit_sizes(layer_shapes: list[list[tuple[int, int]]], granularity: str) -> np.ndarray:
    """Weights per unit: per block (its linear layers together) or per linear layer, in module order."""
    if granularity == "block":
        return np.asarray([sum(o * i for o, i in block) for block in layer_shapes], dtype=np.float64)
    if granularity == "projection":
        return np.asarray([o * i for block in layer_shapes for o, i in block], dtype=np.float64)
    raise ConfigError(f"Unknown granularity '{granularity}'; choose block or projection.")


def expand_to_units(ratios, layer_shapes: list[list[tuple[int, int]]], granularity: str) -> np.ndarray:
    """An allocation (one ratio per block, or per layer) as one ratio per unit of `granularity`: a block's ratio
    goes to each of its layers; per-layer ratios go back to blocks by their weighted mean."""
    r = np.asarray(ratios, dtype=np.float64)
    counts = [len(block) for block in layer_shapes]
    if granularity == "projection":
        return np.repeat(r, counts) if len(r) == len(counts) else r
    if len(r) == len(counts):
        return r
    sizes = unit_sizes(layer_shapes, "projection")
    bounds = np.cumsum([0, *counts])
    return np.asarray([np.average(r[a:b], weights=sizes[a:b]) for a, b in zip(bounds[:-1], bounds[1:])])
