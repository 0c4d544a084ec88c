"""Whether the cheap stages of a staged KL fitness pick the children a direct search's refinement should promote.

The hybrid's refinement mutates its best allocation by level switches (dsa_core.levels) and promotes the best quarter
of each stage to the next; with `--last-stage sequential` only the last stage prunes sequentially, the earlier ones
re-mask from the score cache. Children one to a few switches from their parent differ by little, so a cheap stage's
noise or its bias (a re-masked model against a sequentially pruned one) may decide which of them go on. This measures
N distinct children of one parent at every stage and says how each stage ranks them against the sequential stage:
Spearman, and where the quarter it would promote ranks there. With `--filter-windows K` it also measures the earlier
stages' token counts on the model pruned sequentially on the first K calibration windows (as `--sequential-windows K`
prunes for a last stage), to see whether such a filter would promote better.
A parent from ATP's allocation (`--start atp`, the default), from uniform or from any allocation text.

    python bench/bench_stage_agreement.py --model gemma3-270m --fidelity 2k,8k,32k --children 48 --target 0.6
    python bench/bench_stage_agreement.py --nsamples 16 --seqlen 512 --fidelity 1k,2k,4k --children 24   # CPU
    python bench/bench_stage_agreement.py --nsamples 16 --seqlen 512 --fidelity 1k,2k,4k --children 12 \
        --filter-windows 4
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
from dsa_core.allocation import allocate  # noqa: E402
from dsa_core.fitness import Fitness, parse_fidelity, stage_windows  # noqa: E402
from dsa_core.levels import LevelGrid, unit_sizes  # noqa: E402
from dsa_core.pipeline import environment, open_session  # noqa: E402


def children(grid: LevelGrid, parent: np.ndarray, n: int, seed: int) -> list[np.ndarray]:
    """`n` distinct level-switch mutations of `parent`, drawn as the refinement's sampler draws them."""
    rng, seen, out = np.random.RandomState(seed), {grid.key(parent)}, []
    while len(out) < n:
        child = grid.mutate(parent, rng)
        if grid.key(child) not in seen:
            seen.add(grid.key(child))
            out.append(child)
    return out


def promoted_ranks(cheap: np.ndarray, faithful: np.ndarray, share: float) -> np.ndarray:
    """The faithful ranks (0 = best) of the `share` of candidates the cheap measure ranks best."""
    k = max(1, int(round(share * len(cheap))))
    faithful_rank = np.argsort(np.argsort(faithful))
    return faithful_rank[np.argsort(cheap)[:k]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_setup_options(ap)
    ap.add_argument("--metric", default="wanda")
    ap.add_argument("--target", type=float, default=0.6)
    ap.add_argument("--fidelity", default="2k,8k,32k", help="the staged fitness's token counts")
    ap.add_argument("--start", default="atp", help="the parent's allocation (atp, uniform, a function's text, ...)")
    ap.add_argument("--children", type=int, default=48)
    ap.add_argument("--promote", type=int, default=4, help="1 in this many goes on (the search's --promote)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rows", default="masked,rescored",
                    help="which earlier-stage measures to compare: masked (re-masked from the dense model's scores), "
                         "rescored (re-masked from scores on the parent's sequential run: --rescore)")
    ap.add_argument("--filter-windows", type=int, default=0,
                    help="also measure the earlier stages pruned sequentially on this many calibration windows")
    args = ap.parse_args()
    session = open_session(setup_config(args))
    tokens = parse_fidelity(args.fidelity)
    windows = stage_windows(tokens, args.seqlen, 1)
    last = len(windows) - 1
    # Each row: what it is called, the fitness that measures it, and its stage there. A filter stage is the last
    # stage of a fitness cut at that stage's token count, pruned on the first K windows (none for the last stage:
    # that is the sequential one). Only the rows asked for are built: each fitness caches dense logits of its own
    # (17 GB for Gemma 3 270M at 32k tokens).
    kinds = {k.strip() for k in args.rows.split(",") if k.strip()}
    rows = []
    if "masked" in kinds:
        masked = Fitness(session, args.metric, args.target, "kl", windows)
        rows += [("masked", masked, stage) for stage in range(len(windows))]
    # The rescored stages' own last stage is the sequential one, which then measures every child too.
    sequential = Fitness(session, args.metric, args.target, "kl", windows if "rescored" in kinds else windows[-1:],
                         last_stage="sequential", rescore="rescored" in kinds)
    if "rescored" in kinds:
        rows += [("rescored on the parent", sequential, stage) for stage in range(last)]
    if args.filter_windows:
        rows += [(f"sequential on {args.filter_windows} windows",
                  Fitness(session, args.metric, args.target, "kl", windows[: stage + 1], last_stage="sequential",
                          sequential_windows=args.filter_windows), stage) for stage in range(last)]
    stats = session.stats(args.metric)
    grid = LevelGrid(unit_sizes(stats.layer_shapes, "block"), args.target)
    parent = grid.snap(allocate(stats, args.start, args.target).ratios)
    batch = [parent, *children(grid, parent, args.children, args.seed)]
    values = np.zeros((len(batch), len(rows) + 1))
    seconds = np.zeros(len(rows) + 1)
    values[0, -1] = sequential.measure(grid.key(parent), grid.ratios(parent), len(sequential.stages) - 1)
    # Every row first, then the sequential stage: a child measured better than the parent there would otherwise
    # become the rescored rows' basis for the children after it.
    for j, (_, fitness, stage) in enumerate(rows):
        for i, levels in enumerate(batch):
            start = time.perf_counter()
            values[i, j] = fitness.measure(grid.key(levels), grid.ratios(levels), stage)
            seconds[j] += time.perf_counter() - start
    for i, levels in enumerate(batch[1:], 1):
        start = time.perf_counter()
        values[i, -1] = sequential.measure(grid.key(levels), grid.ratios(levels), len(sequential.stages) - 1)
        seconds[-1] += time.perf_counter() - start
    seconds[-1] *= len(batch) / (len(batch) - 1)  # per child, as the parent's measure was not timed
    env = environment(session.lm)
    kids = values[1:]
    faithful = kids[:, -1]
    print(f"{session.lm.name}, {args.metric} {args.target:.0%}, {args.children} level-switch children of "
          f"{args.start} ({args.nsamples} x {args.seqlen} calibration tokens; {env.get('device') or 'cpu'}, "
          f"{env['dtype']}); parent KL on the sequential stage: {values[0, -1]:.4f}")
    print(f"sequential stage: children's KL {faithful.min():.4f} to {faithful.max():.4f} (parent {values[0, -1]:.4f}), "
          f"{(faithful < values[0, -1]).sum()} of {args.children} better than the parent")
    print(f"{'stage':<40}{'s / child':>10}{'Spearman':>10}{'promoted: sequential ranks (0 = best)':>40}")
    share = 1.0 / args.promote
    for j, (kind, _, stage) in enumerate(rows):
        ranks = promoted_ranks(kids[:, j], faithful, share)
        rho = spearmanr(kids[:, j], faithful).statistic
        print(f"{f'{kind}, {tokens[stage]} tokens':<40}{seconds[j] / len(batch):>10.2f}{rho:>10.3f}"
              f"{' '.join(str(r) for r in sorted(ranks)):>40}")
    chance = (args.children - 1) / 2
    print(f"{f'sequential (last stage), {tokens[-1]} tokens':<40}{seconds[-1] / len(batch):>10.2f}{1.0:>10.3f}"
          f"{f'(a random quarter: mean rank {chance:.1f})':>40}")


if __name__ == "__main__":
    main()
