"""The search on a tiny random model: budgets, memo, events, cancel, resume, reproducibility, the three spaces
(functions, direct allocations, hybrid), the KL fitness, staged selection, re-ranking, the references, the
faithful table, the CLI (and its record in the history), and two worker processes sharing one SQLite study."""

import json
import signal
import subprocess
import sys
import time
from dataclasses import replace

import numpy as np
import optuna
import pytest
import torch
from optuna.trial import TrialState

from dsa_core import comparison, functions, restarts, search
from dsa_core.allocation import allocate
from dsa_core.errors import ConfigError
from dsa_core.fitness import Fitness
from dsa_core.levels import LevelGrid, unit_sizes
from dsa_core.models import load_model
from dsa_core.reporter import EventLog, Reporter
from dsa_core.search_config import SAMPLERS, SearchConfig
from dsa_core.search_record import search_results, study_events, study_reader
from dsa_core.search_result import Candidate, SearchResult
from dsa_core.session import PruningSession
from dsa_core.studies import create_study, load_study, refine_name
from storage import History, open_database
from ui import experiments

QUICK = dict(model="random:tiny", nsamples=2, seqlen=64, data_source="local", device="cpu", population=4,
             fitness_windows=2, final_eval_windows=2, top_k=2)


@pytest.fixture(scope="module")
def session():
    return PruningSession(load_model("random:tiny", device="cpu"), nsamples=2, seqlen=64, data_source="local")


def texts(study: optuna.Study) -> list[str]:
    return [t.user_attrs["text"] for t in study.get_trials(states=(TrialState.COMPLETE,))]


def test_budget_counts_distinct_functions_and_events_track_the_best(session):
    cfg = SearchConfig(**QUICK, budget_candidates=10, seed=1).validate()
    log, study = EventLog(), create_study(cfg)
    result = search.run_search(session, cfg, study, log)
    events = log.events
    assert len(set(texts(study))) == 10 == result.evaluated
    assert {e.text for e in events} == set(texts(study))
    assert result.best.fitness == min(e.fitness for e in events)
    assert [e.best_fitness for e in events] == sorted((e.best_fitness for e in events), reverse=True)
    assert len(events[-1].best_ratios) == 4 and events[-1].best_text == result.best.text
    assert result.generations and result.generations[0]["best"] >= result.best.fitness
    assert (log.done, log.total) == (10, 10) and "candidates" in log.phase  # the reporter's count of the budget
    stored = json.loads(json.dumps(result.to_dict()))
    assert stored["kind"] == "search" and SearchResult.from_dict(stored) == result
    assert session.achieved_sparsity()[0] < 0.01  # the session is dense again afterwards


def test_a_budget_in_seconds_reports_the_time_left(session):
    cfg = SearchConfig(**QUICK, budget_candidates=None, budget_seconds=30.0, seed=1).validate()

    class Stop(Reporter):
        def on_event(self, e):
            if e.candidate >= 1:
                self.cancel()

    reporter = Stop()
    search.run_search(session, cfg, create_study(cfg), reporter)
    assert 0 < reporter.eta() < 30


def test_memo_scores_a_repeated_function_once(session):
    fitness = Fitness(session, "wanda", 0.5, "ppl", [2])
    fn = functions.DSA_PRESET
    first, again = fitness(fn), fitness(functions.parse(functions.to_text(fn)))
    assert first == again and len(fitness.memo) == 1
    session.restore()


def test_stop_keeps_what_was_found(session):
    cfg = SearchConfig(**QUICK, budget_candidates=50).validate()
    study = create_study(cfg)

    class StopAfterTwo(Reporter):
        def on_event(self, e):
            if e.candidate >= 2:
                self.cancel()

    result = search.run_search(session, cfg, study, StopAfterTwo())
    assert result.stopped and 1 <= result.evaluated < 50
    assert result.best.text in texts(study)


def _runs_out_of_memory_after(fitness: Fitness, measures: int) -> None:
    """Make the fitness's last stage raise CUDA's out-of-memory error from its `measures`+1-th call on."""
    measure, calls = fitness.stages[-1], []

    def failing():
        calls.append(1)
        if len(calls) > measures:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 512.00 MiB.")
        return measure()

    fitness.stages[-1] = failing


