"""Command line of the search: `python -m dsa_core search ...` and `python -m dsa_core worker ...`.

`search` creates (or resumes) a study, runs it, re-evaluates the best functions faithfully and prints the
table, recording the run in the history (--history URL, --no-history), linked to its study when the study lives there
(the default); `worker` joins an existing study by name and storage URL and evaluates candidates until its budget
is spent. `search --workers all` and `worker --gpus all` start one worker process per GPU (dsa_core.workers).
Both are thin wrappers over dsa_core.search.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import ExitStack

from cli.options import add_options, values
from cli.output import print_result
from cli.progress import TerminalReporter
from dsa_core.errors import ConfigError
from dsa_core.search_config import SearchConfig
from storage.recorder import add_history_options, recorder_from_args


def default_storage() -> str:
    """The history database's URL: searches and experiments live side by side."""
    from storage.db import database_url

    return database_url()


def add_search_parsers(sub) -> None:
    s = sub.add_parser("search", help="search for a sparsity allocation: functions, direct allocations, or both")
    add_options(s, SearchConfig, budget_candidates={"default": None})
    s.add_argument("--no-final", action="store_true", help="skip the faithful re-evaluation")
    s.add_argument("--storage", default=None, help="SQLAlchemy URL (default: the history database)")
    s.add_argument("--workers", default=None, help="evaluate in worker processes: 'all' (one per GPU) or a number")
    s.add_argument("--json", action="store_true")
    add_history_options(s)
    w = sub.add_parser("worker", help="join a search and evaluate its candidates")
    w.add_argument("--study", required=True)
    w.add_argument("--storage", default=None, help="SQLAlchemy URL of the study (default: the history database, where "
                   "the web app's searches and the command line's keep theirs)")
    w.add_argument("--device", default=None)
    w.add_argument("--gpus", default=None, help="start several workers: 'all' (one per GPU) or a number")


def _session(cfg: SearchConfig):
    from dsa_core.config import EvalConfig
    from dsa_core.pipeline import open_session
    from dsa_core.settings import setup_of

    return open_session(EvalConfig(**setup_of(cfg), metric=cfg.metric))


def _print_candidate(e) -> None:
    best = e.best_text if len(e.best_text) <= 80 else e.best_text[:77] + "..."
    print(f"{e.phase:<10} candidate {e.candidate:4d} gen {e.generation:3d} stage {e.stage + 1}/{e.stages} "
          f"fitness {e.fitness:10.4g}  best {e.best_fitness:10.4g}  {best}", file=sys.stderr)


INTERRUPTED = 130  # the shell's exit code for Ctrl-C


def _interruptible(reporter: TerminalReporter, search):
    """`search()` with Ctrl-C cancelling its reporter (dsa_core.workers.ctrl_c_stops); None, with one line said,
    when it did: what it found stays in its study, to resume."""
    from dsa_core.errors import DSAError
    from dsa_core.workers import ctrl_c_stops

    try:
        with ctrl_c_stops(reporter.stop):
            result = search()
    except DSAError:
        if not reporter.cancelled:
            raise
        result = None  # stopped before its first candidate was measured
    if not reporter.cancelled:
        return result
    print("interrupted: the study keeps every candidate measured; run the same command to resume", file=sys.stderr)
    return None


def search_command(args: argparse.Namespace) -> int:
    # The search is recorded from the moment its study exists (`_search` enters it on this stack): whatever ends
    # the command ends the record, done, failed or cancelled (storage.recorder).
    with ExitStack() as recording:
        return _search(args, recording)


def _recording(run, study, link: dict, quiet: bool):
    """What the search's reporter does with each candidate: print it (unless `quiet`), and write the record's partial
    results, rebuilt from the study (the workers' candidates and a resumed study's earlier ones too), once per
    generation."""
    from dsa_core.search_record import search_results, study_events

    generation = None

    def record(event) -> None:
        nonlocal generation
        if not quiet:
            _print_candidate(event)
        if event.generation != generation:
            generation = event.generation
            run.progress({**search_results(study_events(study)), **link})
    return record


