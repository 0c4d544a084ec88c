"""Time the GA sampler spends per trial (breeding, computing the children's allocations, pre-selection), apart from
evaluating candidates: SmolLM2's real block statistics, a synthetic fitness (distance of the ratios to a fixed
profile), so that only the sampler is timed. Compares computing the children's allocations in one thread with one
thread per core, in one process, each from an empty reduction memo (in both, a new pre-process/reduction pair's
blocks are spread over one thread per core). On a GPU the search breeds while a candidate is evaluated
(dsa_core.search.run_search), so this time is hidden there as long as it stays below a candidate's evaluation.

    python bench/bench_sampler.py --trials 300          # CPU is enough: the sampler never touches the GPU
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import optuna

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dsa_core.config import EvalConfig  # noqa: E402
from dsa_core.evolution import EvolutionSampler  # noqa: E402
from dsa_core.fitness import FAILED_FITNESS  # noqa: E402
from dsa_core.pipeline import open_session  # noqa: E402
from dsa_core.search_config import SearchConfig  # noqa: E402
from dsa_core.spaces import FunctionSpace, function_text  # noqa: E402
from dsa_core.studies import search_space  # noqa: E402


def time_sampler(session, cfg: SearchConfig, trials: int, threads: int) -> float:
    """Mean seconds of `study.ask` per trial."""
    stats = session.stats(cfg.metric)
    stats.reductions.clear()
    space = FunctionSpace(stats, cfg.sparsity, cfg.lam_range)
    study = optuna.create_study(sampler=EvolutionSampler(
        search_space(cfg), population=cfg.population, preselect=cfg.preselect, seed=cfg.seed, threads=threads,
        key=function_text, phenotype=space.phenotype))
    distributions = search_space(cfg)
    profile = np.linspace(cfg.sparsity - 0.1, cfg.sparsity + 0.1, stats.num_blocks)
    asking = 0.0
    for _ in range(trials):
        t = time.perf_counter()
        trial = study.ask(distributions)
        asking += time.perf_counter() - t
        ratios = space.phenotype(trial.params)
        trial.set_user_attr("ratios", [] if ratios is None else ratios.tolist())
        study.tell(trial, FAILED_FITNESS if ratios is None else float(np.sum((ratios - profile) ** 2)))
    return asking / trials


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--trials", type=int, default=300)
    ap.add_argument("--nsamples", type=int, default=4, help="calibration windows for the block statistics")
    ap.add_argument("--seqlen", type=int, default=256)
    args = ap.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    session = open_session(EvalConfig(model=args.model, nsamples=args.nsamples, seqlen=args.seqlen,
                                      data_source="local", device="cpu"))
    cfg = SearchConfig(model=args.model, nsamples=args.nsamples, seqlen=args.seqlen, data_source="local",
                       budget_candidates=args.trials, fitness_windows=1).validate()
    cores = os.cpu_count() or 1
    single = time_sampler(session, cfg, args.trials, threads=1)
    threaded = time_sampler(session, cfg, args.trials, threads=cores)
    print(f"\nGA sampler, {args.trials} trials, {session.stats('wanda').num_blocks} blocks, preselect "
          f"{cfg.preselect}, population {cfg.population}, synthetic fitness; CPU with {cores} cores")
    print(f"{'breeding':<22}{'ms per trial':>14}")
    print(f"{'1 thread':<22}{single * 1e3:>14.1f}")
    print(f"{f'{cores} threads':<22}{threaded * 1e3:>14.1f}")
    print(f"{'speed-up':<22}{single / threaded:>13.2f}x")


if __name__ == "__main__":
    main()