def test_a_gpu_out_of_memory_stops_the_search_with_a_sentence_and_keeps_what_it_found(session):
    cfg = SearchConfig(**QUICK, budget_candidates=20, seed=1).validate()
    fitness = search.search_fitness(session, cfg)
    _runs_out_of_memory_after(fitness, 3)
    study = create_study(cfg)
    result = search.run_search(session, cfg, study, fitness=fitness)
    assert result.stopped and result.evaluated == 3 and "ran out of memory" in result.stop_reason
    assert [t.state for t in study.trials][-1] == TrialState.FAIL  # resuming measures that candidate again
    assert result.best.text in texts(study)
    assert session.achieved_sparsity()[0] < 0.01  # the dense weights are back

    nothing = search.search_fitness(session, cfg)
    _runs_out_of_memory_after(nothing, 0)
    with pytest.raises(search.DSAError, match="ran out of memory"):
        search.run_search(session, cfg, create_study(cfg), fitness=nothing)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_same_seed_same_search(session, sampler):
    runs = []
    for _ in range(2):
        cfg = SearchConfig(**QUICK, sampler=sampler, budget_candidates=8, seed=7).validate()
        study = create_study(cfg)
        search.run_search(session, cfg, study)
        runs.append([(t.user_attrs["text"], t.value) for t in study.get_trials(states=(TrialState.COMPLETE,))])
    assert runs[0] == runs[1]


def test_faithful_table_reports_references_and_candidates_in_one_run(session):
    cfg = SearchConfig(**QUICK, budget_candidates=2).validate()
    per_layer = Candidate("levels:...", 1.0, [0.3] * 14 + [0.7] * 14, [])
    rows = comparison.faithful_table(session, cfg, ["W:(NO_OP)-(MEAN)-(NEG)", per_layer])
    assert [r["label"] for r in rows] == ["uniform", "owl", "alpha", "atp", "dsa preset", "searched #1",
                                          "searched #2"]
    assert all(r["ppl"] > 1 for r in rows) and len(rows[-1]["ratios"]) == 28
    assert session.achieved_sparsity()[0] < 0.01  # the session is dense again afterwards


def test_atp_searches_its_one_parameter_on_the_fitness(session):
    fitness = Fitness(session, "wanda", 0.5, "ppl", [2])
    beta = comparison.atp_beta(fitness, 0.5)
    tried = {k: v for k, v in fitness.memo.items() if k.startswith("atp")}
    assert len(tried) >= 5  # β = 0.002, 0.004, … while the progression stays legal
    assert beta == 0 and fitness("uniform") <= min(tried.values()) or fitness(f"atp:beta={beta:g}") == min(
        [fitness("uniform"), *tried.values()])
    refs = dict(comparison.references(session, SearchConfig(**QUICK, sparsity=0.5), fitness))
    assert refs["atp"] == f"atp:beta={beta:g}" and set(refs) == {"uniform", "owl", "alpha", "atp", "dsa preset"}
    session.restore()


def test_a_hybrids_atp_start_scans_beta_on_the_cheap_stage_and_decides_on_the_last(session):
    fitness = Fitness(session, "wanda", 0.5, "kl", [1, 2])
    cheap = comparison.atp_betas(fitness, 0.5, stage=0)
    assert len(cheap) >= 5 and fitness.memo == {}  # scanned on the first stage: nothing measured on the last yet
    beta = search.atp_start(fitness, 0.5, None)
    finalists = cheap[: search.ATP_FINALISTS]
    assert beta in finalists and len(fitness.memo) == search.ATP_FINALISTS  # only those reach the last stage
    assert fitness(comparison.atp_spec(beta)) == min(fitness(comparison.atp_spec(b)) for b in finalists)
    session.restore()


