"""What a sequential last stage costs per candidate (dsa_core.fitness, `--last-stage sequential`), resumed from the
kept runs or pruned from the first block, on the candidates a direct search measures there: level switches of a
parent that is replaced whenever a child measures better ((1+1) selection, as dsa_core.levels' sampler does). Both
variants measure the same candidates in the same process, one after the other, and must give the same values.

    python bench/bench_sequential_stage.py --model gemma3-270m --target 0.6 --candidates 40
    python bench/bench_sequential_stage.py --nsamples 8 --seqlen 256 --tokens 1k --candidates 6   # CPU smoke run
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.setup_options import add_setup_options, setup_config  # noqa: E402
from dsa_core import fitness as fit  # noqa: E402
from dsa_core.fitness import Fitness, parse_fidelity, stage_windows  # noqa: E402
from dsa_core.levels import LevelGrid, unit_sizes  # noqa: E402
from dsa_core.pipeline import environment, open_session  # noqa: E402


def candidates(grid: LevelGrid, target: float, n: int, seed: int) -> list[np.ndarray]:
    """n children, each a level switch of the latest parent; the parent moves to every third child (a stand-in
    for 'a child measured better', fixed in advance so that both variants measure the same list)."""
    rng = np.random.RandomState(seed)
    parent = grid.snap(np.full(len(grid), target))
    out = []
    for i in range(n):
        child = grid.mutate(parent, rng)
        out.append(grid.ratios(child))
        if i % 3 == 2:
            parent = child
    return out


def measure(session, args, ratios: list[np.ndarray], share: float) -> tuple[list[float], float, list[int]]:
    fit.KEPT_RUNS_SHARE = share
    f = Fitness(session, args.metric, args.target, "kl", stage_windows(parse_fidelity(args.tokens), args.seqlen, 1),
                last_stage="sequential")
    f.measure("parent", ratios[0], 0)  # warm-up, not timed
    before, start = list(f.kept.blocks), time.perf_counter()
    values = [f.measure(f"c{i}", r, 0) for i, r in enumerate(ratios[1:])]
    return values, (time.perf_counter() - start) / len(values), [a - b for a, b in zip(f.kept.blocks, before)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_setup_options(ap)
    ap.add_argument("--metric", default="wanda")
    ap.add_argument("--target", type=float, default=0.6)
    ap.add_argument("--tokens", default="32k", help="tokens of the KL measure after each prune")
    ap.add_argument("--candidates", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    session = open_session(setup_config(args))
    stats = session.stats(args.metric)
    ratios = candidates(LevelGrid(unit_sizes(stats.layer_shapes, "block"), args.target), args.target,
                        args.candidates + 1, args.seed)
    share = fit.KEPT_RUNS_SHARE
    fresh, fresh_s, _ = measure(session, args, ratios, 0.0)
    kept, kept_s, blocks = measure(session, args, ratios, share)
    env = environment(session.lm)
    print(f"{session.lm.name}, {args.metric} {args.target:.0%}, {args.candidates} level-switch candidates, "
          f"{args.nsamples} x {args.seqlen} calibration tokens, KL on {args.tokens} tokens; {env['device']}, "
          f"{env['dtype']}")
    print(f"{'sequential stage':<34}{'s / candidate':>14}{'blocks pruned':>15}{'blocks resumed':>16}")
    n = len(ratios) - 1
    print(f"{'from the first block':<34}{fresh_s:>14.3f}{n * len(stats.params):>15}{0:>16}")
    print(f"{'resumed from kept runs':<34}{kept_s:>14.3f}{blocks[0]:>15}{blocks[1]:>16}")
    print(f"speed-up {fresh_s / kept_s:.2f}x; same values: {fresh == kept} (largest difference "
          f"{max(abs(a - b) for a, b in zip(fresh, kept)):.3g})")


if __name__ == "__main__":
    main()
