"""What a hybrid search's ATP start costs and finds (dsa_core.search.atp_start): ATP's β scanned on the stage before
the last and its best three measured on the last, against the scan of every β on the last stage (what the tables'
ATP reference does). With a sequential last stage each β there is a whole sequential prune, so the full scan takes
time the refinement needs; the question is whether the cheap scan still finds a start as good. Both run in the same
process on the same fitness; the table gives each one's seconds, β, and its last-stage fitness.

    python bench/bench_atp_start.py --model gemma3-270m --targets 0.6,0.7                 # GPU
    python bench/bench_atp_start.py --nsamples 16 --seqlen 512 --fidelity 2k,8k        # CPU, SmolLM2
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.setup_options import add_setup_options, setup_config  # noqa: E402
from dsa_core.comparison import atp_betas, atp_spec  # noqa: E402
from dsa_core.fitness import Fitness, parse_fidelity, stage_windows  # noqa: E402
from dsa_core.pipeline import open_session  # noqa: E402
from dsa_core.search import atp_start  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_setup_options(ap)
    ap.add_argument("--metric", default="wanda")
    ap.add_argument("--targets", default="0.6,0.7")
    ap.add_argument("--fidelity", default="2k,8k,32k", help="the search's stages, in tokens")
    ap.add_argument("--sequential-windows", type=int, default=0)
    args = ap.parse_args()
    session = open_session(setup_config(args))
    windows = stage_windows(parse_fidelity(args.fidelity), args.seqlen, 1)
    print(f"{session.lm.name}, {args.metric}, KL at {args.fidelity} tokens, sequential last stage; {args.nsamples} "
          f"calibration windows of {args.seqlen}")
    print(f"{'target':>7}{'full scan s':>13}{'β':>8}{'fitness':>10}{'cheap scan s':>14}{'β':>8}{'fitness':>10}"
          f"{'speed-up':>10}")
    for target in (float(t) for t in args.targets.split(",")):
        # A fitness of its own for each scan, so that nothing measured by the one is reused by the other.
        full, cheap = (Fitness(session, args.metric, target, "kl", windows, last_stage="sequential",
                               sequential_windows=args.sequential_windows) for _ in range(2))
        start = time.perf_counter()
        full_beta = atp_betas(full, target)[0]
        full_s = time.perf_counter() - start
        start = time.perf_counter()
        cheap_beta = atp_start(cheap, target, None)
        cheap_s = time.perf_counter() - start
        print(f"{target:>7.0%}{full_s:>13.1f}{full_beta:>8g}{full(atp_spec(full_beta)):>10.4f}{cheap_s:>14.1f}"
              f"{cheap_beta:>8g}{full(atp_spec(cheap_beta)):>10.4f}{full_s / cheap_s:>9.1f}×")
        session.restore()


if __name__ == "__main__":
    main()