def test_kl_fitness_is_zero_for_the_dense_model_and_positive_when_pruned(session):
    fitness = Fitness(session, "wanda", 0.5, "kl", [1, 2])
    assert fitness.stages[1]() == 0.0  # the dense model against its own cached logits
    assert fitness.measure("uniform", np.full(4, 0.5), 0) > 0
    assert fitness.measure("uniform", np.full(4, 0.5), 1) > 0
    more = fitness.measure("more", np.full(4, 0.9), 0)
    assert more > fitness.measure("uniform", np.full(4, 0.5), 0)
    session.restore()
    assert fitness.stages[0]() == 0.0


@pytest.mark.parametrize("metric", ["wanda", "sparsegpt"])
def test_a_sequential_last_stage_measures_the_model_as_it_is_finally_pruned(session, metric):
    ratios = np.array([0.3, 0.5, 0.7, 0.9])
    fitness = Fitness(session, metric, 0.6, "kl", [1, 2], last_stage="sequential")
    first, last = fitness.measure("a", ratios, 0), fitness.measure("a", ratios, 1)
    # As the fitness prunes on this device: SparseGPT's solved column loop on a GPU, its reference loop on a CPU.
    session.prune_sequential(ratios, metric, exact=session.lm.device.type != "cuda")
    assert last == fitness.stages[1]()  # what sequential pruning gives, measured on the last stage's tokens
    session.prune_sequential(ratios, metric)
    assert fitness.stages[1]() == pytest.approx(last, rel=1e-3)  # as the result is pruned, up to rounding
    masked = Fitness(session, metric, 0.6, "kl", [1, 2])
    assert first == masked.measure("a", ratios, 0)  # the stages before it still re-mask from the dense scores
    assert masked.measure("a", ratios, 1) != last
    assert fitness.measure("a", ratios, 1) == last  # pruned again after another pruning took its place
    session.restore()


def test_a_sequential_last_stage_resumes_from_kept_runs_and_measures_the_same(session, monkeypatch):
    from dsa_core import fitness as fit

    children = [np.array([0.5, 0.6, 0.7, 0.6]), np.array([0.6, 0.5, 0.6, 0.7]), np.array([0.6, 0.6, 0.5, 0.7])]
    reusing = Fitness(session, "wanda", 0.6, "kl", [1, 2], last_stage="sequential")
    values = [reusing.measure(f"c{i}", r, 1) for i, r in enumerate([np.full(4, 0.6), *children])]
    assert reusing.kept.blocks[1] > 0  # some blocks came from a kept run
    monkeypatch.setattr(fit, "KEPT_RUNS_SHARE", 0.0)  # no memory for kept runs: every block pruned afresh
    fresh = Fitness(session, "wanda", 0.6, "kl", [1, 2], last_stage="sequential")
    assert [fresh.measure(f"c{i}", r, 1) for i, r in enumerate([np.full(4, 0.6), *children])] == values
    assert not fresh.kept.enabled and fresh.kept.best is None and fresh.kept.blocks[1] == 0
    session.restore()


@pytest.mark.parametrize("metric,kept_share", [("wanda", None), ("wanda", 0.0), ("sparsegpt", None)])
def test_rescored_stages_re_mask_on_the_best_sequential_run_so_far(session, monkeypatch, metric, kept_share):
    """Runs kept to resume from carry the statistics, or (no memory for kept runs) runs of statistics alone do."""
    from dsa_core import fitness as fit

    if kept_share is not None:
        monkeypatch.setattr(fit, "KEPT_RUNS_SHARE", kept_share)
    parent, child, worse = np.full(4, 0.6), np.array([0.6, 0.6, 0.5, 0.7]), np.array([0.9, 0.3, 0.9, 0.3])
    fitness = Fitness(session, metric, 0.6, "kl", [1, 2], last_stage="sequential", rescore=True)
    dense_scored = fitness.measure("child", child, 0)  # no sequential run yet: the dense model's scores
    assert fitness.basis is None and dense_scored == Fitness(session, metric, 0.6, "kl", [1, 2]).measure("c", child, 0)
    best = fitness.measure("parent", parent, 1)
    sequential = [m.weight.clone() for i in range(4) for m in session.lm.linear_layers(i).values()]
    assert fitness.basis == best
    assert fitness.measure("child", child, 0) != dense_scored
    fitness.measure("parent", parent, 0)  # re-masked on its own run: its sequential weights
    now = [m.weight for i in range(4) for m in session.lm.linear_layers(i).values()]
    assert all(torch.allclose(a, b, rtol=0, atol=1e-5 if metric == "sparsegpt" else 0) for a, b in zip(sequential, now))
    assert fitness.measure("worse", worse, 1) > best and fitness.basis == best  # a worse run is no new basis
    assert (fitness.kept.best is not None) == (kept_share is None)
    fitness.forget_parent()  # a restarted refinement: its own start is the parent, however it compares
    assert fitness.measure("worse again", worse, 1) > best and fitness.basis > best
    assert (fitness.kept.best is not None and fitness.kept.best[0] == fitness.basis) == (kept_share is None)
    session.restore()
    for change, message in [(dict(metric="magnitude"), "reads no inputs"),
                            (dict(last_stage="masked"), "last-stage sequential")]:
        with pytest.raises(ConfigError, match=message):
            SearchConfig(**{**QUICK, "last_stage": "sequential", **change}, rescore=True).validate()


