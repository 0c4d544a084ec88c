"""Search for sparsity allocations on Optuna's ask/tell API: DSA's allocation functions, EvoPress-style direct
allocations, or both in turn (hybrid).

A trial is a point of a search space (dsa_core.spaces): a function (one operation per slot plus the mapping's λ)
or one sparsity level per block or linear layer. Its fitness (dsa_core.fitness) is a fast proxy measured after
re-masking from the cached score order: validation perplexity or the KL divergence from the dense model, never
the test split. With several fidelities, every candidate is measured on few tokens and only the best are promoted
to more (EvoPress's multi-step selection, as a successive-halving pruner: dsa_core.selection). Functions are bred
by dsa_core.evolution's GA (or Optuna's NSGA-II, or drawn at random), allocations by dsa_core.levels' level
switches. A hybrid search runs a function search, then refines the best function's allocation directly. The study
lives in a SQLAlchemy database, so several workers (`python -m dsa_core worker`) can share one search. No UI code here.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields, replace
from typing import ClassVar

import numpy as np
import optuna
import torch
from optuna.trial import TrialState

from dsa_core import workers as W
from dsa_core.allocation import allocate, describe
from dsa_core.comparison import atp_beta, atp_betas, atp_spec
from dsa_core.errors import ConfigError, DSAError
from dsa_core.evolution import EvolutionSampler
from dsa_core.fitness import (
    FAILED_FITNESS,
    FITNESS_NAMES,
    FITNESSES,
    LAST_STAGES,
    ZEROSHOT_ONE_STAGE,
    Fitness,
    check_kind,
    check_rescore,
    check_sequential_windows,
    parse_fidelity,
    stage_windows,
)
from dsa_core.levels import LevelSwitchSampler, expand_to_units
from dsa_core.reporter import Reporter, reporter_or_silent
from dsa_core.restarts import RESTART_LEVELS, Start, next_start
from dsa_core.selection import RecentHalvingPruner
from dsa_core.session import PruningSession
from dsa_core.settings import option, shared, validate_declared
from dsa_core.spaces import AllocationSpace, FunctionSpace, function_distributions, function_text

log = logging.getLogger(__name__)

SAMPLERS = ("ga", "nsga2", "random")
SPACES = {"function": "DSA allocation functions (GA)",
          "allocation": "per-block or per-layer sparsity levels, searched directly (EvoPress level switches)",
          "hybrid": "functions first, then the best function's allocation refined directly"}
GRANULARITIES = ("block", "projection")
WAIT_S = 1.0  # how often a worker with nothing left to claim looks at the study again
REFINE_SUFFIX = ":refine"  # a hybrid search's second study is named after its first
REFINERS = {"switch": "level switches of the best allocation so far (EvoPress), each through the staged selection",
            "cma": "CMA-ES, whose mean follows the fitness's trend rather than its best point, every candidate "
                   "measured at the last stage"}


@dataclass
class SearchConfig:
    """A search: the pruning set-up it optimises for, its space, sampler and budget, and its fitness proxy."""

    model: str | None = shared("model")
    metric: str = shared("metric")
    sparsity: float = shared("sparsity", default=0.7)
    calib: str = shared("calib")
    nsamples: int = shared("nsamples")
    seqlen: int = shared("seqlen")
    seed: int = shared("seed")
    data_source: str = shared("data_source")
    device: str | None = shared("device")
    dtype: str | None = shared("dtype")
    batch_size: int | None = shared("batch_size")
    space: str = option("function", "what to search: " + "; ".join(f"{k}: {v}" for k, v in SPACES.items()),
                         choices=tuple(SPACES))
    granularity: str = option("block", "allocation and hybrid spaces: one level per block, or per linear layer "
                               "(q, k, v, o, gate, up, down)", choices=GRANULARITIES)
    # Its choices are what a form offers; the command line also takes zeroshot:TASKS (`open`: validate() checks).
    fitness: str = option("ppl", "; ".join(f"{k}: {v}" for k, v in FITNESSES.items()), choices=("ppl", "kl"),
                           open=True)
    fidelity: str = option("", "token counts of the staged selection, few first, e.g. 2k,16k,64k: every candidate "
                            "is measured on the first, the best 1/--promote on the next (default: one stage of "
                            "--fitness-windows windows)")
    last_stage: str = option("masked", "how the last fidelity stage measures a candidate: "
                              + "; ".join(f"{k}: {v}" for k, v in LAST_STAGES.items()), choices=tuple(LAST_STAGES))
    sequential_windows: int = option(0, "a sequential last stage calibrates on only the first this many "
                                      "calibration windows, whole batches (0: all --nsamples), so more candidates "
                                      "reach it; the result is still pruned with all")
    rescore: bool = option(False, "with --last-stage sequential (Wanda or SparseGPT): the re-masked stages score "
                           "each block on the inputs it was pruned on by the best candidate measured sequentially so "
                           "far, not on the dense model's, so that they rank its neighbours more as the last stage "
                           "does")
    promote: int = option(4, "staged selection: 1 in this many candidates goes on to the next fidelity")
    level_step: float = option(0.01, "allocation space: a level is this fraction of the smallest unit's weights")
    refiner: str = option("switch", "allocation and hybrid spaces: how allocations are drawn: "
                          + "; ".join(f"{k}: {v}" for k, v in REFINERS.items()), choices=tuple(REFINERS))
    cma_sigma: float = option(4.0, "--refiner cma: the first standard deviation of each unit's move from the start, "
                              "in its level steps; moves range over three times this either way")
    parents: int = option(1, "allocation space: mutate one of the best this many allocations (EvoPress: 1)")
    start: str = option("uniform", "allocation space: the allocation it starts from (uniform, owl, a function's "
                         "text, ...)")
    hybrid_split: float = option(0.5, "hybrid: the share of the budget spent on functions before refining")
    refine_patience: int = option(0, "hybrid: once this many candidates in a row measured at the last stage are no "
                                  "better than the refinement's best, it starts again from the best allocation "
                                  "measured that lies a few levels away from every one refined so far (0: refine one "
                                  "start until the budget ends)")
    rerank_tokens: int = option(0, "re-rank the top-k by validation perplexity on this many tokens (0: rank by "
                                 "the fitness)")
    rerank_final: bool = option(False, "re-rank the top-k by the fitness's last stage after pruning each as the "
                                "result is pruned (sequentially, on every calibration window): the measure nearest "
                                "what the result will be, for k sequential prunes after the budget")
    sampler: str = option("ga", "how functions are drawn: the GA, NSGA-II or at random", choices=SAMPLERS)
    population: int = option(24, "GA: how many of the best functions breed")
    mutation: float | None = option(None, "GA: per-gene mutation probability (default: 1 / number of genes)",
                                    type=float)
    initial: int | None = option(None, "GA: random functions before evolving (default: one population)", type=int)
    preselect: int = option(16, "GA: children bred per trial, the most promising evaluated (1: no pre-selection)")
    # The command line has no default budget (it asks for one); a form or a script starts from 200 candidates.
    budget_candidates: int | None = option(200, "stop after this many candidates", type=int)
    budget_seconds: float | None = option(None, "stop after this long", type=float)
    fitness_windows: int = option(8, "WikiText-2 validation windows of the proxy")
    zeroshot_rows: int = option(200, "--fitness zeroshot:TASKS: rows per task, a fixed seeded subset held out of "
                                "what final tables report (evaluate them with exclude=this)")
    lam_range: tuple[float, float] = (0.02, 0.3)
    top_k: int = option(3, "candidates re-evaluated faithfully at the end")
    final_eval_windows: int | None = option(None, "cap on test windows (quick runs)", type=int)
    study: str | None = option(None, "name; an existing study of that name is resumed", type=str)

    def validate(self) -> SearchConfig:
        validate_declared(self)
        if self.sparsity == 0:
            raise ConfigError("A search at sparsity 0 has nothing to allocate; give a target above 0.")
        if check_kind(self.fitness) is not None:
            if self.fidelity:
                raise ConfigError(ZEROSHOT_ONE_STAGE)
            if self.zeroshot_rows < 1:
                raise ConfigError("The zero-shot fitness needs at least one row per task (--zeroshot-rows).")
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
        windows = self.stage_windows()
        if any(b <= a for a, b in zip(windows, windows[1:])):
            raise ConfigError(f"Fidelities {self.fidelity} round to {windows} windows of {self.seqlen} tokens: each "
                              "stage must measure more windows than the one before.")
        check_sequential_windows(self.sequential_windows, self.nsamples)
        if self.rescore:
            check_rescore(self.metric, self.last_stage)
        if self.promote < 2:
            raise ConfigError("--promote must be at least 2: one in that many candidates goes on to more tokens.")
        if not 0 < self.level_step <= 0.1:
            raise ConfigError(f"The level step {self.level_step} must lie in (0, 0.1].")
        if self.parents < 1:
            raise ConfigError("The allocation search needs at least one parent.")
        if not 0 < self.hybrid_split < 1:
            raise ConfigError(f"The hybrid split {self.hybrid_split} must lie strictly between 0 and 1.")
        if self.refine_patience < 0:
            raise ConfigError("--refine-patience must be 0 (off) or a number of candidates.")
        if self.refine_patience and self.space != "hybrid":
            raise ConfigError("--refine-patience restarts a hybrid search's refinement; give it with --space hybrid.")
        if self.rerank_tokens < 0:
            raise ConfigError("--rerank-tokens must be 0 (off) or a number of tokens.")
        if self.rerank_tokens and self.rerank_final:
            raise ConfigError("Re-rank the top-k one way: by validation perplexity (--rerank-tokens) or by the "
                              "fitness after the final pruning (--rerank-final).")
        if self.space == "allocation":
            describe(self.start)  # read before the model loads
        if self.refiner != "switch" and self.space == "function":
            raise ConfigError(f"--refiner {self.refiner} draws allocations; give it with --space allocation or "
                              "hybrid.")
        if self.cma_sigma <= 0:
            raise ConfigError("--cma-sigma must be a positive number of level steps.")
        if self.cma_sigma != SearchConfig.cma_sigma and self.refiner != "cma":
            raise ConfigError("--cma-sigma sets CMA-ES's first moves; give it with --refiner cma.")
        if self.refiner == "cma" and self.parents != 1:
            raise ConfigError("--parents picks which allocation a level switch mutates; CMA-ES (--refiner cma) "
                              "moves its mean from a whole generation. Leave --parents at 1.")
        if self.space == "allocation" and self.sampler != "ga":
            raise ConfigError("The allocation space mutates levels; --sampler applies to functions only.")
        return self

    def stage_windows(self) -> list[int]:
        """Windows of `seqlen` tokens measured at each stage of the fitness."""
        return stage_windows(parse_fidelity(self.fidelity), self.seqlen, self.fitness_windows)

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
    """The function space's distributions (the allocation space's depend on the model: see dsa_core.spaces)."""
    return function_distributions(cfg.lam_range)


@dataclass
class Candidate:
    text: str
    fitness: float
    ratios: list[float]
    warnings: list[str]
    rerank: float | None = None  # the re-ranking's measure (--rerank-tokens or --rerank-final), when there was one


def make_space(cfg: SearchConfig, stats) -> FunctionSpace | AllocationSpace:
    if cfg.space == "function":
        return FunctionSpace(stats, cfg.sparsity, cfg.lam_range)
    return AllocationSpace(stats, cfg.sparsity, cfg.granularity, cfg.level_step, cfg.start, cfg.refiner,
                           cfg.cma_sigma)


def search_fitness(session: PruningSession, cfg: SearchConfig) -> Fitness:
    """The fitness a search's configuration asks for, at every fidelity stage."""
    return Fitness(session, cfg.metric, cfg.sparsity, cfg.fitness, cfg.stage_windows(), cfg.last_stage,
                   cfg.zeroshot_rows, cfg.sequential_windows, cfg.rescore)


