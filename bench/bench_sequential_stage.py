"""What a sequential last stage costs per candidate (dsa_core.fitness, `--last-stage sequential`), resumed from the
kept runs or pruned from the first block, on the candidates a direct search measures there: level switches of the
best allocation so far, which a child replaces when it measures better ((1+1) selection, as dsa_core.levels' sampler
does). The two variants measure each candidate in turn, in the same process (so a machine's changing load falls on
both alike), and must give the same values. With `--windows K`, a third prunes on only the first K calibration
windows (`--sequential-windows`): its cost, and how it ranks the candidates against pruning on all of them.

    python bench/bench_sequential_stage.py --model gemma3-270m --target 0.6 --candidates 40
    python bench/bench_sequential_stage.py --nsamples 4 --seqlen 128 --tokens 256 --candidates 9   # CPU smoke run
    python bench/bench_sequential_stage.py --nsamples 32 --seqlen 256 --tokens 2k --candidates 12 --windows 8
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.setup_options import add_setup_options, setup_config  # noqa: E402
from dsa_core import fitness as fit  # noqa: E402
from dsa_core.fitness import Fitness, parse_fidelity, stage_windows  # noqa: E402
from dsa_core.levels import LevelGrid, unit_sizes  # noqa: E402
from dsa_core.pipeline import environment, open_session  # noqa: E402


def fitness(session, args, share: float, windows: int = 0) -> Fitness:
    fit.KEPT_RUNS_SHARE = share  # read when a Fitness is made
    return Fitness(session, args.metric, args.target, "kl", stage_windows(parse_fidelity(args.tokens), args.seqlen, 1),
                   last_stage="sequential", sequential_windows=windows)


def timed(f: Fitness, key: str, ratios: np.ndarray) -> tuple[float, float]:
    start = time.perf_counter()
    value = f.measure(key, ratios, 0)
    return value, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_setup_options(ap)
    ap.add_argument("--metric", default="wanda")
    ap.add_argument("--target", type=float, default=0.6)
    ap.add_argument("--tokens", default="32k", help="tokens of the KL measure after each prune")
    ap.add_argument("--candidates", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--windows", type=int, default=0, help="also prune on only the first this many windows")
    args = ap.parse_args()
    session = open_session(setup_config(args))
    stats = session.stats(args.metric)
    grid = LevelGrid(unit_sizes(stats.layer_shapes, "block"), args.target)
    rng = np.random.RandomState(args.seed)
    share = fit.KEPT_RUNS_SHARE
    fresh, kept = fitness(session, args, 0.0), fitness(session, args, share)
    fewer = fitness(session, args, share, args.windows) if args.windows else None
    parent = grid.snap(np.full(len(grid), args.target))
    best = fresh.measure("parent", grid.ratios(parent), 0)  # warm-up, not timed
    kept.measure("parent", grid.ratios(parent), 0)
    if fewer:
        fewer.measure("parent", grid.ratios(parent), 0)
    seconds, same, values = [0.0, 0.0, 0.0], True, []
    for i in range(args.candidates):
        child = grid.mutate(parent, rng)
        (a, ta), (b, tb) = timed(fresh, f"c{i}", grid.ratios(child)), timed(kept, f"c{i}", grid.ratios(child))
        seconds[0] += ta
        seconds[1] += tb
        same &= a == b
        if fewer:
            c, tc = timed(fewer, f"c{i}", grid.ratios(child))
            seconds[2] += tc
            values.append((a, c))
        if a < best:
            parent, best = child, a
    env = environment(session.lm)
    n, blocks = args.candidates, len(stats.params)
    print(f"{session.lm.name}, {args.metric} {args.target:.0%}, {n} level-switch candidates, {args.nsamples} x "
          f"{args.seqlen} calibration tokens, KL on {args.tokens} tokens; {env.get('device') or 'cpu'}, "
          f"{env['dtype']}")
    print(f"{'sequential stage':<34}{'s / candidate':>14}{'blocks pruned':>15}{'blocks resumed':>16}")
    print(f"{'from the first block':<34}{seconds[0] / n:>14.3f}{(n + 1) * blocks:>15}{0:>16}")
    print(f"{'resumed from kept runs':<34}{seconds[1] / n:>14.3f}{kept.kept.blocks[0]:>15}{kept.kept.blocks[1]:>16}")
    if fewer:
        print(f"{f'on the first {args.windows} windows, resumed':<34}{seconds[2] / n:>14.3f}{fewer.kept.blocks[0]:>15}"
              f"{fewer.kept.blocks[1]:>16}")
    print(f"speed-up {seconds[0] / seconds[1]:.2f}x; same values: {same} (block counts include the warm-up)")
    if fewer:
        print(f"on {args.windows} windows: {seconds[1] / seconds[2]:.2f}x faster than on all (both resumed); "
              f"Spearman of its KL with all windows' over the {n} candidates: {spearmanr(*zip(*values)).statistic:.3f}")


if __name__ == "__main__":
    main()
