"""Evolutionary search for allocation functions (DSA), on Optuna's ask/tell API.

A trial chooses one operation per slot of an AllocationFunction plus the mapping's λ; its fitness is the fast
proxy: re-mask from the cached score order, perplexity on a fixed slice of WikiText-2 validation (never the
test split). The genetic algorithm is dsa_core.evolution's sampler (elitist selection, tournament, crossover,
mutation, children pre-selected by the allocations they give); Optuna's NSGAIISampler as a single-objective GA
is there to compare with, and RandomSampler with the same budget is the baseline. The study lives in a
SQLAlchemy database, so several workers (`python -m dsa_core worker`) can share one search. No UI code here.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields

import numpy as np
import optuna
from optuna.trial import TrialState

from dsa_core import functions as F
from dsa_core import workers as W
from dsa_core.allocation import allocate
from dsa_core.errors import ConfigError, DSAError
from dsa_core.evaluate import FixedWindowsPerplexity
from dsa_core.evolution import EvolutionSampler
from dsa_core.session import PruningSession

log = logging.getLogger(__name__)

SAMPLERS = ("ga", "nsga2", "random")
FAILED_FITNESS = 1e9  # what a candidate that cannot be evaluated scores: never selected, never crashes the GA
WAIT_S = 1.0  # how often a worker with nothing left to claim looks at the study again


@dataclass
class SearchConfig:
    """A search: the pruning set-up it optimises for, its sampler and budget, and its fitness proxy."""

    model: str | None = None
    metric: str = "wanda"
    sparsity: float = 0.7
    calib: str = "wikitext2"
    nsamples: int = 128
    seqlen: int = 2048
    seed: int = 0
    data_source: str = "auto"
    device: str | None = None
    dtype: str | None = None
    sampler: str = "ga"
    population: int = 24
    mutation: float | None = None  # per-gene mutation probability of the GA; None: 1 / number of genes
    initial: int | None = None  # random functions before the GA evolves (None: one population)
    preselect: int = 16  # children the GA breeds per trial; the surrogate picks one to evaluate (1: no surrogate)
    budget_candidates: int | None = 200
    budget_seconds: float | None = None
    fitness_windows: int = 8
    lam_range: tuple[float, float] = (0.02, 0.3)
    top_k: int = 3
    final_eval_windows: int | None = None
    study: str | None = None

    def validate(self) -> SearchConfig:
        if self.sampler not in SAMPLERS:
            raise ConfigError(f"Unknown sampler '{self.sampler}'; choose one of {', '.join(SAMPLERS)}.")
        if not 0 < self.sparsity < 0.99:
            raise ConfigError(f"Sparsity {self.sparsity} is outside (0, 0.99).")
        if self.budget_candidates is None and self.budget_seconds is None:
            raise ConfigError("A search needs a budget: --budget-candidates, --budget-seconds, or both.")
        if (self.budget_candidates is not None and self.budget_candidates < 1) or (
            self.budget_seconds is not None and self.budget_seconds <= 0
        ):
            raise ConfigError("Search budgets must be positive.")
        if self.mutation is not None and not 0 < self.mutation <= 1:
            raise ConfigError(f"Mutation probability {self.mutation} must lie in (0, 1].")
        if self.preselect < 1:
            raise ConfigError("The GA breeds at least one child per trial (preselect ≥ 1).")
        if self.initial is not None and self.initial < 2:
            raise ConfigError("The GA needs at least 2 random functions to start from.")
        if self.population < 2 or self.fitness_windows < 1 or self.top_k < 1:
            raise ConfigError("Population must be ≥ 2, fitness windows ≥ 1 and top-k ≥ 1.")
        lo, hi = self.lam_range
        if not 0 < lo <= hi < 0.5:
            raise ConfigError(f"λ range {self.lam_range} must lie within (0, 0.5).")
        return self

    def to_dict(self) -> dict:
        d = asdict(self)
        d["lam_range"] = list(self.lam_range)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> SearchConfig:
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        if "lam_range" in kw:
            kw["lam_range"] = tuple(kw["lam_range"])
        return cls(**kw).validate()


def search_space(cfg: SearchConfig) -> dict[str, optuna.distributions.BaseDistribution]:
    """One categorical per slot of an allocation function, generated from the operation registry, plus λ."""
    space = {slot: optuna.distributions.CategoricalDistribution(choices) for slot, choices in F.slot_choices().items()}
    lo, hi = cfg.lam_range
    space["lam"] = optuna.distributions.FloatDistribution(lo, hi, step=0.01)
    return space


def function_from_params(params: dict) -> F.AllocationFunction:
    return F.function_from_slots({k: v for k, v in params.items() if k != "lam"}, lam=round(params["lam"], 4))


def function_text(params: dict) -> str:
    """The canonical text of a trial's function: what the study, the memo and the GA's novelty check key on."""
    return F.to_text(function_from_params(params))


@dataclass
class Candidate:
    text: str
    fitness: float
    ratios: list[float]
    warnings: list[str]


class Fitness:
    """The fast proxy: re-mask from the cache, perplexity on the first `windows` windows of WikiText-2
    validation. Memoised by canonical text, so a function the GA proposes again costs nothing."""

    def __init__(self, session: PruningSession, cfg: SearchConfig):
        self.session, self.cfg = session, cfg
        self.stats = session.stats(cfg.metric)
        session.scores(cfg.metric)
        self.windows, self.origin = session.eval_windows("wikitext2", "validation", cfg.seqlen, cfg.fitness_windows)
        self.perplexity = FixedWindowsPerplexity(session.lm, self.windows)
        self.memo: dict[str, Candidate] = {}

    def __call__(self, fn: F.AllocationFunction | str) -> Candidate:
        """Fitness of a function, or of any allocation `allocate` accepts by name (a baseline, for comparison)."""
        text = fn if isinstance(fn, str) else F.to_text(fn)
        if text not in self.memo:
            try:
                result = allocate(self.stats, fn, self.cfg.sparsity)
                self.session.apply(result.ratios, self.cfg.metric)
                ppl = self.perplexity()
                fitness = ppl if math.isfinite(ppl) else FAILED_FITNESS
                self.memo[text] = Candidate(text, fitness, [float(r) for r in result.ratios], result.warnings)
            except DSAError as e:
                self.memo[text] = Candidate(text, FAILED_FITNESS, [], [str(e)])
        return self.memo[text]

    def phenotype(self, params: dict) -> np.ndarray | None:
        """The allocation a trial's params give, without evaluating it (None when the function fails)."""
        try:
            return allocate(self.stats, function_from_params(params), self.cfg.sparsity).ratios
        except DSAError:
            return None