def _comparable(cfg: SearchConfig, **overrides) -> dict:
    """A configuration as resuming compares it: budgets may change between runs, and so may the device (a worker's
    GPU, the web app's), a hybrid's refinement starts from whatever function is best by then, and settings added
    since a study was saved take their defaults (through SearchConfig.from_dict)."""
    skip = ("budget_candidates", "budget_seconds", "start", "device")
    return {k: v for k, v in {**cfg.to_dict(), **overrides}.items() if k not in skip}


def _last_stage_only(cfg: SearchConfig) -> bool:
    """Whether every candidate is measured at the last stage alone: CMA-ES's update weighs a whole generation, which
    a staged selection would leave to the cheap stages (those rank an allocation's near neighbours poorly)."""
    return cfg.space == "allocation" and cfg.refiner == "cma"


def _sampler(cfg: SearchConfig) -> optuna.samplers.BaseSampler:
    if cfg.space == "allocation" and cfg.refiner == "cma":  # its start is the first trial, enqueued (see spaces)
        return optuna.samplers.CmaEsSampler(seed=cfg.seed, n_startup_trials=1, warn_independent_sampling=False)
    if cfg.space == "allocation":  # a hybrid's first study searches functions
        return LevelSwitchSampler(parents=cfg.parents, seed=cfg.seed)
    if cfg.sampler == "ga":
        return EvolutionSampler(search_space(cfg), population=cfg.population, mutation=cfg.mutation,
                                initial=cfg.initial, preselect=cfg.preselect, seed=cfg.seed, key=function_text)
    if cfg.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(
            population_size=cfg.population, crossover=optuna.samplers.nsgaii.UniformCrossover(), seed=cfg.seed,
            mutation_prob=cfg.mutation,
        )
    return optuna.samplers.RandomSampler(seed=cfg.seed)


