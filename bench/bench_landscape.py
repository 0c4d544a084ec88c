"""Whether two searched allocations lie in one basin of the search's fitness: the last stage's KL and the faithful
test perplexity at evenly spaced points on the straight line between them (each point snapped to the search's
level grid, so that it meets the target exactly).

A refinement that ends at A while B scores better is held either by a barrier between them (the KL rises on the
way: another start is needed) or by its own steps (the KL falls all the way: a better local search would get there
from A). Each end is an allocation text: a searched `levels:...` (the grid's levels, as the search prints them) or
anything `--allocation` takes (atp, owl, a function's text, ...).

    python bench/bench_landscape.py --model gemma3-270m --target 0.6 --points 7 \
        --a levels:50,50,40,46,56,46,60,55,62,63,65,46,61,72,77,78,79,74 \
        --b levels:54,61,41,46,45,48,53,61,58,69,65,51,72,73,82,59,71,71
    python bench/bench_landscape.py --nsamples 8 --seqlen 256 --fidelity 1k --eval-windows 4 --points 3 \
        --a uniform --b atp                                                                    # CPU
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.setup_options import add_setup_options, setup_config  # noqa: E402
from dsa_core import comparison  # noqa: E402
from dsa_core.allocation import allocate  # noqa: E402
from dsa_core.fitness import Fitness  # noqa: E402
from dsa_core.levels import LevelGrid, unit_sizes  # noqa: E402
from dsa_core.pipeline import environment, open_session  # noqa: E402
from dsa_core.search_config import SearchConfig  # noqa: E402
from dsa_core.search_result import Candidate  # noqa: E402

LEVELS = "levels:"


def levels_of(grid: LevelGrid, stats, text: str, target: float) -> np.ndarray:
    """An allocation text as the grid's levels: a searched `levels:...` as it is, anything else snapped."""
    if text.startswith(LEVELS):
        levels = np.asarray([int(v) for v in text[len(LEVELS):].split(",")], dtype=np.int64)
        if len(levels) != len(grid) or int(levels.sum()) != grid.total:
            raise SystemExit(f"{text} is not an allocation of this grid: {len(grid)} units summing to {grid.total}.")
        return levels
    return grid.snap(allocate(stats, text, target).ratios)


def line(grid: LevelGrid, a: np.ndarray, b: np.ndarray, points: int) -> list[tuple[float, np.ndarray]]:
    """`points` evenly spaced allocations from levels `a` to levels `b`, both ends included, each on the grid."""
    return [(float(t), grid.snap(grid.ratios(a) * (1 - t) + grid.ratios(b) * t)) for t in np.linspace(0, 1, points)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_setup_options(ap)
    ap.add_argument("--metric", default="wanda")
    ap.add_argument("--target", type=float, default=0.6)
    ap.add_argument("--fidelity", default="2k,8k,32k", help="the search's token counts; the last one is measured")
    ap.add_argument("--last-stage", default="sequential", choices=("masked", "sequential"))
    ap.add_argument("--a", required=True, help="one end of the line")
    ap.add_argument("--b", required=True, help="the other end")
    ap.add_argument("--points", type=int, default=7, help="points on the line, both ends included")
    args = ap.parse_args()
    if args.points < 2:
        raise SystemExit("--points must be at least 2: the two ends.")
    session = open_session(setup_config(args))
    cfg = SearchConfig(model=args.model, metric=args.metric, sparsity=args.target, nsamples=args.nsamples,
                       seqlen=args.seqlen, data_source=args.data_source, dtype=args.dtype,
                       device=args.device, fitness="kl", fidelity=args.fidelity, last_stage=args.last_stage,
                       final_eval_windows=args.eval_windows, budget_candidates=1).validate()
    stats = session.stats(args.metric)
    grid = LevelGrid(unit_sizes(stats.layer_shapes, "block"), args.target)
    a, b = (levels_of(grid, stats, text, args.target) for text in (args.a, args.b))
    fit = Fitness(session, args.metric, args.target, "kl", cfg.stage_windows()[-1:], args.last_stage)
    measured = []
    for t, levels in line(grid, a, b, args.points):
        started = time.perf_counter()
        kl = fit.measure(grid.key(levels), grid.ratios(levels), 0)
        measured.append((t, levels, kl, time.perf_counter() - started))
    del fit  # its dense logits: 17 GB for Gemma 3 270M at 32k tokens
    candidates = [Candidate(grid.key(levels), kl, list(grid.ratios(levels)), [])
                  for _, levels, kl, _ in measured]
    rows = comparison.faithful_table(session, cfg, candidates, refs=[])
    env = environment(session.lm)
    print(f"{session.lm.name}, {args.metric} {args.target:.0%}; KL on the {args.last_stage} stage at "
          f"{cfg.stage_windows()[-1] * args.seqlen} tokens; test perplexity as the search's final table "
          f"({env.get('device') or 'cpu'}, {env['dtype']})")
    print(f"{'t':>6}{'KL':>10}{'test ppl':>10}{'s (KL)':>8}{'mean |Δ| to a':>15}  levels")
    for (t, levels, kl, seconds), row in zip(measured, rows):
        moved = float(np.abs(grid.ratios(levels) - grid.ratios(a)).mean())
        print(f"{t:>6.3f}{kl:>10.4f}{row['ppl']:>10.2f}{seconds:>8.1f}{moved:>15.3f}  {grid.key(levels)}")


if __name__ == "__main__":
    main()
