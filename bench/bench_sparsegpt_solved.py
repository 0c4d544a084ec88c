"""What the solved form of SparseGPT's column loop buys a search's sequential measure (dsa_core.metrics.sparsegpt,
`exact=False`): seconds per sequential prune with the reference loop and with the batched-solve form, on the same
level-switch candidates around uniform, the KL fitness of each, and whether the two rank the candidates alike. The
loop launches ~8 small kernels per input column, so it is bound by launches on a GPU; on a CPU the solve's larger
memory traffic may cost more than the loop saves. Both forms run in turn on each candidate, in one process.

    python bench/bench_sparsegpt_solved.py --model gemma3-270m --sequential-windows 32     # GPU
    python bench/bench_sparsegpt_solved.py --nsamples 8 --seqlen 256 --tokens 2k --candidates 6   # CPU, SmolLM2
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.setup_options import add_setup_options, setup_config  # noqa: E402
from dsa_core.fitness import Fitness, parse_fidelity, stage_windows  # noqa: E402
from dsa_core.levels import LevelGrid, unit_sizes  # noqa: E402
from dsa_core.pipeline import environment, open_session  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_setup_options(ap)
    ap.add_argument("--target", type=float, default=0.7)
    ap.add_argument("--tokens", default="32k", help="tokens of the KL measure after each prune")
    ap.add_argument("--candidates", type=int, default=12)
    ap.add_argument("--sequential-windows", type=int, default=0, help="calibrate on the first this many windows")
    args = ap.parse_args()
    session = open_session(setup_config(args))
    kl = Fitness(session, "sparsegpt", args.target, "kl", stage_windows(parse_fidelity(args.tokens), args.seqlen, 1))
    grid = LevelGrid(unit_sizes(session.stats("sparsegpt").layer_shapes, "block"), args.target)
    rng = np.random.RandomState(0)
    uniform = grid.snap(np.full(len(grid), args.target))
    todo = [uniform] + [grid.mutate(uniform, rng) for _ in range(args.candidates - 1)]
    seconds, values = {True: 0.0, False: 0.0}, {True: [], False: []}
    sync = torch.cuda.synchronize if session.lm.device.type == "cuda" else (lambda: None)
    session.prune_sequential(grid.ratios(uniform), "sparsegpt", windows=args.sequential_windows, exact=False)  # warm-up
    for levels in todo:
        for exact in (True, False):
            sync()
            started = time.perf_counter()
            session.prune_sequential(grid.ratios(levels), "sparsegpt", windows=args.sequential_windows, exact=exact)
            sync()
            seconds[exact] += time.perf_counter() - started
            values[exact].append(kl.stages[0]())
    session.restore()
    env, n = environment(session.lm), len(todo)
    print(f"{session.lm.name}, SparseGPT {args.target:.0%}, uniform and {n - 1} level switches of it, "
          f"{args.sequential_windows or args.nsamples} of {args.nsamples} x {args.seqlen} calibration windows, KL on "
          f"{args.tokens} tokens; {env.get('device') or 'cpu'}, {env['dtype']}")
    print(f"{'sequential prune':<24}{'s / prune':>10}{'KL, mean':>10}")
    for exact, name in ((True, "reference loop"), (False, "solved (exact=False)")):
        print(f"{name:<24}{seconds[exact] / n:>10.2f}{np.mean(values[exact]):>10.4f}")
    gap = np.abs(np.array(values[True]) - np.array(values[False])) / np.array(values[True])
    print(f"solved {seconds[True] / seconds[False]:.2f}x faster; KL differs by {100 * gap.mean():.2f}% on average "
          f"({100 * gap.max():.2f}% at most); Spearman of the two over the {n} candidates: "
          f"{spearmanr(values[True], values[False]).statistic:.3f}")


if __name__ == "__main__":
    main()