def test_a_sequential_last_stage_is_a_search_setting_and_its_result_is_the_sequential_measure(session):
    cfg = SearchConfig(**QUICK, space="allocation", fitness="kl", fidelity="64,128", promote=2,
                       budget_candidates=6, sparsity=0.6, last_stage="sequential").validate()
    result = search.run_search(session, cfg, create_study(cfg))
    check = search.search_fitness(session, cfg)  # its dense logits first
    session.prune_sequential(np.asarray(result.best.ratios), "wanda")
    assert result.best.fitness == check.stages[1]()
    with pytest.raises(ConfigError, match="Unknown last stage"):
        SearchConfig(**QUICK, last_stage="faithful").validate()
    session.restore()


def test_a_sequential_last_stage_on_fewer_windows_prunes_on_the_first_ones():
    four = PruningSession(load_model("random:tiny", device="cpu"), nsamples=4, seqlen=64, data_source="local",
                          batch_size=1)
    ratios = np.array([0.3, 0.5, 0.7, 0.9])
    fewer = Fitness(four, "wanda", 0.6, "kl", [1], last_stage="sequential", sequential_windows=2)
    value = fewer.measure("a", ratios, 0)
    four.prune_sequential(ratios, "wanda", windows=2)
    assert value == fewer.stages[0]()
    four.restore()  # a new session keeps the weights it finds as its dense ones
    two = PruningSession(four.lm, nsamples=2, seqlen=64, data_source="local", batch_size=1)
    two.prune_sequential(ratios, "wanda")  # the same seed draws the same first windows
    assert value == fewer.stages[0]()
    four.prune_sequential(ratios, "wanda")  # on all four: other masks
    assert value != fewer.stages[0]()
    four.restore()
    with pytest.raises(ConfigError, match="1 to 4 windows"):
        Fitness(four, "wanda", 0.6, "kl", [1], last_stage="sequential", sequential_windows=5)
    with pytest.raises(ConfigError, match="1 to 2 windows"):
        SearchConfig(**QUICK, last_stage="sequential", sequential_windows=3).validate()


def test_kl_fidelity_beyond_the_calibration_windows_is_refused(session):
    with pytest.raises(ConfigError, match="calibration windows"):
        Fitness(session, "wanda", 0.5, "kl", [1, 3])  # the session has 2 calibration windows


@pytest.mark.parametrize("space,granularity,units", [("function", "block", 4), ("allocation", "block", 4),
                                                     ("allocation", "projection", 28), ("hybrid", "block", 4)])
