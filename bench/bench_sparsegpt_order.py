"""How much do SparseGPT's masks depend on float rounding? Our own sequential SparseGPT run twice on the same
calibration windows: run B takes its calibration in batches of `--batch-b` windows (run A: `--batch-a`) and its
Hessians times `--scale-b`. Neither changes anything in exact arithmetic (SparseGPT's masks and weights do not depend
on H's scale), only the rounding: a stand-in for what differs between two implementations of one algorithm
(llm-compressor's averages H over windows where we average over tokens, with other kernels). Printed: the share of
weights both runs prune alike, over all blocks and in block 0 (same inputs in both), and the largest difference of
block 0's weights, per calibration size.

SparseGPT picks each 128-column block's mask by one threshold over all its rows and then updates the columns after
it, so one near-tie that falls the other way moves the threshold and the later weights, and the difference spreads.
Whether rounding starts that is a question of the Hessian's conditioning: with fewer calibration tokens than a
layer's columns it is rank-deficient. This is the yardstick for `bench_llmcompressor.py --recipe`: another tool
cannot be expected to agree with us more than we agree with ourselves.

    python bench/bench_sparsegpt_order.py --dtype fp64 --nsamples 2 --seqlen 128 --sizes 2x128,8x512 --scale-b 3
"""

from __future__ import annotations

import argparse
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.setup_options import add_setup_options, setup_config  # noqa: E402
from dsa_core import data  # noqa: E402
from dsa_core.allocation import allocate  # noqa: E402
from dsa_core.calibration import ActivationStats  # noqa: E402
from dsa_core.pipeline import open_session  # noqa: E402
from dsa_core.prune import prune_sequential  # noqa: E402


def masks(lm) -> list[list[torch.Tensor]]:
    return [[m.weight == 0 for m in lm.linear_layers(i).values()] for i in range(len(lm.blocks))]


@contextmanager
def hessians_scaled(factor: float):
    """Within the block, every Hessian SparseGPT reads is `factor` times ours (a bench-only patch)."""
    plain = ActivationStats.hessian_of
    ActivationStats.hessian_of = lambda self, name: plain(self, name) * factor
    try:
        yield
    finally:
        ActivationStats.hessian_of = plain


def agreement(a: list[list[torch.Tensor]], b: list[list[torch.Tensor]]) -> tuple[float, float]:
    same = [sum(int((x == y).sum()) for x, y in zip(p, q)) for p, q in zip(a, b)]
    total = [sum(x.numel() for x in p) for p in a]
    return sum(same) / sum(total), same[0] / total[0]


def main() -> None:
    ap = argparse.ArgumentParser()
    add_setup_options(ap)
    ap.add_argument("--sizes", default="2x128,8x512", help="calibration sizes, windows x tokens")
    ap.add_argument("--allocation", default="owl")
    ap.add_argument("--target", type=float, default=0.7)
    ap.add_argument("--batch-a", type=int, default=1)
    ap.add_argument("--batch-b", type=int, default=2)
    ap.add_argument("--scale-b", type=float, default=1.0, help="run B's Hessians times this factor")
    args = ap.parse_args()
    s = open_session(setup_config(args, metric="sparsegpt"))
    lm = s.lm
    ids = data.tokenize(lm.tokenizer, data.load_text(s.calib, "train", s.data_source).text)
    ratios = np.asarray(allocate(s.stats("sparsegpt"), args.allocation, args.target).ratios)
    print(f"model {args.model or 'smollm2'}, {lm.dtype}, {lm.device}; sparsegpt, {args.allocation} at "
          f"{args.target:.0%}; run A: batches of {args.batch_a} windows; run B: batches of {args.batch_b}, Hessians "
          f"x {args.scale_b:g}")
    print(f"{'calibration':<14}{'tokens':>8}{'same mask':>12}{'block 0':>10}{'block 0 max |dW|/max |W|':>26}")
    for size in args.sizes.split(","):
        n, seqlen = (int(v) for v in size.split("x"))
        windows = data.calibration_windows(ids, n, seqlen, 0, lm.window_bos)
        runs, block0 = [], []
        for batch, scale in ((args.batch_a, 1.0), (args.batch_b, args.scale_b)):
            s.restore()
            with hessians_scaled(scale):
                prune_sequential(lm, windows, "sparsegpt", ratios, "unstructured", batch)
            runs.append(masks(lm))
            block0.append([m.weight.clone() for m in lm.linear_layers(0).values()])
        same, first = agreement(*runs)
        gap = max(float((a - b).abs().max() / a.abs().max()) for a, b in zip(*block0))
        print(f"{size:<14}{n * seqlen:>8}{100 * same:>11.3f}%{100 * first:>9.3f}%{gap:>26.2e}", flush=True)
    s.restore()


if __name__ == "__main__":
    main()
