"""What a search searches over, each as one object the search loop drives alike: the Optuna distributions of a
trial, the key that identifies what a trial's params encode, and the allocation they give.

- `FunctionSpace`: DSA's allocation functions (pre-process → reduction → transform → mapping with λ), from the
  operation registry; bred by dsa_core.evolution's GA (or NSGA-II, or drawn at random).
- `AllocationSpace`: per-unit sparsity levels searched directly (EvoPress), per block or per linear layer, on
  dsa_core.levels' grid, from a start allocation (uniform, a baseline, a function): mutated by level switches, or,
  with the `cma` refiner, drawn by CMA-ES as real moves from the start, in steps, snapped to the grid.
A hybrid search (dsa_core.search) runs the first, then the second from the best function's allocation.
"""

from __future__ import annotations

import numpy as np
import optuna

from dsa_core import functions
from dsa_core.allocation import Allocation, allocate
from dsa_core.errors import DSAError
from dsa_core.evolution import EvolutionSampler
from dsa_core.levels import LevelGrid, LevelSwitchSampler, expand_to_units, unit_sizes
from dsa_core.stats import BlockStats

# Optuna's CmaEsSampler starts its mean at the centre of each param's range (here: no move) with a standard deviation
# of a sixth of the range (its x0 and sigma0 arguments are deprecated), so a unit's moves range over ±3 first
# standard deviations.
CMA_RANGE_SDS = 3.0


def function_distributions(lam_range: tuple[float, float]) -> dict[str, optuna.distributions.BaseDistribution]:
    """One categorical per slot of an allocation function, generated from the operation registry, plus λ."""
    space = {slot: optuna.distributions.CategoricalDistribution(choices)
             for slot, choices in functions.slot_choices().items()}
    lo, hi = lam_range
    space["lam"] = optuna.distributions.FloatDistribution(lo, hi, step=0.01)
    return space


def function_from_params(params: dict) -> functions.AllocationFunction:
    return functions.function_from_slots({k: v for k, v in params.items() if k != "lam"}, lam=round(params["lam"], 4))


def function_text(params: dict) -> str:
    """The canonical text of a trial's function: what the study, the memo and the GA's novelty check key on."""
    return functions.to_text(function_from_params(params))


class FunctionSpace:
    kind = "function"

    def __init__(self, stats: BlockStats, target: float, lam_range: tuple[float, float]):
        self.stats, self.target = stats, target
        self._distributions = function_distributions(lam_range)

    def distributions(self) -> dict[str, optuna.distributions.BaseDistribution]:
        return self._distributions

    def key(self, params: dict) -> str:
        return function_text(params)

    def allocation(self, params: dict) -> Allocation:
        """The function's allocation; DSAError when the function cannot allocate."""
        return allocate(self.stats, function_from_params(params), self.target)

    def bind(self, study: optuna.Study) -> None:
        if isinstance(study.sampler, EvolutionSampler):
            study.sampler.phenotype = self.phenotype

    def phenotype(self, params: dict) -> np.ndarray | None:
        """The allocation a trial's params give, without evaluating it (None when the function fails)."""
        try:
            return self.allocation(params).ratios
        except DSAError:
            return None


class AllocationSpace:
    kind = "allocation"

    def __init__(self, stats: BlockStats, target: float, granularity: str, step: float, start,
                 refiner: str = "switch", cma_sigma: float = 4.0):
        """`start`: any spec `allocate` accepts, or ratios (per block or per layer). `refiner`: `switch` (a trial's
        params are the levels) or `cma` (a trial's params are each unit's move from the start, in its steps, first
        drawn with a standard deviation of `cma_sigma` steps)."""
        self.stats, self.target, self.granularity, self.refiner = stats, target, granularity, refiner
        self.cma_range = CMA_RANGE_SDS * cma_sigma
        self.grid = LevelGrid(unit_sizes(stats.layer_shapes, granularity), target, step)
        ratios = allocate(stats, start, target).ratios if isinstance(start, str) else start
        self.start_ratios = expand_to_units(ratios, stats.layer_shapes, granularity)
        self.start = self.grid.snap(self.start_ratios)

    def distributions(self) -> dict[str, optuna.distributions.BaseDistribution]:
        if self.refiner == "cma":
            return {f"z{i}": optuna.distributions.FloatDistribution(-self.cma_range, self.cma_range)
                    for i in range(len(self.grid))}
        return self.grid.distributions()

    def levels(self, params: dict) -> np.ndarray:
        if self.refiner == "cma":
            return self.grid.offset(self.start, [params[f"z{i}"] for i in range(len(self.grid))])
        return self.grid.levels(params)

    def key(self, params: dict) -> str:
        return self.grid.key(self.levels(params))

    def allocation(self, params: dict) -> Allocation:
        levels = self.levels(params)
        return Allocation(ratios=self.grid.ratios(levels), name=self.grid.key(levels))

    def bind(self, study: optuna.Study) -> None:
        """Give the study's sampler its start: the level-switch sampler proposes it first; CMA-ES, whose mean starts
        at the centre of its range (no move), has it measured first as an enqueued trial."""
        if isinstance(study.sampler, LevelSwitchSampler):
            study.sampler.bind(self.grid, self.start)
        elif self.refiner == "cma":
            study.enqueue_trial({f"z{i}": 0.0 for i in range(len(self.grid))}, skip_if_exists=True)