def test_every_space_meets_the_target_and_counts_its_budget(session, space, granularity, units):
    cfg = SearchConfig(**{**QUICK, "nsamples": 2}, space=space, granularity=granularity, fitness="kl",
                       fidelity="64,128", promote=2, budget_candidates=12, seed=4, sparsity=0.6).validate()
    log, study = EventLog(), create_study(cfg)
    result = search.run_search(session, cfg, study, log)
    events = log.events
    assert result.evaluated == 12 and len({e.text for e in events}) == 12
    sizes = session.stats("wanda").params if units == 4 else _layer_sizes(session)
    for c in result.top:
        assert len(c.ratios) == units
        assert np.average(c.ratios, weights=sizes) == pytest.approx(0.6, abs=1e-9)
    stages = [e.stage for e in events]
    assert stages.count(1) < stages.count(0) + stages.count(1)  # some stopped at the first fidelity
    assert result.throughput[0]["evaluated"] == 12 and result.throughput[1]["evaluated"] < 12
    assert result.best.fitness == min(e.fitness for e in events if e.stage == 1)
    assert session.achieved_sparsity()[0] < 0.01


def _layer_sizes(session) -> list[int]:
    return [o * i for block in session.stats("wanda").layer_shapes for o, i in block]


def test_hybrid_refines_the_best_function_and_says_how_far_it_moved(session):
    cfg = SearchConfig(**QUICK, space="hybrid", budget_candidates=10, seed=2, study="hy").validate()
    study = create_study(cfg)
    log = EventLog()
    result = search.run_search(session, cfg, study, log)
    events = log.events
    assert [p["space"] for p in result.phases] == ["function", "allocation"]
    assert log.done == log.total == 10 and log.phase.startswith("allocation phase, ")  # counted over both phases
    assert [p["evaluated"] for p in result.phases] == [5, 5] and result.evaluated == 10
    assert {e.phase for e in events} == {"function", "allocation"}
    function_best, refine = result.phases
    # The refinement starts from the better of the best function and ATP with its β searched on the same fitness.
    atp = f"atp:beta={comparison.atp_beta(Fitness(session, 'wanda', 0.7, 'ppl', [2]), 0.7):g}"
    assert refine["start"] in (function_best["best"], atp)
    assert {e.start for e in events if e.phase == "allocation"} == {refine["start"]}
    assert result.best.fitness == min(function_best["best_fitness"], refine["best_fitness"])  # the best of both
    start = np.asarray(result.start_ratios)
    assert np.allclose(start, search.allocate(session.stats("wanda"), refine["start"], 0.7).ratios, atol=0.006)
    assert len(result.best.ratios) == len(start) == 4


def test_a_hybrid_refinement_that_stops_improving_restarts_from_a_distant_start(session):
    """With --refine-patience, a refinement that measured that many candidates in a row without a better one gives the
    rest of the budget to a new refinement, in a study of its own, from the best allocation measured (a function
    or ATP's) that lies a few levels from every start refined so far and where it ended; the result is the best of
    every phase; run again, the search resumes where it stopped, with the same phases."""
    cfg = SearchConfig(**QUICK, space="hybrid", budget_candidates=40, seed=3, study="restarts",
                       refine_patience=3).validate()
    study = create_study(cfg)
    log = EventLog()
    result = search.run_search(session, cfg, study, log)
    spaces = [p["space"] for p in result.phases]
    assert spaces[0] == "function" and set(spaces[1:]) == {"allocation"} and len(spaces) >= 3  # it restarted
    refinements = result.phases[1:]
    assert all(p["converged"] for p in refinements[:-1])
    assert sum(p["evaluated"] for p in result.phases) == result.evaluated == 40 == log.done  # one budget for all
    stats = session.stats("wanda")
    names = [refine_name("restarts", k) for k in range(len(refinements))]
    assert names[:2] == ["restarts:refine", "restarts:refine2"]
    explored = []
    for name, p in zip(names, refinements):
        best = optuna.load_study(study_name=name, storage=study._storage).best_trial
        assert (best.user_attrs["text"], best.value) == (p["best"], p["best_fitness"])
        start = allocate(stats, p["start"], 0.7).ratios
        assert all(np.mean(np.abs(start - e)) >= restarts.RESTART_LEVELS * cfg.level_step for e in explored)
        explored += [start, np.asarray(best.user_attrs["ratios"])]
    assert len({p["start"] for p in refinements}) == len(refinements)
    assert result.best.fitness == min(p["best_fitness"] for p in result.phases)
    assert search.refined_from(result) == min(refinements, key=lambda p: p["best_fitness"])["start"]
    winner = allocate(stats, search.refined_from(result), 0.7).ratios
    assert np.allclose(result.start_ratios, winner, atol=0.006)  # the chart's "moved" is from the winner's start
    assert {e.start for e in log.events if e.phase == "allocation"} == {p["start"] for p in refinements}
    # Live, the best so far never gets worse, though each restart begins worse than the best before it.
    assert search_results(log.events)["best_fitness"] == pytest.approx(result.best.fitness)
    saved = study_events(study)  # what History reads back: the candidates of every refinement too
    assert [(e.text, e.start) for e in saved] == [(e.text, e.start) for e in log.events]
    axis = [c["generation"] for c in search_results(saved)["candidates"]]
    assert axis == sorted(axis)  # each refinement's generations follow the one before's on the chart
    from ui.tab_search import finished_text  # the Search tab's status line counts the starts

    n = len(refinements)
    assert f"({result.phases[0]['evaluated']} functions, then {40 - result.phases[0]['evaluated']} allocations " \
           f"from {n} starts)" in finished_text(result, "ppl")
    again = search.run_search(session, cfg, study, EventLog())  # the same budget, spent already
    assert again.evaluated == 0 and [p["start"] for p in again.phases[1:]] == [p["start"] for p in refinements]
    assert again.best.fitness == result.best.fitness


