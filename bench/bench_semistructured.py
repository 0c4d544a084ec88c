"""Real speed-up of 2:4 sparse linear layers on the GPU: dense matmul against PyTorch's semi-structured kernels.

    python bench/bench_semistructured.py                                   # LLaMA-2-7B and SmolLM2 shapes
    python bench/bench_semistructured.py --models llama-2-7b --tokens 2048 4096 --dtypes bf16

For each linear-layer shape (out × in) of a model, each token batch and each dtype, a random weight is pruned
2:4 by magnitude with the engine's own n:m ranking, converted once with `torch.sparse.to_sparse_semi_structured`
(cuSPARSELt, and CUTLASS where it runs), and `F.linear(x, W)` is timed with CUDA events against the dense pruned
weight. Prints one row per shape (ms and speed-up), then one per model block (its linear layers, each counted as
often as a block holds it). CUDA only: on a CPU it says so and exits.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dsa_core.scores import nm_rank  # noqa: E402

# (label, out_features, in_features, how many a decoder block holds)
SHAPES = {
    "llama-2-7b": [("q/k/v/o", 4096, 4096, 4), ("gate/up", 11008, 4096, 2), ("down", 4096, 11008, 1)],
    "llama-2-13b": [("q/k/v/o", 5120, 5120, 4), ("gate/up", 13824, 5120, 2), ("down", 5120, 13824, 1)],
    "smollm2-135m": [("q/o", 576, 576, 2), ("k/v", 192, 576, 2), ("gate/up", 1536, 576, 2), ("down", 576, 1536, 1)],
    "smollm2-1.7b": [("q/k/v/o", 2048, 2048, 4), ("gate/up", 8192, 2048, 2), ("down", 2048, 8192, 1)],
}
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def time_ms(fn, warmup: int, iters: int, repeats: int = 5) -> float:
    """Median over `repeats` of the mean milliseconds per call of `iters` back-to-back calls."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            fn()
        end.record()
        torch.cuda.synchronize()
        samples.append(start.elapsed_time(end) / iters)
    return statistics.median(samples)


def prune_2of4(weight: torch.Tensor) -> torch.Tensor:
    return weight * (nm_rank(weight.abs().float(), 4) >= 2)


def backends() -> list[str]:
    found = []
    cusparselt = getattr(torch.backends, "cusparselt", None)
    if cusparselt is not None and cusparselt.is_available():
        found.append("cusparselt")
    found.append("cutlass")
    return found


def sparse_weight(weight: torch.Tensor, backend: str):
    torch.sparse.SparseSemiStructuredTensor._FORCE_CUTLASS = backend == "cutlass"
    return torch.sparse.to_sparse_semi_structured(weight)


def bench_shape(out_f: int, in_f: int, tokens: int, dtype: torch.dtype, kinds: list[str], warmup: int,
                iters: int) -> dict:
    gen = torch.Generator(device="cuda").manual_seed(0)
    weight = prune_2of4(torch.randn(out_f, in_f, device="cuda", dtype=dtype, generator=gen))
    x = torch.randn(tokens, in_f, device="cuda", dtype=dtype, generator=gen)
    reference = F.linear(x, weight)
    row = {"dense": time_ms(lambda: F.linear(x, weight), warmup, iters)}
    for kind in kinds:
        try:
            sparse = sparse_weight(weight, kind)
            y = F.linear(x, sparse)
            err = float((y.float() - reference.float()).abs().max() / reference.float().abs().max())
            if err > 2e-2:  # a few units in the last place of fp16/bf16 outputs
                raise RuntimeError(f"wrong result (max relative error {err:.2e})")
            row[kind] = time_ms(lambda s=sparse: F.linear(x, s), warmup, iters)
        except (RuntimeError, NotImplementedError, ValueError, AssertionError) as e:  # a backend this GPU lacks
            row[kind] = None
            row[f"{kind}_error"] = str(e).splitlines()[0][:100]
    return row


def fmt(v: float | None, spec: str) -> str:
    return "n/a" if v is None else format(v, spec)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["llama-2-7b", "smollm2-135m", "smollm2-1.7b"], choices=SHAPES)
    ap.add_argument("--tokens", nargs="+", type=int, default=[2048, 4096, 8192, 16384])
    ap.add_argument("--dtypes", nargs="+", default=["fp16", "bf16"], choices=DTYPES)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--iters", type=int, default=20)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("bench_semistructured: no CUDA GPU here; PyTorch's semi-structured (2:4) kernels run on CUDA only. "
              "Skipped.")
        return 0

    kinds = backends()
    cusparselt = getattr(torch.backends, "cusparselt", None)
    version = cusparselt.version() if cusparselt is not None and cusparselt.is_available() else None
    print(f"{torch.cuda.get_device_name()} | torch {torch.__version__} | cuSPARSELt {version} | "
          f"median of 5 × {args.iters} calls after {args.warmup} warm-up calls; F.linear(x[tokens, in], W[out, in])")
    head = f"{'model':<13}{'layer':<9}{'out×in':>12}{'tokens':>8}{'dtype':>6}{'dense ms':>10}"
    head += "".join(f"{k + ' ms':>15}{'speed-up':>9}" for k in kinds)
    print(head)
    print("-" * len(head))
    errors: set[str] = set()
    for model in args.models:
        for dtype_name in args.dtypes:
            for tokens in args.tokens:
                block = {"dense": 0.0, **{k: 0.0 for k in kinds}}
                for label, out_f, in_f, count in SHAPES[model]:
                    row = bench_shape(out_f, in_f, tokens, DTYPES[dtype_name], kinds, args.warmup, args.iters)
                    shape = f"{out_f}×{in_f}"
                    line = f"{model:<13}{label:<9}{shape:>12}{tokens:>8}{dtype_name:>6}{row['dense']:>10.3f}"
                    for k in kinds:
                        speedup = None if row[k] is None else row["dense"] / row[k]
                        line += f"{fmt(row[k], '.3f'):>15}{fmt(speedup, '.2f'):>9}"
                        block[k] = None if row[k] is None or block[k] is None else block[k] + count * row[k]
                        if f"{k}_error" in row:
                            errors.add(f"{k} on {out_f}×{in_f} {dtype_name}: {row[f'{k}_error']}")
                    block["dense"] += count * row["dense"]
                    print(line)
                line = f"{model:<13}{'block':<9}{'':>12}{tokens:>8}{dtype_name:>6}{block['dense']:>10.3f}"
                for k in kinds:
                    speedup = None if block[k] is None else block["dense"] / block[k]
                    line += f"{fmt(block[k], '.3f'):>15}{fmt(speedup, '.2f'):>9}"
                print(line)
    for e in sorted(errors):
        print(f"note: {e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