def _comparable(cfg: SearchConfig, **overrides) -> dict:
    """A configuration as resuming compares it: budgets may change between runs, and settings added since a study
    was saved take their defaults (through SearchConfig.from_dict)."""
    return {k: v for k, v in {**cfg.to_dict(), **overrides}.items() if k not in ("budget_candidates", "budget_seconds")}


def create_study(cfg: SearchConfig, storage: str | None = None) -> optuna.Study:
    """A new or existing study (resume by name). Its configuration is kept in the study itself, so that
    workers and resumed runs need only the name and the storage URL."""
    name = cfg.study or f"dsa-{uuid.uuid4().hex[:8]}"
    if cfg.sampler == "ga":
        sampler = EvolutionSampler(search_space(cfg), population=cfg.population, mutation=cfg.mutation,
                                   initial=cfg.initial, preselect=cfg.preselect, seed=cfg.seed,
                                   key=function_text)
    elif cfg.sampler == "nsga2":
        sampler = optuna.samplers.NSGAIISampler(
            population_size=cfg.population, crossover=optuna.samplers.nsgaii.UniformCrossover(), seed=cfg.seed,
            mutation_prob=cfg.mutation,
        )
    else:
        sampler = optuna.samplers.RandomSampler(seed=cfg.seed)
    study = optuna.create_study(study_name=name, storage=W.open_storage(storage), sampler=sampler,
                                direction="minimize", load_if_exists=True)
    saved = study.user_attrs.get("config")
    if saved is None:
        cfg.study = name
        study.set_user_attr("config", cfg.to_dict())
    elif _comparable(SearchConfig.from_dict(saved)) != _comparable(cfg, study=name):
        raise ConfigError(f"Study '{name}' exists with another configuration; resume it with the same settings.")
    return study


