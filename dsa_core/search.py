"""Search for sparsity allocations on Optuna's ask/tell API: DSA's allocation functions, EvoPress-style direct
allocations, or both in turn (hybrid).

A trial is a point of a search space (dsa_core.spaces): a function (one operation per slot plus the mapping's λ)
or one sparsity level per block or linear layer. Its fitness (dsa_core.fitness) is a fast proxy measured after
re-masking from the cached score order: validation perplexity or the KL divergence from the dense model, never
the test split. With several fidelities, every candidate is measured on few tokens and only the best are promoted
to more (EvoPress's multi-step selection, as a successive-halving pruner: dsa_core.selection). Functions are bred
by dsa_core.evolution's GA (or Optuna's NSGA-II, or drawn at random), allocations by dsa_core.levels' level
switches. A hybrid search runs a function search, then refines the best function's allocation directly. What a
search is, its study and its result live beside this loop: dsa_core.search_config, dsa_core.studies (a SQLAlchemy
database, so several workers, `python -m dsa_core worker`, can share one search) and dsa_core.search_result. No UI
code here.
"""

from __future__ import annotations

import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import numpy as np
import optuna
import torch
from optuna.trial import TrialState

from dsa_core import workers as W
from dsa_core.allocation import allocate
from dsa_core.comparison import atp_beta, atp_betas, atp_spec
from dsa_core.errors import DSAError
from dsa_core.evolution import EvolutionSampler
from dsa_core.fitness import FAILED_FITNESS, FITNESS_NAMES, Fitness
from dsa_core.levels import expand_to_units
from dsa_core.reporter import Reporter, reporter_or_silent
from dsa_core.restarts import RESTART_LEVELS, Start, next_start
from dsa_core.search_config import SearchConfig
from dsa_core.search_result import Candidate, SearchEvent, SearchResult
from dsa_core.session import PruningSession
from dsa_core.spaces import AllocationSpace, FunctionSpace
from dsa_core.studies import create_study, last_stage_only, refine_name

log = logging.getLogger(__name__)

WAIT_S = 1.0  # how often a worker with nothing left to claim looks at the study again


def make_space(cfg: SearchConfig, stats) -> FunctionSpace | AllocationSpace:
    if cfg.space == "function":
        return FunctionSpace(stats, cfg.sparsity, cfg.lam_range)
    return AllocationSpace(stats, cfg.sparsity, cfg.granularity, cfg.level_step, cfg.start, cfg.refiner,
                           cfg.cma_sigma)


def search_fitness(session: PruningSession, cfg: SearchConfig) -> Fitness:
    """The fitness a search's configuration asks for, at every fidelity stage."""
    return Fitness(session, cfg.metric, cfg.sparsity, cfg.fitness, cfg.stage_windows(), cfg.last_stage,
                   cfg.zeroshot_rows, cfg.sequential_windows, cfg.rescore)


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
    first_stage = len(fitness.stages) - 1 if last_stage_only(cfg) else 0
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