def test_a_cma_refinement_measures_its_start_first_then_generations_at_the_last_stage_and_resumes(session, tmp_path):
    """--refiner cma: CMA-ES draws each unit's move from the start. The start is measured first; every candidate
    meets the target and is measured at the last stage alone (a staged selection would leave CMA-ES's generation to
    the cheap stages); the optimizer is told each generation; a saved study resumes where its optimizer stood."""
    url = f"sqlite:///{tmp_path / 'cma.db'}"
    cfg = SearchConfig(**QUICK, space="allocation", refiner="cma", fitness="kl", fidelity="64,128", promote=2,
                       budget_candidates=12, seed=5, sparsity=0.6, study="cma").validate()
    study = create_study(cfg, url)
    log = EventLog()
    result = search.run_search(session, cfg, study, log)
    stats = session.stats("wanda")
    grid = LevelGrid(unit_sizes(stats.layer_shapes, "block"), 0.6)
    assert log.events[0].text == grid.key(grid.snap(np.full(4, 0.6)))  # the start: uniform
    assert result.evaluated == 12 and len({e.text for e in log.events}) == 12
    assert {e.stage for e in log.events} == {1} and [t["evaluated"] for t in result.throughput] == [0, 12]
    for e in log.events:
        assert np.average(e.best_ratios, weights=stats.params) == pytest.approx(0.6, abs=1e-9)
    generation = [t.system_attrs.get("cma:generation") for t in study.get_trials(states=(TrialState.COMPLETE,))]
    assert generation[0] is None and generation[1:] == sorted(generation[1:]) and generation[-1] >= 1  # told once
    resumed, saved = load_study("cma", url)
    saved.budget_candidates = 20
    again = search.run_search(session, saved, resumed)
    later = [t.system_attrs.get("cma:generation") for t in resumed.get_trials(states=(TrialState.COMPLETE,))][12:]
    assert again.evaluated == 8 and min(later) >= generation[-1]  # the saved optimizer went on


def test_a_hybrid_with_the_cma_refiner_refines_the_best_function_at_the_last_stage(session):
    cfg = SearchConfig(**QUICK, space="hybrid", refiner="cma", cma_sigma=2.0, fitness="kl", fidelity="64,128",
                       promote=2, budget_candidates=14, seed=2, study="hycma").validate()
    log = EventLog()
    study = create_study(cfg)
    result = search.run_search(session, cfg, study, log)
    refined = optuna.load_study(study_name=refine_name("hycma"), storage=study._storage)
    moves = refined.trials[-1].distributions["z0"]
    assert (moves.low, moves.high) == (-6.0, 6.0)  # three first standard deviations of --cma-sigma either way
    assert [p["space"] for p in result.phases] == ["function", "allocation"] and result.evaluated == 14
    function_stages = {e.stage for e in log.events if e.phase == "function"}
    assert function_stages == {0, 1}  # the functions go through the staged selection
    assert {e.stage for e in log.events if e.phase == "allocation"} == {1}
    start = result.phases[1]["start"]
    first = next(e for e in log.events if e.phase == "allocation")
    grid = LevelGrid(unit_sizes(session.stats("wanda").layer_shapes, "block"), 0.7)
    assert first.text == grid.key(grid.snap(allocate(session.stats("wanda"), start, 0.7).ratios))


