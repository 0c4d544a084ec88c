"""WikiText-2 test perplexity of SmolLM2 under sequential Wanda: dense, uniform and OWL at several targets,
and a check of dsa_core's Wanda against a straightforward transcription of the published loop.

    python bench/quality.py                       # GPU: seqlen 2048, 128 calibration windows, whole test split
    python bench/quality.py --nsamples 8 --seqlen 512 --eval-windows 8 --targets 0.5   # CPU quick run
    python bench/quality.py --dtype fp64 --targets ""   # the reference check with no float rounding in the masks

Prints a table; every row carries the same protocol (printed once above the table).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.setup_options import add_setup_options, setup_config  # noqa: E402
from dsa_core.allocation import allocate  # noqa: E402
from dsa_core.pipeline import open_session  # noqa: E402
from dsa_core.session import PruningSession  # noqa: E402
from tests.reference_wanda import prune_wanda  # noqa: E402


def masks(s: PruningSession) -> list:
    """Which weights are zero, layer by layer (to compare two pruning implementations mask for mask)."""
    return [m.weight == 0 for i in range(len(s.lm.blocks)) for m in s.lm.linear_layers(i).values()]


def main() -> None:
    ap = argparse.ArgumentParser()
    add_setup_options(ap)
    ap.add_argument("--targets", default="0.5,0.6,0.7")
    ap.add_argument("--allocations", default="uniform,owl")
    ap.add_argument("--reference", default="0.5,0.7", help="targets at which to run the reference transcription")
    ap.add_argument("--seeds", default="", help="calibration seeds for the noise rows (e.g. 0,1,2)")
    ap.add_argument("--seed-targets", default="0.7")
    ap.add_argument("--batch-size", type=int, default=None, help="calibration batch (1 = the reference's order)")
    args = ap.parse_args()

    cfg = setup_config(args, batch_size=args.batch_size)
    s = open_session(cfg)
    n = len(s.lm.blocks)
    ppl = lambda: s.perplexity("wikitext2", "test", args.seqlen, args.eval_windows)  # noqa: E731
    windows, origin = s.eval_windows("wikitext2", "test", args.seqlen, args.eval_windows)
    rows = [("dense", "-", ppl(), 0.0)]
    stats = s.stats("wanda")
    for target in [float(t) for t in args.targets.split(",") if t]:
        for spec in args.allocations.split(","):
            t = time.perf_counter()
            ratios = allocate(stats, spec, target).ratios
            s.prune_sequential(ratios, "wanda")
            rows.append((spec, f"{target:.0%}", ppl(), time.perf_counter() - t))
    for target in [float(t) for t in args.reference.split(",") if t]:
        s.restore()
        t = time.perf_counter()
        s.prune_sequential(np.full(n, target), "wanda")
        ours, our_masks = ppl(), masks(s)
        s.restore()
        prune_wanda(s.lm.model, s.calibration_windows().to(s.lm.device), target)
        ref = ppl()
        theirs, per_layer = masks(s), len(s.lm.linear_layers(0))
        same = [int((a == b).sum()) / a.numel() for a, b in zip(our_masks, theirs)]
        first, last = np.mean(same[:per_layer]), np.mean(same[-per_layer:])
        overall = sum(int((a == b).sum()) for a, b in zip(our_masks, theirs)) / sum(m.numel() for m in our_masks)
        rows.append((f"reference Wanda (ours {ours:.3f}, diff {100 * (ours / ref - 1):+.2f}%, same mask "
                     f"{100 * overall:.3f}%: first block {100 * first:.3f}%, last {100 * last:.3f}%)",
                     f"{target:.0%}", ref, time.perf_counter() - t))
    seeds = [int(x) for x in args.seeds.split(",") if x]
    for target in [float(t) for t in args.seed_targets.split(",") if t] if seeds else []:
        for spec in args.allocations.split(","):
            values = []
            for seed in seeds:  # calibration windows drawn with another seed: how much of a gap is noise
                s.restore()  # a new session snapshots the weights it finds as its dense weights
                other = PruningSession(s.lm, cfg.calib, cfg.nsamples, cfg.seqlen, seed, cfg.data_source)
                other.prune_sequential(allocate(other.stats("wanda"), spec, target).ratios, "wanda")
                values.append(other.perplexity("wikitext2", "test", args.seqlen, args.eval_windows))
            rows.append((f"{spec}, calibration seeds {args.seeds}: " + " / ".join(f"{v:.1f}" for v in values)
                         + " (mean)", f"{target:.0%}", float(np.mean(values)), 0.0))
    s.restore()
    print(f"\nprotocol: WikiText-2 test ({origin}), seqlen {args.seqlen}, {windows.shape[0]} windows; calibration "
          f"{args.nsamples} windows from {s.calib_origin}, seed 0; {s.lm.device} {s.lm.dtype}")
    print(f"{'allocation':<92}{'target':>8}{'ppl':>12}{'seconds':>10}")
    for name, target, p, sec in rows:
        print(f"{name:<92}{target:>8}{p:>12.3f}{sec:>10.1f}")


if __name__ == "__main__":
    main()