def _search(args: argparse.Namespace, recording: ExitStack) -> int:
    from dsa_core.comparison import faithful_table, rerank
    from dsa_core.errors import Cancelled
    from dsa_core.fitness import check_kind
    from dsa_core.pipeline import environment, oom_as_error
    from dsa_core.search import run_search, search_fitness, summarize
    from dsa_core.search_record import search_protocol, search_results, study_events
    from dsa_core.studies import create_study
    from dsa_core.zeroshot.tasks import check_sources
    from storage.db import open_study_storage

    cfg = SearchConfig(**values(args, SearchConfig)).validate()
    if args.workers and cfg.space == "hybrid":
        raise ConfigError("A hybrid search runs its two phases in one process; give --workers to a function or "
                          "allocation search.")
    tasks = check_kind(cfg.fitness)
    if tasks:
        check_sources(tasks, None, cfg.data_source)  # missing files refused before the model loads
    recorder = recorder_from_args(args)
    history_url = recorder.history.db.study_url if recorder.history is not None else None
    storage = args.storage or history_url or default_storage()
    study = create_study(cfg, open_study_storage(storage))
    link = {"study": study.study_name} if storage == history_url else {}  # History then reads the study live
    run = recording.enter_context(recorder.run("search", cfg.to_dict(), protocol=search_protocol(cfg), results=link))
    fitness, reports = None, None
    if args.workers:  # each worker loads its own model; this process loads one only for the final table
        from dsa_core.workers import run_workers

        started = time.perf_counter()
        reports = run_workers(study.study_name, storage, args.workers)
        evaluated = sum(r["evaluated"] for r in reports)
        search_s = time.perf_counter() - started
        final = summarize(study, cfg, evaluated, elapsed=search_s)
        session = None if args.no_final else _session(cfg)
        result = final if session is None else rerank(
            session, cfg, final, search_fitness(session, cfg) if cfg.rerank_final else None)
    else:
        session = _session(cfg)
        started = time.perf_counter()
        fitness = search_fitness(session, cfg)
        reporter = TerminalReporter(bars=False, on_event=_recording(run, study, link, args.json))
        result = _interruptible(reporter, lambda: run_search(session, cfg, study, reporter, fitness))
        if result is None:
            run.fail(Cancelled("Interrupted (Ctrl-C): the study keeps every candidate measured; run the same command "
                               "to resume."), {**search_results(study_events(study)), **link})
            return INTERRUPTED
        with oom_as_error("re-ranking the best candidates"):
            result = rerank(session, cfg, result, fitness)
        search_s = time.perf_counter() - started
    with oom_as_error("re-evaluating the best candidates"):
        table = [] if args.no_final else faithful_table(session, cfg, result.top)
    out = {
        "study": result.study,
        "space": cfg.space,
        "fitness": cfg.fitness,
        "best": result.best.text,
        "best_fitness": result.best.fitness,
        "best_ratios": result.best.ratios,
        "evaluated": result.evaluated,
        "candidates_per_second": result.evaluated / max(search_s, 1e-9),
        "search_seconds": search_s,
        "throughput": result.throughput,
        "phases": result.phases,
        "start_ratios": result.start_ratios,
        "generations": result.generations,
        "table": table,
        "fitness_protocol": fitness.origin if fitness is not None and isinstance(fitness.origin, dict) else None,
        "config": cfg.to_dict(),
        "timings": session.timings if session else {},
    }
    if reports is not None:  # how the candidates were shared: a worker still loading its model may get none
        out["workers"] = [{"device": r["device"], "evaluated": r["evaluated"]} for r in reports]
    if table:
        out["test_ppl"] = next(r["ppl"] for r in table if r["label"] == "searched #1")
        out["baselines"] = {r["label"]: r["ppl"] for r in table if not r["label"].startswith("searched")}
    if result.stop_reason:
        out["stop_reason"] = result.stop_reason
        print(f"warning: {result.stop_reason}", file=sys.stderr)
    model = session.lm.describe() if session is not None else None
    run.done({**search_results(study_events(study), result, model), **link,
              **{k: out[k] for k in ("table", "test_ppl", "baselines") if k in out}},
             environment=environment(session.lm) if session is not None else {})

    def print_table(out: dict) -> None:
        print(f"best {result.best.text}  fitness ({cfg.fitness}) {result.best.fitness:.4g}  ({result.evaluated} "
              f"evaluated, {out['candidates_per_second']:.2f}/s)")
        for name, t in ((out["fitness_protocol"] or {}).get("tasks") or {}).items():
            print(f"fitness rows  {name}: {t['held_out']}")
        for r in table:
            print(f"{r['label']:<14}{r['ppl']:>12.3f}  {r['allocation'][:100]}")
        if "history_id" in out:
            print(f"history id    {out['history_id']}")

    print_result(out, run, args.json, print_table)
    return 0


def worker_command(args: argparse.Namespace) -> int:
    from dsa_core.search import run_search
    from dsa_core.studies import load_study
    from storage.db import open_study_storage

    storage = args.storage or default_storage()
    study, cfg = load_study(args.study, open_study_storage(storage))
    if args.gpus:  # this process only starts the workers; each loads its own model
        from dsa_core.workers import run_workers

        print(json.dumps(run_workers(args.study, storage, args.gpus)))
        return 0
    if args.device:
        cfg.device = args.device
    study.sampler.reseed_rng()  # workers started alike would otherwise all propose the same candidates
    session = _session(cfg)
    reporter = TerminalReporter(bars=False, on_event=_print_candidate)
    result = _interruptible(reporter, lambda: run_search(session, cfg, study, reporter))
    if result is None:
        return INTERRUPTED
    print(json.dumps({"study": result.study, "evaluated": result.evaluated, "best": result.best.text,
                      "best_fitness": result.best.fitness}))
    return 0