def test_a_hybrid_whose_functions_took_the_whole_budget_still_measures_their_allocation(session):
    cfg = SearchConfig(**QUICK, space="hybrid", budget_candidates=None, budget_seconds=0.2, seed=1).validate()

    class Slow(Reporter):
        def on_event(self, e):  # the first function outlasts the whole budget: no time is left to refine it
            time.sleep(0.3)

    result = search.run_search(session, cfg, create_study(cfg), Slow())
    assert [(p["space"], p["evaluated"]) for p in result.phases] == [("function", 1), ("allocation", 1)]
    assert result.best.fitness <= result.phases[0]["best_fitness"]  # the best of both phases


def test_rerank_orders_the_top_by_a_larger_validation_check(session):
    cfg = SearchConfig(**{**QUICK, "top_k": 3}, budget_candidates=6, rerank_tokens=192).validate()
    result = comparison.rerank(session, cfg, search.run_search(session, cfg, create_study(cfg)))
    checks = [c.rerank for c in result.top]
    assert checks == sorted(checks) and result.best is result.top[0] and checks[0] > 1


def test_rerank_final_orders_the_top_by_the_fitness_after_pruning_as_the_result_is(session):
    """The search's own last stage (KL on 128 tokens, re-masked from the dense scores), re-measured on each of the
    top-k pruned sequentially on every calibration window: the values a user's result would have, in order."""
    cfg = SearchConfig(**{**QUICK, "top_k": 3}, space="allocation", fitness="kl", fidelity="64,128",
                       promote=2, budget_candidates=12, rerank_final=True).validate()
    fitness = search.search_fitness(session, cfg)
    result = comparison.rerank(session, cfg, search.run_search(session, cfg, create_study(cfg), None, fitness),
                               fitness)
    assert len(result.top) == 3 and result.best is result.top[0]
    checks = [c.rerank for c in result.top]
    assert checks == sorted(checks)
    for c in result.top:  # each re-measured as it will be pruned, which re-masking does not do
        session.prune_sequential(np.asarray(c.ratios), "wanda")
        assert fitness.stages[-1]() == pytest.approx(c.rerank, rel=1e-6)
    assert any(c.rerank != pytest.approx(c.fitness, rel=1e-6) for c in result.top)
    session.restore()


def test_rerank_final_reranks_atps_best_betas_alike(session, monkeypatch):
    """ATP's k best values of β by the fitness (its one-parameter scan, stubbed here) go through the same re-ranking
    as the search's top-k: the reference is the best of them after the final pruning."""
    cfg = SearchConfig(**{**QUICK, "top_k": 3}, sparsity=0.7, fitness="kl", fidelity="64",
                       rerank_final=True).validate()
    fitness = search.search_fitness(session, cfg)
    scanned = [0.01, 0.0, 0.02, 0.004]  # best first; the fourth is beyond the top 3
    monkeypatch.setattr(comparison, "atp_betas", lambda f, target: scanned)
    pruned = {b: fitness.measure_pruned(allocate(fitness.stats, comparison.atp_spec(b), 0.7).ratios)
              for b in scanned[:3]}
    refs = dict(comparison.references(session, cfg, fitness))
    assert refs["atp"] == f"atp:beta={min(pruned, key=pruned.get):g}"
    assert session.achieved_sparsity()[0] < 0.01


def run_cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dsa_core", *args], capture_output=True, text=True, timeout=timeout)


CLI = ["--model", "random:tiny", "--nsamples", "2", "--seqlen", "64", "--device", "cpu", "--data-source", "local",
       "--population", "4", "--fitness-windows", "2", "--final-eval-windows", "2", "--top-k", "1"]


