"""What a SparseGPT search's level database (dsa_core.sparsegpt_levels) costs per candidate: levels pruned in passes
of `BATCH` neighbours against passes sized to the memory budget (the default), in one process on the same
candidates. A function search's candidates move every layer to a new level; a refinement's level switches move two
blocks by a step. When the budget cannot keep a batch of every layer, a function candidate's batches evict the
neighbours they computed before these are used, and each pass costs about its number of levels.

    python bench/bench_sparsegpt_levels.py --nsamples 8 --seqlen 256           # CPU, SmolLM2
    python bench/bench_sparsegpt_levels.py --model gemma3-270m                 # GPU
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.setup_options import add_setup_options, setup_config  # noqa: E402
from dsa_core.allocation import allocate  # noqa: E402
from dsa_core.comparison import atp_spec  # noqa: E402
from dsa_core.levels import LevelGrid, unit_sizes  # noqa: E402
from dsa_core.pipeline import open_session  # noqa: E402
from dsa_core.sparsegpt_levels import BATCH, SparseGPTLevels  # noqa: E402


def candidates(stats, target: float, functions: int, switches: int, seed: int) -> list[tuple[str, np.ndarray]]:
    """ATP's profiles at several β (each moves every block: a function search's kind of candidate), then level
    switches from the last of them (a refinement's)."""
    out = [("function", allocate(stats, atp_spec(beta), target).ratios)
           for beta in np.linspace(0.004, 0.012, functions)]
    grid, rng = LevelGrid(unit_sizes(stats.layer_shapes, "block"), target), np.random.RandomState(seed)
    levels = grid.snap(out[-1][1])
    for _ in range(switches):
        levels = grid.mutate(levels, rng)
        out.append(("switch", grid.ratios(levels)))
    return out


def run(session, batch: int | None, todo: list[tuple[str, np.ndarray]]
        ) -> tuple[SparseGPTLevels, dict, list[torch.Tensor]]:
    session.restore()
    levels = SparseGPTLevels(session.lm, session.dense, session.block_inputs(), batch=batch)
    spent: dict[str, list[float]] = {}
    for kind, ratios in todo:
        started = time.perf_counter()
        levels.apply(ratios)
        if session.lm.device.type == "cuda":
            torch.cuda.synchronize()
        spent.setdefault(kind, []).append(time.perf_counter() - started)
    last = [m.weight.detach().clone() for m, _ in session.dense.layers[0]]
    return levels, spent, last


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_setup_options(ap)
    ap.add_argument("--target", type=float, default=0.7)
    ap.add_argument("--functions", type=int, default=3)
    ap.add_argument("--switches", type=int, default=12)
    args = ap.parse_args()
    session = open_session(setup_config(args))
    session.scores("sparsegpt")
    todo = candidates(session.stats("sparsegpt"), args.target, args.functions, args.switches, seed=0)
    print(f"{session.lm.name} on {session.lm.device}, SparseGPT {args.target:.0%}: {args.functions} function-like "
          f"candidates, then {args.switches} level switches; {args.nsamples} calibration windows of {args.seqlen}")
    print(f"{'batch':>16}{'budget GB':>11}{'s/function':>12}{'s/switch':>10}{'total s':>9}{'levels pruned':>15}")
    rows, weights = [], []
    for name, batch in ((f"{BATCH} (fixed)", BATCH), ("sized to budget", None)):
        levels, spent, last = run(session, batch, todo)
        total = sum(sum(v) for v in spent.values())
        rows.append(total)
        weights.append(last)
        print(f"{name + ' ' + str(levels.batch):>16}{levels.budget / 1e9:>11.2f}{np.mean(spent['function']):>12.2f}"
              f"{np.mean(spent.get('switch', [0.0])):>10.2f}{total:>9.1f}{levels.computed:>15}", flush=True)
        del levels
    same = all(torch.equal(a, b) for a, b in zip(*weights))
    print(f"speed-up {rows[0] / rows[1]:.2f}×; the last candidate's block-0 weights are "
          f"{'the same' if same else 'NOT the same'} either way")
    session.restore()


if __name__ == "__main__":
    main()
