"""Search throughput with 1 and 2 (or more) GPUs: one worker process per GPU on one shared study.

    python bench/bench_workers.py --model random:llama-2-7b --gpus 1,2 --candidates 60,120   # 7B shape, 2 GPUs
    python bench/bench_workers.py --model smollm2 --gpus 1 --candidates 200                 # one GPU

Each run creates a fresh study in a SQLite file and starts the workers with dsa_core.workers.run_workers, as
`python -m dsa_core search --workers N` does. Throughput counts the candidates evaluated while every worker was
evaluating (each worker loads its model and scores calibration first; that set-up is shown apart). The fitness
is the search's fast proxy: re-mask from the score cache, perplexity on WikiText-2 validation windows. Random
weights make perplexities meaningless but not the speed.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import optuna
from optuna.trial import TrialState

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dsa_core.search_config import SearchConfig  # noqa: E402
from dsa_core.studies import create_study  # noqa: E402
from dsa_core.workers import run_workers  # noqa: E402


def one_run(cfg: SearchConfig, gpus: int, folder: Path) -> dict:
    storage = f"sqlite:///{folder / f'workers{gpus}.db'}"
    study = create_study(cfg, storage)
    started = time.perf_counter()
    reports = run_workers(study.study_name, storage, str(gpus))
    wall = time.perf_counter() - started
    evaluated = study.get_trials(states=(TrialState.COMPLETE,))
    by_worker: dict[str, list] = {}
    for t in evaluated:
        by_worker.setdefault(t.user_attrs["worker"], []).append(t)
    # The window in which every worker was evaluating: from the last worker's first start to the first
    # worker's last end (workers finish set-up and budget at slightly different times).
    first = max(min(t.datetime_start for t in ts) for ts in by_worker.values())
    last = min(max(t.datetime_complete for t in ts) for ts in by_worker.values())
    inside = [t for t in evaluated if first <= t.datetime_start and t.datetime_complete <= last]
    span = (last - first).total_seconds()
    return {"gpus": gpus, "candidates": len(evaluated), "timed": len(inside), "span_s": span,
            "rate": len(inside) / span, "setup_s": wall - span, "wall_s": wall,
            "per_worker": [r["evaluated"] for r in reports]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="default: SmolLM2; random:llama-2-7b for the 7B shape")
    ap.add_argument("--gpus", default="1,2", help="worker counts to compare, one per GPU")
    ap.add_argument("--candidates", default="60,120", help="budget of distinct candidates for each worker count")
    ap.add_argument("--nsamples", type=int, default=32, help="calibration windows (set-up only; not timed)")
    ap.add_argument("--seqlen", type=int, default=2048)
    ap.add_argument("--fitness-windows", type=int, default=8)
    ap.add_argument("--sparsity", type=float, default=0.7)
    ap.add_argument("--sampler", default="ga")
    args = ap.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    counts = [int(g) for g in args.gpus.split(",")]
    budgets = [int(c) for c in args.candidates.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for gpus, budget in zip(counts, budgets):
            cfg = SearchConfig(model=args.model, nsamples=args.nsamples, seqlen=args.seqlen, data_source="local",
                               sparsity=args.sparsity, sampler=args.sampler, budget_candidates=budget,
                               fitness_windows=args.fitness_windows, seed=0).validate()
            rows.append(one_run(cfg, gpus, Path(tmp)))
            print(f"  {gpus} GPU(s): {rows[-1]}", file=sys.stderr, flush=True)
    print(f"\nmodel {args.model or 'smollm2'}; proxy = {args.fitness_windows} WikiText-2 validation windows of "
          f"{args.seqlen} tokens; calibration {args.nsamples}x{args.seqlen}; sampler {args.sampler}; SQLite study")
    print(f"{'GPUs':>5}{'timed cand':>12}{'seconds':>10}{'cand/s':>9}{'s/cand':>9}{'scaling':>9}"
          f"{'set-up s':>10}  per worker")
    base = rows[0]["rate"] / rows[0]["gpus"] if rows else 1.0
    for r in rows:
        print(f"{r['gpus']:>5}{r['timed']:>12}{r['span_s']:>10.1f}{r['rate']:>9.2f}{1 / r['rate']:>9.3f}"
              f"{r['rate'] / base:>9.2f}{r['setup_s']:>10.1f}  {r['per_worker']}")


if __name__ == "__main__":
    main()