def _pruner(cfg: SearchConfig) -> optuna.pruners.BasePruner:
    """Staged selection: a candidate measured at stage s reports at step promote**s, and goes on when it is among
    the best 1/promote of the latest candidates measured at that stage (dsa_core.selection)."""
    if len(cfg.stage_windows()) == 1 or _last_stage_only(cfg):
        return optuna.pruners.NopPruner()
    return RecentHalvingPruner(cfg.promote)


def create_study(cfg: SearchConfig, storage: str | optuna.storages.BaseStorage | None = None) -> optuna.Study:
    """A new or existing study (resume by name). Its configuration is kept in the study itself, so that
    workers and resumed runs need only the name and the storage URL."""
    name = cfg.study or f"dsa-{uuid.uuid4().hex[:8]}"
    if isinstance(storage, str) or storage is None:
        storage = W.open_storage(storage)
    study = optuna.create_study(study_name=name, storage=storage, sampler=_sampler(cfg), pruner=_pruner(cfg),
                                direction="minimize", load_if_exists=True)
    saved = study.user_attrs.get("config")
    if saved is None:
        cfg.study = name
        study.set_user_attr("config", cfg.to_dict())
    elif _comparable(SearchConfig.from_dict(saved)) != _comparable(cfg, study=name):
        raise ConfigError(f"Study '{name}' exists with another configuration; resume it with the same settings.")
    return study