def test_cli_search_prints_best_function_and_baselines(tmp_path):
    out = run_cli("search", *CLI, "--sparsity", "0.6", "--budget-candidates", "6", "--seed", "2", "--json",
                  "--storage", f"sqlite:///{tmp_path / 'h.db'}")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    functions.parse(result["best"])
    assert result["evaluated"] == 6 and result["test_ppl"] > 1
    assert set(result["baselines"]) == {"uniform", "owl", "alpha", "atp", "dsa preset"}


def test_cli_allocation_search_per_layer_with_kl_and_stages(tmp_path):
    out = run_cli("search", *CLI, "--sparsity", "0.6", "--budget-candidates", "6", "--space", "allocation",
                  "--granularity", "projection", "--fitness", "kl", "--fidelity", "64,128", "--no-final", "--json",
                  "--storage", f"sqlite:///{tmp_path / 'h.db'}")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["space"] == "allocation" and result["best"].startswith("levels:")
    assert len(result["best_ratios"]) == 28 and result["evaluated"] == 6
    assert [t["tokens"] for t in result["throughput"]] == [64, 128]


def test_ctrl_c_stops_after_the_candidate_in_flight_and_exits_130_with_one_line(tmp_path):
    url = f"sqlite:///{tmp_path / 'h.db'}"
    proc = subprocess.Popen([sys.executable, "-m", "dsa_core", "search", *CLI, "--budget-candidates", "10000",
                             "--study", "cut", "--storage", url, "--no-final"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline:  # until a few candidates are in
        time.sleep(1)
        try:
            if len(optuna.load_study(study_name="cut", storage=url).get_trials(states=(TrialState.COMPLETE,))) >= 3:
                break
        except KeyError:
            pass
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("interrupted: the study keeps every candidate measured")
    trials = optuna.load_study(study_name="cut", storage=url).get_trials()
    assert not [t for t in trials if t.state == TrialState.RUNNING]  # the one in flight was finished and told
    assert len([t for t in trials if t.state == TrialState.COMPLETE]) >= 3


def test_two_workers_share_one_study(tmp_path):
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    # A budget of seconds, which each worker counts from its own start: with one of candidates, the worker that
    # loaded first could evaluate them all before the other had loaded (both must take part).
    cfg = SearchConfig(**QUICK, budget_candidates=None, budget_seconds=8, study="shared", seed=5)
    create_study(cfg, url)
    workers = [subprocess.Popen([sys.executable, "-m", "dsa_core", "worker", "--study", "shared", "--storage", url],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [w.communicate(timeout=300) for w in workers]
    assert all(w.returncode == 0 for w in workers), [e for _, e in outs]
    reports = [json.loads(o.strip().splitlines()[-1]) for o, _ in outs]
    assert all(r["evaluated"] >= 1 for r in reports), reports  # both took part
    study = optuna.load_study(study_name="shared", storage=url)
    assert len(set(texts(study))) >= 12
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.FAIL))


def test_cli_search_is_recorded_in_history_linked_to_its_study(tmp_path):
    """The study lives in the history database (the default), the record names it, and History reads a search that
    is still running (or that workers joined) from the study."""
    url = f"sqlite:///{tmp_path / 'h.db'}"
    out = run_cli("search", *CLI, "--sparsity", "0.6", "--budget-candidates", "6", "--no-final", "--json",
                  "--history", url)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    record = History(open_database(url)).get(result["history_id"])
    assert (record.kind, record.status, record.results["study"]) == ("search", "done", result["study"])
    assert record.results["best"] == result["best"] and len(record.results["candidates"]) == 6
    assert record.protocol["fitness"] == "ppl" and record.environment["torch"]
    assert {"search", "profiles"} <= set(experiments.charts(record))
    running = replace(record, status="running", results={"study": result["study"]})  # as read mid-search
    (live,) = experiments.refreshed([running], study_reader(url))
    assert [c["text"] for c in live.results["candidates"]] == [c["text"] for c in record.results["candidates"]]
    assert live.results["best"] == result["best"] and "search" in experiments.charts(live)