def load_study(name: str, storage: str) -> tuple[optuna.Study, SearchConfig]:
    try:
        summary = optuna.load_study(study_name=name, storage=storage)
    except KeyError as e:
        raise ConfigError(f"No study named '{name}' in {storage}.") from e
    cfg = SearchConfig.from_dict(summary.user_attrs["config"])
    return create_study(cfg, storage), cfg


@dataclass
class SearchEvent:
    """What a running search reports after each candidate (the web app streams these)."""

    candidate: int
    generation: int
    text: str
    fitness: float
    best_text: str
    best_fitness: float
    best_ratios: list[float]
    elapsed: float
    cached: bool


@dataclass
class SearchResult:
    study: str
    best: Candidate
    evaluated: int
    trials: int
    elapsed: float
    stopped: bool
    generations: list[dict] = field(default_factory=list)
    top: list[Candidate] = field(default_factory=list)


def _generations(study: optuna.Study, population: int) -> list[dict]:
    """Best-so-far and population mean fitness per generation of `population` trials."""
    values = [t.value for t in study.get_trials(states=(TrialState.COMPLETE,)) if t.value < FAILED_FITNESS]
    out, best = [], math.inf
    for g in range(0, len(values), population):
        chunk = values[g : g + population]
        best = min(best, *chunk)
        out.append({"generation": g // population, "best": best, "mean": float(np.mean(chunk)),
                    "median": float(np.median(chunk))})
    return out


def run_search(
    session: PruningSession,
    cfg: SearchConfig,
    study: optuna.Study,
    on_event: Callable[[SearchEvent], None] | None = None,
    stop: threading.Event | None = None,
) -> SearchResult:
    """Ask/tell until the budget is spent or `stop` is set; what was found is kept in the study either way.
    Budgets count distinct functions evaluated across all workers of the study. Each function is evaluated
    once in the study: a trial proposing one already complete or in flight (or beyond the budget) is told
    PRUNED with a `skipped` user attribute (dsa_core.workers.claim)."""
    fitness = Fitness(session, cfg)
    if isinstance(study.sampler, EvolutionSampler):
        study.sampler.phenotype = fitness.phenotype
    space = search_space(cfg)
    start, evaluated, trials, stopped = time.perf_counter(), 0, 0, False
    breed_ahead = isinstance(study.sampler, EvolutionSampler) and session.lm.device.type == "cuda"
    with ThreadPoolExecutor(1, thread_name_prefix="dsa-breed") as breeder:
        while True:
            W.fail_stale(study)
            progress = W.study_progress(study)
            for text, t in progress.done.items():  # what this and the other workers completed
                fitness.memo.setdefault(text, Candidate(text, t.value, t.user_attrs.get("ratios", []), []))
            if cfg.budget_candidates is not None and len(progress.done) >= cfg.budget_candidates:
                break
            if cfg.budget_seconds is not None and time.perf_counter() - start >= cfg.budget_seconds:
                break
            if stop is not None and stop.is_set():
                stopped = True
                break
            if trials >= 20 * (cfg.budget_candidates or 10_000):  # the space is exhausted: only repeats remain
                break
            claimed = len(progress.done) + len(progress.in_flight)  # by any worker, this one's next trial aside
            if cfg.budget_candidates is not None and claimed >= cfg.budget_candidates:
                time.sleep(WAIT_S)  # other workers are finishing the budget; wait in case one of them dies
                continue
            trial = W.ask(study, space)
            trials += 1
            with W.heartbeat(study, trial):
                fn = function_from_params(trial.params)
                text = F.to_text(fn)
                verdict = W.claim(study, trial, text, cfg.budget_candidates)
                cached = text in fitness.memo
                if verdict is None:
                    # On a GPU the GA breeds the next trial's params on a second thread while this one is evaluated:
                    # breeding is CPU work and evaluation mostly waits on the GPU (on a CPU both want the same cores).
                    # Waited for before this trial is told, so it is bred from the same study state every run (this
                    # trial in flight): a seeded search stays reproducible.
                    breeding = None
                    if breed_ahead and (cfg.budget_candidates is None or claimed + 1 < cfg.budget_candidates):
                        breeding = breeder.submit(study.sampler.prepare, study)
                    cand = fitness(fn)
                    if breeding is not None:
                        breeding.result()
                    trial.set_user_attr("ratios", cand.ratios)
                    evaluated += W.tell(study, trial, cand.fitness)  # cached only when a tell failed before
                else:  # a repeat, or a function beyond the budget: recorded, never evaluated twice
                    trial.set_user_attr("skipped", verdict)
                    W.tell(study, trial, state=TrialState.PRUNED)
            if on_event is not None and (verdict is None or cached):
                cand, best = fitness.memo[text], study.best_trial
                on_event(SearchEvent(
                    candidate=trial.number, generation=trial.number // cfg.population, text=cand.text,
                    fitness=cand.fitness, best_text=best.user_attrs["text"], best_fitness=best.value,
                    best_ratios=best.user_attrs.get("ratios", []), elapsed=time.perf_counter() - start, cached=cached,
                ))
    session.restore()
    return summarize(study, cfg, evaluated, trials, time.perf_counter() - start, stopped)