def load_study(name: str, storage: str | optuna.storages.BaseStorage) -> tuple[optuna.Study, SearchConfig]:
    # A URL handed to Optuna itself would open it without the workers' heartbeats.
    opened = W.open_storage(storage) if isinstance(storage, str) else storage
    try:
        summary = optuna.load_study(study_name=name, storage=opened)
    except KeyError as e:
        where = storage if isinstance(storage, str) else "the study storage"
        raise ConfigError(f"No study named '{name}' in {where}.") from e
    cfg = SearchConfig.from_dict(summary.user_attrs["config"])
    return create_study(cfg, opened), cfg


@dataclass
class SearchEvent:
    """What a running search reports after each candidate (the web app streams these). `stage` is the last
    fidelity it was measured at (of `stages`); `fitness` is its value there, comparable only within a stage."""

    candidate: int
    generation: int
    text: str
    fitness: float
    best_text: str
    best_fitness: float
    best_ratios: list[float]
    elapsed: float
    cached: bool
    stage: int = 0
    stages: int = 1
    phase: str = "function"
    start: str = ""  # the allocation phase's start: a function's text or a baseline such as "atp:beta=0.01"


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
    space: str = "function"
    throughput: list[dict] = field(default_factory=list)  # per fidelity stage: tokens, evaluated, per_second
    phases: list[dict] = field(default_factory=list)  # a hybrid's two searches: space, evaluated, seconds, best
    start_ratios: list[float] = field(default_factory=list)  # hybrid: the best function's allocation, refined since
    stop_reason: str = ""  # why a search stopped before its budget when no one asked it to (the GPU's memory ran out)
    converged: bool = False  # it ended before its budget, its patience spent (run_search's `patience`)
    kind: ClassVar[str] = "search"

    def to_dict(self) -> dict:
        """The stable serialised form: every field (candidates as dicts) and the kind."""
        return {"kind": self.kind, **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict) -> SearchResult:
        if d.get("kind", cls.kind) != cls.kind:
            raise ConfigError(f"Not a search result: its kind is {d.get('kind')!r}.")
        known = {f.name for f in fields(cls)}
        body = {k: v for k, v in d.items() if k in known}
        return cls(**{**body, "best": Candidate(**d["best"]), "top": [Candidate(**c) for c in d.get("top", [])]})


