"""What a search keeps in the history, as plain JSON, whichever front end ran it: its protocol, and its results
(every candidate, the curve per generation, the best so far) built from the events it reported or rebuilt from its
Optuna study, which also holds the candidates of the workers that joined it and of earlier runs that it resumes.

No storage and no UI imports: the front ends hand these dictionaries to storage.Recorder.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import optuna
import sqlalchemy.exc
from optuna.trial import TrialState

from dsa_core.errors import DSAError
from dsa_core.fitness import FAILED_FITNESS, FITNESSES, check_kind
from dsa_core.levels import expand_to_units
from dsa_core.search_config import SearchConfig
from dsa_core.search_result import SearchEvent, SearchResult
from dsa_core.studies import refine_name


def search_protocol(cfg: SearchConfig) -> dict:
    """How a search measures its candidates, as saved with it: the fitness, its text and its fidelity stages."""
    windows = cfg.stage_windows()
    tasks = check_kind(cfg.fitness)
    if tasks:  # the command line's zero-shot fitness
        text = {"dataset": ", ".join(tasks), "split": f"{cfg.zeroshot_rows} rows per task, held out"}
    elif cfg.fitness == "ppl":
        text = {"dataset": "wikitext2", "split": "validation"}
    else:
        text = {"dataset": cfg.calib, "split": "train (the calibration windows)"}
    measure = FITNESSES["zeroshot:TASKS" if tasks else cfg.fitness]
    return {"fitness": cfg.fitness, "measure": f"{measure}, after fast re-masking", **text, "seqlen": cfg.seqlen,
            "windows": windows[-1],
            "stages": [{"tokens": w * cfg.seqlen, "windows": w} for w in windows],
            "promote": cfg.promote if len(windows) > 1 else None}


def leader(events: Sequence[SearchEvent]) -> SearchEvent:
    """The event that reported the search's best so far: an event reports the best of its own study, and a hybrid's
    refinement restarted from another start begins worse than the best found before it."""
    return min(events, key=lambda e: e.best_fitness)


def search_results(events: Sequence[SearchEvent], result: SearchResult | None = None,
                   model: Mapping | None = None) -> dict:
    """What a search stores: every candidate (the generation on one axis across a hybrid's phases, the fidelity
    stage it reached), the per-generation curve and the best candidate so far; with the `result`, the budget spent,
    the throughput per stage and, for a hybrid, its phases and the allocation the refinement started from. `model`
    (LoadedModel.describe()) gives the per-block profile of per-layer allocations and the layers' names."""
    candidates = [{"n": e.candidate, "generation": g, "text": e.text, "fitness": _fitness(e.fitness),
                   "stage": e.stage, "stages": e.stages, "phase": e.phase} for e, g in zip(events, _timeline(events))]
    out: dict = {"candidates": candidates, "generations": generations(events)}
    if events:
        best = leader(events)
        out.update(best=best.best_text, best_fitness=_fitness(best.best_fitness), best_ratios=best.best_ratios,
                   elapsed=events[-1].elapsed)
    if result is not None:
        out.update(best=result.best.text, best_fitness=_fitness(result.best.fitness), best_ratios=result.best.ratios,
                   evaluated=result.evaluated, stopped=result.stopped, elapsed=result.elapsed, space=result.space,
                   top=[{"text": c.text, "fitness": _fitness(c.fitness)} for c in result.top],
                   throughput=result.throughput, start_ratios=result.start_ratios,
                   phases=[{**p, "best_fitness": _fitness(p["best_fitness"])} for p in result.phases])
        if result.stop_reason:
            out["stop_reason"] = result.stop_reason
    shapes = _layer_shapes(model)
    if shapes and out.get("best_ratios") and len(out["best_ratios"]) != len(shapes):
        out["best_block_ratios"] = expand_to_units(out["best_ratios"], shapes, "block").tolist()
    if shapes and out.get("start_ratios") and len(out["start_ratios"]) != len(shapes):
        out["unit_labels"] = [f"{b}.{name.split('.')[-1].removesuffix('_proj')}"
                              for b, block in enumerate(model["blocks"]) for name in block["layers"]]
    return out


def _layer_shapes(model: Mapping | None) -> list[list[tuple[int, int]]] | None:
    if not model or not model.get("blocks"):
        return None
    return [[tuple(shape) for shape in block["layers"].values()] for block in model["blocks"]]


