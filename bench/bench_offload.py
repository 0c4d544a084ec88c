"""Sequential pruning and perplexity of a model whose decoder blocks live in CPU memory (dsa_core.offload).

    python bench/bench_offload.py --model random:llama-2-13b                       # 13B shape, one GPU
    python bench/bench_offload.py --model random:llama-2-7b --compare --eval-windows 8   # also resident: same ppl?

Loads the model on the CPU in bf16, keeps its blocks there and runs each on the GPU in turn: calibration, Wanda
(or --metric) sequential pruning at --sparsity, perplexity on WikiText-2 test windows. Prints seconds per phase,
peak GPU memory and peak host memory; with --compare, runs the same on a model resident on the GPU and says whether
the perplexities agree.
"""

from __future__ import annotations

import argparse
import gc
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cli.options import add_options  # noqa: E402
from dsa_core.config import EvalConfig  # noqa: E402
from dsa_core.models import load_model  # noqa: E402
from dsa_core.offload import offload_blocks  # noqa: E402
from dsa_core.session import PruningSession  # noqa: E402


def run(args: argparse.Namespace, offload: bool) -> dict:
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    lm = load_model(args.model, device="cpu", dtype=args.dtype)  # on the CPU either way: the same random weights
    if offload:
        offload_blocks(lm, "cuda")
    else:
        lm.model.to("cuda")
        lm.device = torch.device("cuda")
    load_s = time.perf_counter() - start
    s = PruningSession(lm, nsamples=args.nsamples, seqlen=args.seqlen, data_source=args.data_source)
    s.prune_sequential(np.full(len(lm.blocks), args.sparsity), args.metric)
    ppl = s.perplexity("wikitext2", "test", args.seqlen, args.eval_windows)
    torch.cuda.synchronize()
    row = {"mode": "offloaded" if offload else "resident", "load": load_s, **s.timings, "ppl": ppl,
           "gpu_gb": torch.cuda.max_memory_allocated() / 2**30,
           "host_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
    del s, lm
    gc.collect()
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_options(ap, EvalConfig, ("model", "metric", "sparsity", "nsamples", "seqlen", "eval_windows", "dtype",
                                 "data_source"), model={"default": "random:llama-2-13b"}, eval_windows={"default": 40},
                dtype={"default": "bf16"}, data_source={"default": "local"})
    ap.add_argument("--compare", action="store_true", help="also run with the model resident on the GPU")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("bench_offload: no CUDA GPU here; offloading keeps blocks off a GPU. Skipped.")
        return 0
    print(f"{torch.cuda.get_device_name()} | torch {torch.__version__} | {args.model} {args.dtype} | {args.metric} "
          f"{args.sparsity:.0%} sequential | calibration {args.nsamples}×{args.seqlen} | {args.eval_windows} windows")
    rows = [run(args, offload=True)] + ([run(args, offload=False)] if args.compare else [])
    keys = ["load", "calibration", "pruning", "perplexity", "gpu_gb", "host_gb", "ppl"]
    print(f"{'':<11}" + "".join(f"{k:>13}" for k in keys) + "   (seconds; peak GB)")
    for r in rows:
        print(f"{r['mode']:<11}" + "".join(f"{r.get(k, float('nan')):>13.3f}" for k in keys))
    if args.compare:
        same = rows[0]["ppl"] == rows[1]["ppl"]
        print(f"same perplexity offloaded and resident: {'yes' if same else 'no'} "
              f"({rows[0]['ppl']!r} vs {rows[1]['ppl']!r})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
