"""Seconds per phase and peak memory of one sequential prune + perplexity, plus re-masking from the cache.

    python bench/bench_engine.py --model smollm2 --nsamples 128 --seqlen 2048          # GPU, full test split
    python bench/bench_engine.py --nsamples 8 --seqlen 512 --eval-windows 4            # CPU quick run
    python bench/bench_engine.py --model random:llama-2-7b --eval-windows 40           # 7B shape, GPU

Prints a table: load, calibration, scoring (fast-mode cache), pruning (sequential Wanda), perplexity,
re-masking (median of 10 new allocations from the cache), end-to-end (load + sequential prune + ppl), peak memory;
on a GPU, next to each phase its physical floor (bench/floors.py) and measured / floor.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import floors  # noqa: E402
from bench.setup_options import add_setup_options, setup_config  # noqa: E402
from dsa_core.pipeline import open_session, peak_memory_gb  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    ap = argparse.ArgumentParser()
    add_setup_options(ap)
    ap.add_argument("--sparsity", type=float, default=0.5)
    ap.add_argument("--skip-cache", action="store_true", help="skip the fast-mode cache (saves memory)")
    args = ap.parse_args()

    cfg = setup_config(args, sparsity=args.sparsity)
    t0 = time.perf_counter()
    s = open_session(cfg)
    dev = s.lm.device
    n = len(s.lm.blocks)
    s.prune_sequential(np.full(n, args.sparsity), "wanda")
    ppl = s.perplexity("wikitext2", "test", args.seqlen, args.eval_windows)
    end_to_end = time.perf_counter() - t0
    windows = s.eval_windows("wikitext2", "test", args.seqlen, args.eval_windows)[0].shape[0]
    rows = [(k, v) for k, v in s.timings.items()]
    rows.append(("end-to-end (load+calibrate+sequential prune+ppl)", end_to_end))
    if not args.skip_cache:
        s.scores("wanda")
        rows.append(("scoring (fast-mode cache, dense pass)", s.timings["scoring"]))
        rng = np.random.default_rng(0)
        remask = []
        for _ in range(10):
            ratios = np.clip(args.sparsity + rng.normal(0, 0.05, n), 0, 0.99)
            sync(dev)
            t = time.perf_counter()
            s.apply(ratios, "wanda")
            sync(dev)
            remask.append(time.perf_counter() - t)
        rows.append(("re-mask from cache (median of 10)", statistics.median(remask)))
    floor = {}
    if dev.type == "cuda":
        rate, bw = floors.matmul_rate(dev, s.lm.dtype), floors.bandwidth(dev)
        eval_tokens = windows * args.seqlen
        f = floors.phase_floors(s.lm.model.config, s.lm.prunable_params, s.lm.dtype.itemsize,
                                args.nsamples * args.seqlen, eval_tokens, args.seqlen, rate, bw)
        floor = {"pruning": f["pruning"], "perplexity": f["perplexity"], "scoring (fast-mode cache, dense pass)":
                 f["scoring"], "re-mask from cache (median of 10)": f["re-mask"]}
        print(f"\nmeasured on this GPU: matrix rate {rate / 1e12:.0f} TFLOP/s ({s.lm.dtype}), bandwidth "
              f"{bw / 1e9:.0f} GB/s")
    device_name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu x{torch.get_num_threads()}"
    print(f"\nmodel {cfg.model or 'smollm2'} ({s.lm.prunable_params / 1e6:.0f}M prunable), {device_name}, "
          f"{s.lm.dtype}, calibration {args.nsamples}x{args.seqlen}, {windows} eval windows, "
          f"Wanda {args.sparsity:.0%}: ppl {ppl:.3f}")
    print(f"{'phase':<52}{'seconds':>10}{'floor':>10}{'x floor':>9}")
    for name, sec in rows:
        line = f"{name:<52}{sec:>10.3f}"
        if name in floor:
            line += f"{floor[name]:>10.3f}{sec / floor[name]:>9.1f}"
        print(line)
    print(f"{'peak memory (GiB, ' + ('GPU allocated' if dev.type == 'cuda' else 'process RSS') + ')':<52}"
          f"{peak_memory_gb(dev):>10.2f}")


if __name__ == "__main__":
    main()