def _generations(study: optuna.Study, population: int) -> list[dict]:
    """Best-so-far and population mean fitness per generation of `population` fully measured trials."""
    values = [t.value for t in study.get_trials(states=(TrialState.COMPLETE,)) if t.value < FAILED_FITNESS]
    out, best = [], math.inf
    for g in range(0, len(values), population):
        chunk = values[g : g + population]
        best = min(best, *chunk)
        out.append({"generation": g // population, "best": best, "mean": float(np.mean(chunk)),
                    "median": float(np.median(chunk))})
    return out


def _staged(fitness: Fitness, trial: optuna.Trial, key: str, ratios, promote: int,
            first: int = 0) -> tuple[float, int, bool]:
    """Measure stage after stage from `first` while the pruner promotes: (value at the last stage reached, that
    stage, pruned)."""
    last = len(fitness.stages) - 1
    for stage in range(first, last):
        value = fitness.measure(key, ratios, stage)
        trial.report(value, step=promote**stage)
        if trial.should_prune():
            return value, stage, True
    return fitness.measure(key, ratios, last), last, False


def _best(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    try:
        return study.best_trial
    except ValueError:  # no trial complete yet (every one so far stopped at a lower fidelity, or failed)
        return None


@dataclass(frozen=True)
class BudgetShare:
    """Where one search sits in a hybrid's budget, for the progress it reports: candidates counted before it, and
    candidates and seconds of budget after it."""

    before: int = 0
    candidates_after: int = 0
    seconds_after: float = 0.0
    hybrid: bool = False


class Stagnation:
    """How many candidates in a row, measured at the last stage, were no better than the best before them."""

    def __init__(self):
        self.best, self.since_best = math.inf, 0

    def add(self, value: float) -> None:
        if value < self.best:
            self.best, self.since_best = value, 0
        else:
            self.since_best += 1


def run_search(
    session: PruningSession,
    cfg: SearchConfig,
    study: optuna.Study,
    reporter: Reporter | None = None,
    fitness: Fitness | None = None,
    share: BudgetShare = BudgetShare(),
    patience: int = 0,
) -> SearchResult:
    """Ask/tell until the budget is spent or the reporter is cancelled; what was found is kept in the study either
    way (a cancelled search returns it, `stopped`). The reporter hears a `SearchEvent` per candidate, the candidates
    done of the budget and, with a budget in seconds alone, the time left. Budgets count distinct candidates evaluated
    across all workers of the study (a candidate stopped at a low fidelity counts). Each candidate is evaluated once
    in the study: a trial proposing one already evaluated or in flight (or beyond the budget) is told PRUNED with a
    `skipped` user attribute (dsa_core.workers.claim). A hybrid search runs its two phases here (see `run_hybrid`).
    `fitness` may be passed in to share its cached windows. With `patience`, the search ends, `converged`, once that
    many candidates in a row measured at the last stage were no better than the best before them (counted over the
    study's whole history, so that a resumed search that had converged ends at once)."""
    reporter = reporter_or_silent(reporter)
    if cfg.space == "hybrid":
        return run_hybrid(session, cfg, study, reporter, fitness)
    fitness = fitness or search_fitness(session, cfg)
    name = FITNESS_NAMES.get(cfg.fitness, "fitness")
    budget = None if cfg.budget_candidates is None else share.before + cfg.budget_candidates + share.candidates_after
    space = make_space(cfg, fitness.stats)
    space.bind(study)
    distributions = space.distributions()
    first_stage = len(fitness.stages) - 1 if _last_stage_only(cfg) else 0
    memo: dict[str, Candidate] = {}
    start, evaluated, trials, stopped, reason = time.perf_counter(), 0, 0, False, ""
    tracker, stagnation, converged = W.ProgressTracker(), Stagnation(), False
    breed_ahead = isinstance(study.sampler, EvolutionSampler) and session.lm.device.type == "cuda"
    with ThreadPoolExecutor(1, thread_name_prefix="dsa-breed") as breeder:
        while True:
            W.fail_stale(study)
            progress = tracker.read(study)
            for t in progress.new:  # what this and the other workers completed
                if t.state == TrialState.COMPLETE:
                    text = t.user_attrs["text"]
                    memo.setdefault(text, Candidate(text, t.value, t.user_attrs.get("ratios", []), []))
                    stagnation.add(t.value)
            if cfg.budget_candidates is not None and len(progress.done) >= cfg.budget_candidates:
                break
            if patience and stagnation.since_best >= patience:
                converged = True
                break
            if cfg.budget_seconds is not None and time.perf_counter() - start >= cfg.budget_seconds and evaluated:
                break  # a search given seconds evaluates at least one candidate (a hybrid's refinement, its start)
            if reporter.cancelled:
                stopped = True
                break
            if trials >= 20 * (cfg.budget_candidates or 10_000):  # the space is exhausted: only repeats remain
                break
            claimed = len(progress.done) + len(progress.in_flight)  # by any worker, this one's next trial aside
            if cfg.budget_candidates is not None and claimed >= cfg.budget_candidates:
                time.sleep(WAIT_S)  # other workers are finishing the budget; wait in case one of them dies
                continue
            trial = W.ask(study, distributions)
            trials += 1
            with W.heartbeat(study, trial):
                text = space.key(trial.params)
                verdict = W.claim(study, trial, text, cfg.budget_candidates, tracker)
                cached, stage = text in memo, len(fitness.stages) - 1
                if verdict is None:
                    # On a GPU the GA breeds the next trial's params on a second thread while this one is evaluated:
                    # breeding is CPU work and evaluation mostly waits on the GPU (on a CPU both want the same cores).
                    # Waited for before this trial is told, so it is bred from the same study state every run (this
                    # trial in flight): a seeded search stays reproducible.
                    breeding = None
                    if breed_ahead and (cfg.budget_candidates is None or claimed + 1 < cfg.budget_candidates):
                        breeding = breeder.submit(study.sampler.prepare, study)
                    pruned = False
                    if cached:  # told before, but the tell failed (the trial was failed as stale meanwhile)
                        cand = memo[text]
                    else:
                        try:
                            alloc = space.allocation(trial.params)
                        except DSAError as e:
                            cand = Candidate(text, FAILED_FITNESS, [], [str(e)])
                        else:
                            try:
                                value, stage, pruned = _staged(fitness, trial, text, alloc.ratios, cfg.promote,
                                                               first_stage)
                            except torch.OutOfMemoryError as e:  # e.g. other jobs took the GPU: keep what was found
                                reason = (f"The GPU ran out of memory measuring a candidate ({str(e).splitlines()[0]}"
                                          "); the search stopped and kept what it had found. Free GPU memory, or "
                                          "measure fewer tokens (--fidelity, --nsamples), then resume it.")
                                value, stage, pruned = FAILED_FITNESS, 0, False
                            cand = Candidate(text, value, [float(r) for r in alloc.ratios], alloc.warnings)
                    if breeding is not None:
                        breeding.result()
                    if reason:
                        W.tell(study, trial, state=TrialState.FAIL)
                        log.warning(reason)
                        stopped = True
                        break
                    trial.set_user_attr("ratios", cand.ratios)
                    trial.set_user_attr("stage", stage)
                    if pruned:
                        evaluated += W.tell(study, trial, state=TrialState.PRUNED)
                    else:
                        memo[text] = cand
                        evaluated += W.tell(study, trial, cand.fitness)  # cached only when a tell failed before
                else:  # a repeat, or a candidate beyond the budget: recorded, never evaluated twice
                    trial.set_user_attr("skipped", verdict)
                    W.tell(study, trial, state=TrialState.PRUNED)
            if verdict is None or cached:
                best = _best(study)
                reporter.event(SearchEvent(
                    candidate=trial.number, generation=trial.number // cfg.population, text=text,
                    fitness=cand.fitness, best_text=best.user_attrs["text"] if best else "",
                    best_fitness=best.value if best else math.inf,
                    best_ratios=best.user_attrs.get("ratios", []) if best else [],
                    elapsed=time.perf_counter() - start, cached=cached, stage=stage, stages=len(fitness.stages),
                    phase=space.kind, start=cfg.start if space.kind == "allocation" else "",
                ))
                phase = f"{space.kind} phase, " if share.hybrid else ""
                found = f"best {name} {best.value:.4g}" if best else "none measured at every stage yet"
                reporter.update(f"{phase}generation {trial.number // cfg.population}, {found}, candidates",
                                share.before + len(progress.done) + 1, budget or 0)
                if cfg.budget_seconds is not None and budget is None:  # a budget of time alone says when it ends
                    left = cfg.budget_seconds - (time.perf_counter() - start)
                    reporter.time_left(max(0.0, left) + share.seconds_after)
    session.restore()
    if reason:
        torch.cuda.empty_cache()
        if _best(study) is None:
            raise DSAError(reason)
    result = summarize(study, cfg, evaluated, trials, time.perf_counter() - start, stopped)
    result.throughput, result.stop_reason, result.converged = fitness.throughput(), reason, converged
    return result


def refine_name(study: str, restart: int = 0) -> str:
    """The study of a hybrid's refinement from its `restart`-th start (0: the first), named after the hybrid's."""
    return study + REFINE_SUFFIX + (str(restart + 1) if restart else "")


def refine_config(cfg: SearchConfig, start: str, candidates: int | None, seconds: float | None,
                  restart: int = 0) -> SearchConfig:
    """A hybrid's refinement: the allocation space from `start`, in a study named after the hybrid's."""
    return replace(cfg, space="allocation", start=start, budget_candidates=candidates, budget_seconds=seconds,
                   refine_patience=0, study=refine_name(cfg.study or "", restart)).validate()


ATP_FINALISTS = 3  # the β values a hybrid's start measures on the last stage, of those scanned on the one before


def atp_start(fitness: Fitness, sparsity: float, until: float | None) -> float:
    """ATP's β for a hybrid's start: scanned on the stage before the last (fewer tokens, and re-masked where the last
    prunes sequentially, 4.5 s a β on Gemma 3 270M: there the scan on the last stage took time the refinement
    needed), then its best few measured on the last, which decides; with one stage, scanned on it."""
    if len(fitness.stages) == 1:
        return atp_beta(fitness, sparsity, until)
    finalists = atp_betas(fitness, sparsity, until, stage=len(fitness.stages) - 2)[:ATP_FINALISTS]
    return min(finalists, key=lambda beta: fitness(atp_spec(beta)))


def run_hybrid(session: PruningSession, cfg: SearchConfig, study: optuna.Study, reporter: Reporter | None = None,
               fitness: Fitness | None = None) -> SearchResult:
    """Functions first (`study`, `hybrid_split` of the budget), then the best allocation so far refined directly (by
    `refiner`) for the rest, in a study beside the first (its name + ':refine'). The refinement starts from the
    best function's allocation, or from ATP's (its β searched on the same fitness) when that scores better: ATP was
    the strongest reference on both benchmark models. With `refine_patience`, a refinement that stops improving
    gives the rest of the budget to a new one (':refine2', ...) from a distant start (dsa_core.restarts). The result
    is the best of every phase, with the phases in `phases` and, in `start_ratios`, the allocation that the
    refinement which found the best started from, so that a UI can show how far each unit moved."""
    fitness = fitness or search_fitness(session, cfg)
    split = cfg.hybrid_split
    first = replace(cfg, space="function", refine_patience=0,
                    budget_candidates=None if cfg.budget_candidates is None else max(1, round(cfg.budget_candidates
                                                                                               * split)),
                    budget_seconds=None if cfg.budget_seconds is None else cfg.budget_seconds * split)
    rest = 0 if cfg.budget_candidates is None else cfg.budget_candidates - first.budget_candidates
    seconds_rest = 0.0 if cfg.budget_seconds is None else cfg.budget_seconds * (1 - split)
    found = run_search(session, first, study, reporter, fitness, BudgetShare(0, rest, seconds_rest, hybrid=True))
    phases = [{"space": "function", "evaluated": found.evaluated, "seconds": found.elapsed,
               "best": found.best.text, "best_fitness": found.best.fitness}]
    if found.stopped:
        found.phases = phases
        return found
    started = time.perf_counter()
    # ATP's β search takes at most half of the time left, so that a budget in seconds holds (ATP tries 0.002 steps).
    until = None if cfg.budget_seconds is None else started + (cfg.budget_seconds - found.elapsed) / 2
    beta = atp_start(fitness, cfg.sparsity, until)
    # Measured as the scan measured it (β = 0 is uniform's measurement, not a second prune of the same allocation).
    atp, atp_fitness = f"atp:beta={beta:g}", fitness(atp_spec(beta))
    start = atp if atp_fitness < found.best.fitness else found.best.text
    found.elapsed += time.perf_counter() - started  # ATP's β search is the hybrid's time too
    stats = fitness.stats

    def units(ratios) -> np.ndarray:
        return expand_to_units(ratios, stats.layer_shapes, cfg.granularity)

    refinements: list[tuple[SearchResult, np.ndarray]] = []  # each refinement and the allocation it started from
    pool: list[Start] | None = None  # made at the first restart
    done = 0  # candidates of the refinements' studies, this run's and earlier runs' (a budget counts them all)
    while True:
        spent = found.elapsed + sum(r.elapsed for r, _ in refinements)
        left_candidates = None if cfg.budget_candidates is None else max(1, rest - done)
        left_seconds = None if cfg.budget_seconds is None else max(1e-3, cfg.budget_seconds - spent)
        second = refine_config(replace(cfg, study=study.study_name), start, left_candidates, left_seconds,
                               len(refinements))
        if refinements:
            fitness.forget_parent()  # the new start's children are re-masked after its own run, not the last best's
        # The refinement's study sits in the same storage as the first (Optuna names no public accessor for it).
        refine_study = create_study(second, study._storage)
        refined = run_search(session, second, refine_study, reporter, fitness,
                             BudgetShare(before=found.evaluated + sum(r.evaluated for r, _ in refinements),
                                         hybrid=True),
                             patience=cfg.refine_patience)
        start_ratios = units(allocate(stats, start, cfg.sparsity).ratios)
        refinements.append((refined, start_ratios))
        done += len(W.study_progress(refine_study).done)
        phases.append({"space": "allocation", "evaluated": refined.evaluated, "seconds": refined.elapsed,
                       "best": refined.best.text, "best_fitness": refined.best.fitness, "start": start,
                       "converged": refined.converged})
        out_of_budget = ((cfg.budget_candidates is not None and done >= rest) or
                         (cfg.budget_seconds is not None and spent + refined.elapsed >= cfg.budget_seconds))
        if refined.stopped or not refined.converged or out_of_budget:
            break
        if pool is None:  # what the search measured at its last stage: its functions, and ATP
            pool = [Start(t.user_attrs["text"], t.value, units(t.user_attrs["ratios"]))
                    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                    if t.value < FAILED_FITNESS and t.user_attrs.get("ratios")]
            pool.append(Start(atp, atp_fitness, units(allocate(stats, atp, cfg.sparsity).ratios)))
        explored = [a for r, s in refinements for a in (s, r.best.ratios)]  # every start, and where it ended
        following = next_start(pool, explored, RESTART_LEVELS * cfg.level_step)
        if following is None:
            break
        start = following.spec
    # Every phase measured with one fitness: the result is the best of any (snapping to the level grid can cost a
    # little, so a refinement may not beat the function it started from within its budget).
    everything = found.top + [c for r, _ in refinements for c in r.top]
    top = sorted({c.text: c for c in everything}.values(), key=lambda c: c.fitness)[:cfg.top_k]
    generations = list(found.generations)
    for r, _ in refinements:
        generations += [{**g, "generation": g["generation"] + len(generations)} for g in r.generations]
    result = refinements[-1][0]
    result.top, result.best, result.generations = top, top[0], generations
    result.start_ratios = [float(x) for x in min(refinements, key=lambda r: r[0].best.fitness)[1]]
    result.phases, result.space = phases, "hybrid"
    result.evaluated = found.evaluated + sum(r.evaluated for r, _ in refinements)
    result.trials = found.trials + sum(r.trials for r, _ in refinements)
    result.elapsed = found.elapsed + sum(r.elapsed for r, _ in refinements)
    return result


def refined_from(result: SearchResult) -> str:
    """The start of the hybrid refinement that found the best allocation ("" for other searches)."""
    refinements = [p for p in result.phases if p["space"] == "allocation"]
    return min(refinements, key=lambda p: p["best_fitness"])["start"] if refinements else ""


def summarize(study: optuna.Study, cfg: SearchConfig, evaluated: int = 0, trials: int = 0, elapsed: float = 0.0,
              stopped: bool = False) -> SearchResult:
    """The study's best candidates by their fitness at the last fidelity: the first of them is the result."""
    complete = sorted(study.get_trials(states=(TrialState.COMPLETE,)), key=lambda t: (t.value, t.number))
    if not complete:
        raise DSAError("The search ended before any candidate was evaluated; give it a larger budget.")
    top, seen = [], set()
    for t in complete:
        if t.user_attrs["text"] not in seen and len(top) < cfg.top_k:
            seen.add(t.user_attrs["text"])
            top.append(Candidate(t.user_attrs["text"], t.value, t.user_attrs.get("ratios", []), []))
    return SearchResult(study=study.study_name, best=top[0], evaluated=evaluated, trials=trials, elapsed=elapsed,
                        stopped=stopped, generations=_generations(study, cfg.population), top=top, space=cfg.space)