def summarize(study: optuna.Study, cfg: SearchConfig, evaluated: int = 0, trials: int = 0, elapsed: float = 0.0,
              stopped: bool = False) -> SearchResult:
    complete = sorted(study.get_trials(states=(TrialState.COMPLETE,)), key=lambda t: t.value)
    if not complete:
        raise DSAError("The search ended before any candidate was evaluated; give it a larger budget.")
    top, seen = [], set()
    for t in complete:
        if t.user_attrs["text"] not in seen and len(top) < cfg.top_k:
            seen.add(t.user_attrs["text"])
            top.append(Candidate(t.user_attrs["text"], t.value, t.user_attrs.get("ratios", []), []))
    return SearchResult(study=study.study_name, best=top[0], evaluated=evaluated, trials=trials, elapsed=elapsed,
                        stopped=stopped, generations=_generations(study, cfg.population), top=top)


def faithful_table(session: PruningSession, cfg: SearchConfig, candidates: list[str],
                   progress: Callable[[str, int, int], None] | None = None) -> list[dict]:
    """Re-evaluate candidates with the faithful protocol (sequential pruning, WikiText-2 test) next to
    uniform, OWL and the DSA preset, all in this one run and on the same calibration windows."""
    specs = [("uniform", "uniform"), ("owl", "owl"), ("dsa preset", F.DSA_PRESET)]
    specs += [(f"searched #{i + 1}", text) for i, text in enumerate(candidates)]
    stats = session.stats(cfg.metric)
    rows = []
    for i, (label, spec) in enumerate(specs):
        result = allocate(stats, spec, cfg.sparsity)
        session.prune_sequential(result.ratios, cfg.metric)
        ppl = session.perplexity("wikitext2", "test", cfg.seqlen, cfg.final_eval_windows)
        rows.append({"label": label, "allocation": spec if isinstance(spec, str) else F.to_text(spec), "ppl": ppl,
                     "ratios": [float(r) for r in result.ratios], "warnings": result.warnings})
        if progress:
            progress("final evaluation", i + 1, len(specs))
    session.restore()
    return rows