def _fitness(value: float) -> float | None:
    """A failed candidate's sentinel fitness is stored as None: it is not a measure of anything."""
    return value if math.isfinite(value) and value < FAILED_FITNESS else None


def _timeline(events: Sequence[SearchEvent]) -> list[int]:
    """Each event's generation on one axis: a hybrid's refinement (each, from its own start) is a study of its own,
    whose generations count from 0 again, so they are numbered on after those before."""
    out, offset, study, last = [], 0, None, -1
    for e in events:
        if study is not None and (e.phase, e.start) != study:
            offset = last + 1
        study = (e.phase, e.start)
        out.append(offset + e.generation)
        last = max(last, out[-1])
    return out


def generations(events: Sequence[SearchEvent]) -> list[dict]:
    """Best-so-far and mean fitness of each generation that has a successful, fully measured candidate (one that
    reached the last fidelity stage: fitnesses of lower stages are measured on fewer tokens and not comparable)."""
    by_generation: dict[int, list[float]] = {}
    phases: dict[int, str] = {}
    for e, g in zip(events, _timeline(events)):
        if e.stage == e.stages - 1 and e.fitness < FAILED_FITNESS:
            by_generation.setdefault(g, []).append(e.fitness)
            phases[g] = e.phase
    out, best = [], math.inf
    for g in sorted(by_generation):
        chunk = by_generation[g]
        best = min(best, *chunk)
        out.append({"generation": g, "best": best, "mean": sum(chunk) / len(chunk), "phase": phases[g]})
    return out


# --- from the study ---------------------------------------------------------------------------------------------


def study_events(study: optuna.Study) -> list[SearchEvent]:
    """The candidates of a search's study (and of a hybrid's refinements beside it) as the search reported them, in
    the order they were asked: every worker's and every earlier run's. A candidate stopped at a low fidelity reports
    the value it was stopped at; repeats and candidates beyond the budget are left out, as the search leaves them."""
    cfg = SearchConfig.from_dict(study.user_attrs["config"])
    studies = [study]
    while cfg.space == "hybrid":  # its refinements, from each start in turn
        try:
            studies.append(optuna.load_study(study_name=refine_name(study.study_name, len(studies) - 1),
                                             storage=study._storage))
        except KeyError:  # the next refinement has not started
            break
    out: list[SearchEvent] = []
    for one in studies:
        saved = SearchConfig.from_dict(one.user_attrs["config"])
        phase = "allocation" if saved.space == "allocation" else "function"
        stages = len(saved.stage_windows())
        trials = one.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
        started = min((t.datetime_start for t in trials if t.datetime_start), default=None)
        best = None
        for t in sorted(trials, key=lambda t: t.number):
            if "text" not in t.user_attrs or "stage" not in t.user_attrs or "skipped" in t.user_attrs:
                continue
            if t.state == TrialState.COMPLETE:
                value = t.value
                if best is None or value < best.value:
                    best = t
            else:
                value = t.intermediate_values[max(t.intermediate_values)] if t.intermediate_values else FAILED_FITNESS
            elapsed = (t.datetime_complete - started).total_seconds() if started and t.datetime_complete else 0.0
            out.append(SearchEvent(
                candidate=t.number, generation=t.number // saved.population, text=t.user_attrs["text"], fitness=value,
                best_text=best.user_attrs["text"] if best else "", best_fitness=best.value if best else math.inf,
                best_ratios=best.user_attrs.get("ratios", []) if best else [], elapsed=elapsed, cached=False,
                stage=t.user_attrs["stage"], stages=stages, phase=phase,
                start=saved.start if phase == "allocation" else ""))
    return out


def study_reader(url: str | None) -> optuna.storages.BaseStorage | None:
    """The studies of the database at `url`, opened to read them (creating no table); None when it holds none."""
    if url is None:
        return None
    try:
        return optuna.storages.RDBStorage(url, skip_table_creation=True)
    except (optuna.exceptions.OptunaError, sqlalchemy.exc.SQLAlchemyError):
        return None


def study_results(name: str, storage: optuna.storages.BaseStorage, model: Mapping | None = None) -> dict | None:
    """A search's results rebuilt from its study (see `study_events`); None when the storage holds no such study, or
    one this version cannot read."""
    try:
        study = optuna.load_study(study_name=name, storage=storage)
        return search_results(study_events(study), model=model)
    except (KeyError, DSAError, optuna.exceptions.OptunaError, sqlalchemy.exc.SQLAlchemyError):
        return None
