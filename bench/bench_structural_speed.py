"""Does the speed-up of structural pruning come from pruning? Prefill and decode throughput at batch 1 and 16 and
peak memory of a model of a given shape with random weights (speed does not depend on their values):

    stock                     the family's own transformers class (e.g. LlamaForCausalLM)
    DISP class, full widths   the compressed model's class with nothing pruned (fused q/k/v and gate/up)
    DISP-LLM 70% / 50%        the compressed class keeping 70% / 50% of the blocks' linear parameters, widths from
                              one global threshold on random channel scores (they differ block by block, as a
                              trained hypernetwork's do), multiples of 8; with `--prune-heads` ("heads too") random
                              head scores on the same threshold drop whole key/value heads, and their KV cache

Prefill: one forward pass over batch × prompt tokens that fills a static KV cache and keeps the last position's
logits (as generation does). Decode: `--new-tokens` greedy steps of one token per sequence with that cache (the
model's own forward, no generate() overhead); on a GPU each step is replayed from one CUDA graph, so that decode
time is the GPU's work on the weights rather than Python launching every layer's kernels (eagerly, the 7B shape
decoded 39 tokens/s at batch 1: 500 GB/s of the H200's 4.8 TB/s). The graph's first step must give the eager step's
logits (within GRAPH_GAP of their largest), else that batch decodes eagerly and the table says so. `--decode compile`
captures the step with the model's forward compiled by torch.compile: inductor fuses the small kernels (norms,
rotary, the pruned model's index_select/index_add) that kept a replayed 7B step at 6.4-7.0 ms (batch 1) where its
weights need 2.7 ms (the 50% model's decode at batch 16: 2,573 -> 3,537 tokens/s, bench/results/h200_round6.log);
the prefill stays eager. `--decode eager` measures the eager steps instead. Median of `--repeats`
after one warm-up. Peak memory: the most the CUDA allocator held while the model prefilled and decoded, counting its
weights, activations and cache, not other models resident at the time.

    python bench/bench_structural_speed.py --model random:llama-2-7b                      # GPU: the 7B shape, bf16
    python bench/bench_structural_speed.py --model random:llama-2-7b --decode compile     # GPU: fused, then graphed
    python bench/bench_structural_speed.py --model random:llama-2-7b --prune-heads        # GPU: heads selected too,
                                                                                          # beside channels alone
    python bench/bench_structural_speed.py --model random:llama-2-7b --breakdown          # GPU: where a step's
                                                                                          # time goes, by kernel
    python bench/bench_structural_speed.py --model random:llama-2-7b --attention flex_attention   # GPU
    python bench/bench_structural_speed.py --model random:tiny --device cpu --prompt-len 32 --new-tokens 4 \\
        --repeats 1                                                                          # CPU smoke run
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from transformers import StaticCache

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cli.options import add_options  # noqa: E402
from dsa_core.models import load_model  # noqa: E402
from dsa_core.structural.compressed import compress  # noqa: E402
from dsa_core.structural.layouts import Independent  # noqa: E402
from dsa_core.structural.selection import BlockShape, Selection  # noqa: E402
from dsa_core.structural.training import StructuralConfig  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Decoder:
    """Greedy decoding of one model at one prompt shape with a static KV cache. With `graph` (a GPU), the one-token
    step (forward, argmax, position + 1) is captured once in a CUDA graph and replayed: a step's kernels then run
    back to back, as a serving engine's do, and the static cache keeps every address the graph recorded. With
    `compiled` too, the captured step runs the forward compiled by torch.compile (fewer, fused kernels)."""

    def __init__(self, model, prompts: torch.Tensor, new_tokens: int, graph: bool, compiled: bool = False):
        self.model, self.new_tokens = model, new_tokens
        # The default mode: fused kernels without autotuning (minutes per shape on a 7B) or inductor's own CUDA
        # graphs (which would nest in ours: we capture the compiled step ourselves).
        self.forward = torch.compile(model.forward, dynamic=False) if compiled else model
        self.cache = StaticCache(config=model.config, max_cache_len=prompts.shape[1] + new_tokens)
        self.token = torch.zeros(prompts.shape[0], 1, dtype=torch.long, device=prompts.device)
        self.logits: torch.Tensor | None = None  # the last step's, kept where a graph recorded it
        self.position = torch.zeros(1, dtype=torch.long, device=prompts.device)
        self.graph = None
        if graph:
            self._prefill(prompts)
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):  # warm-up outside the capture: cuBLAS workspaces, kernel choice, compiling
                for _ in range(2 if compiled else 1):  # should a guard fail on the second, it recompiles here
                    self._step(self.forward)
            torch.cuda.current_stream().wait_stream(side)
            self._prefill(prompts)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self._step(self.forward)

    def _prefill(self, prompts: torch.Tensor) -> None:
        self.cache.reset()
        logits = self.model(input_ids=prompts, past_key_values=self.cache, use_cache=True, logits_to_keep=1).logits
        self.token.copy_(logits[:, -1:].argmax(-1))
        self.position.fill_(prompts.shape[1])

    def _step(self, forward) -> None:
        """One token with `forward`: the model itself (eager) or its compiled forward."""
        logits = forward(input_ids=self.token, past_key_values=self.cache, cache_position=self.position,
                         use_cache=True).logits
        if self.logits is None:
            self.logits = torch.empty_like(logits[:, -1])
        self.logits.copy_(logits[:, -1])
        self.token.copy_(logits[:, -1:].argmax(-1))
        self.position.add_(1)

    @torch.no_grad()
    def step_gap(self, prompts: torch.Tensor) -> float:
        """How far the replayed step's logits lie from the eager step's after the same prefill, relative to their
        largest: rounding apart (kernels chosen differently), they must be the same computation. Tokens are no test
        here: random weights give near-flat logits whose argmax rounding flips."""
        self._prefill(prompts)
        self._step(self.model)  # uncompiled: the reference for the compiled graph too
        eager = self.logits.float().clone()
        self._prefill(prompts)
        self._run_step()
        return float((self.logits.float() - eager).abs().max() / eager.abs().max())

    def _run_step(self) -> None:
        if self.graph is not None:
            self.graph.replay()
        else:
            self._step(self.model)

    @torch.no_grad()
    def time(self, prompts: torch.Tensor) -> tuple[float, float]:
        """Seconds of the prefill pass and of `new_tokens` decode steps."""
        device = prompts.device
        sync(device)
        start = time.perf_counter()
        self._prefill(prompts)
        sync(device)
        prefill = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(self.new_tokens):
            self._run_step()
        sync(device)
        return prefill, time.perf_counter() - start


# The most a replayed step's logits may differ from the eager step's, of their largest. Captured matmuls may take
# other cuBLAS kernels (another summation order); in bf16 each rounds at 2^-8 and 32 random blocks compound it: the
# 7B shape's stock class came out 3.6% apart. A real fault (a stale cache position or mask) moves them far more.
GRAPH_GAP = 0.1


# Kernel families by name: cuBLAS's (nvjet, sm90_xmma, cutlass...) matmuls, SDPA's attention, inductor's fused
# Triton kernels, then the rest (eager norms, rotary, index_select/index_add, copies).
KERNEL_KINDS = (("matmul", ("gemm", "gemv", "nvjet", "xmma", "cutlass", "splitk")),
                ("attention", ("fmha", "flash", "attention", "attn")), ("fused (triton)", ("triton",)))


TOP_KERNELS = 12  # the kernels of most time per step that the breakdown names


@torch.no_grad()
def kernel_breakdown(decoder: Decoder, prompts: torch.Tensor, steps: int = 4) -> dict:
    """GPU time of one decode step by kind of kernel, from the profiler (the step launched as the graph records
    it: eager or compiled); a replayed step's time less these kernels' sum is the gaps between them."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    decoder._prefill(prompts)
    sync(prompts.device)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            decoder._step(decoder.forward)
        sync(prompts.device)
    out = {"kernels": 0, "total_ms": 0.0, **{kind: 0.0 for kind, _ in KERNEL_KINDS}, "other": 0.0}
    by_name: dict[str, list[float]] = {}  # kernel name -> [ms, launches] per step
    for event in prof.events():
        if event.device_type != DeviceType.CUDA or "memcpy" in event.name.lower():
            continue
        ms = event.time_range.elapsed_us() / 1000 / steps
        name = event.name.lower()
        kind = next((k for k, keys in KERNEL_KINDS if any(key in name for key in keys)), "other")
        out[kind] += ms
        out["total_ms"] += ms
        out["kernels"] += 1 / steps
        totals = by_name.setdefault(event.name, [0.0, 0.0])
        totals[0] += ms
        totals[1] += 1 / steps
    out["top"] = sorted(([name, ms, n] for name, (ms, n) in by_name.items()), key=lambda t: -t[1])[:TOP_KERNELS]
    return out


def measure(model, vocab: int, batches: list[int], args, device: torch.device, resident: int) -> dict:
    """Throughput and peak memory of one model at each batch size; `resident` bytes belong to other models."""
    out = {}
    g = torch.Generator().manual_seed(0)
    graph = args.decode in ("graph", "compile") and device.type == "cuda"
    compiled = graph and args.decode == "compile"
    for b in batches:
        prompts = torch.randint(0, vocab, (b, args.prompt_len), generator=g).to(device)
        decoder = Decoder(model, prompts, args.new_tokens, graph, compiled)
        gap = decoder.step_gap(prompts) if graph else 0.0
        if gap > GRAPH_GAP:  # its timing would not count: time the eager steps, and say so in the table
            print(f"  the CUDA graph's step gives logits {gap:.1%} (of their largest) from the eager step's at batch "
                  f"{b}: decoding eagerly instead", file=sys.stderr)
            decoder.graph = None
        decoder.time(prompts)  # warm-up: kernels chosen, allocator grown
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        times = [decoder.time(prompts) for _ in range(args.repeats)]
        prefill, decode = statistics.median(t[0] for t in times), statistics.median(t[1] for t in times)
        peak = (torch.cuda.max_memory_allocated(device) - resident) / 2**30 if device.type == "cuda" else None
        breakdown = None
        if args.breakdown and device.type == "cuda" and b == batches[-1]:
            breakdown = {"step_ms": decode / args.new_tokens * 1000, **kernel_breakdown(decoder, prompts)}
        out[str(b)] = {"prefill_tokens_per_s": b * args.prompt_len / prefill,
                       "decode_tokens_per_s": b * args.new_tokens / decode, "peak_gb": peak,
                       "decode": "eager" if decoder.graph is None else
                                 "compiled cuda graph" if compiled else "cuda graph", "graph_logit_gap": gap,
                      "step_breakdown": breakdown}
        del decoder
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return out


def pruned_name(ratio: float, heads: bool) -> str:
    return f"DISP-LLM {ratio:.0%}" + (", heads too" if heads else "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="random:llama-2-7b", help="a random:<shape> (or any supported model)")
    ap.add_argument("--ratios", default="0.7,0.5", help="kept shares of the blocks' linear parameters")
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--prompt-len", type=int, default=512)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--decode", default="graph", choices=("graph", "compile", "eager"),
                    help="decode steps replayed from a CUDA graph (GPU only), from one of the step compiled by "
                         "torch.compile (GPU only), or run eagerly")
    ap.add_argument("--attention", default="sdpa", choices=("sdpa", "flex_attention"),
                    help="every model's attention: PyTorch's SDPA, or FlexAttention (under --decode compile, a "
                         "decode kernel that splits the cache across the GPU's SMs, however few heads a block keeps; "
                         "on the H200 no faster than SDPA's cuDNN kernel, bench/results/h200_round16.log)")
    ap.add_argument("--align", type=int, default=8)
    ap.add_argument("--breakdown", action="store_true",
                    help="GPU: also profile one decode step at the largest batch by kind of kernel")
    add_options(ap, StructuralConfig, ("device", "dtype", "prune_heads"))
    ap.add_argument("--json", default=None, help="write the measurements to this file")
    args = ap.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    if args.decode == "compile":  # one compilation per model and batch shape, all of the same forward's code
        torch._dynamo.config.cache_size_limit = 64
    ratios = [float(r) for r in args.ratios.split(",")]

    lm = load_model(args.model, args.device, args.dtype)
    lm.model.set_attn_implementation(args.attention)  # the compressed models take the dense model's
    device, vocab = lm.device, lm.model.config.vocab_size
    shape = BlockShape.from_config(lm.model.config)
    selections = {"DISP class, full widths": Selection.full(shape)}
    for heads in (False, True) if args.prune_heads else (False,):  # heads beside channels alone: what they add
        layout = Independent(shape, heads)
        g = torch.Generator().manual_seed(0)  # the same channel scores for both layouts
        scores = [torch.randn(w, generator=g) for w in layout.widths()]
        selections.update({pruned_name(r, heads): layout.fit(scores, r, args.align) for r in ratios})
    rows: dict[str, dict] = {}

    def row(name: str, model, block_params: int, resident: int) -> None:
        params = sum(p.numel() for p in model.parameters())
        weights = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**30
        rows[name] = {"block_params": block_params, "params": params, "weights_gb": weights,
                      "batches": measure(model, vocab, batches, args, device, resident)}
        print(f"  measured {name}", file=sys.stderr)

    row("stock", lm.model, shape.dense_params, 0)
    resident = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
    for name, sel in selections.items():
        model = compress(lm, sel)
        gc.collect()
        row(name, model, sel.params, resident)
        del model
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()

    title = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu x{torch.get_num_threads()}"
    modes = {v["decode"] for r in rows.values() for v in r["batches"].values()}
    graphed = "compiled by torch.compile, from a CUDA graph" if "compiled cuda graph" in modes else "from a CUDA graph"
    decoded = ("eager" if modes == {"eager"} else
               f"{graphed}, eagerly where its check failed: see the JSON's 'decode'" if "eager" in modes else graphed)
    print(f"\n{args.model} ({lm.arch}), {title}, {lm.dtype}, {args.attention}; prompt {args.prompt_len}, "
          f"{args.new_tokens} decode steps ({decoded}), median of {args.repeats}; widths multiples of {args.align}")
    cols = [(f"prefill b={b}", "prefill_tokens_per_s", b) for b in batches]
    cols += [(f"decode b={b}", "decode_tokens_per_s", b) for b in batches]
    cols += [(f"peak GB b={b}", "peak_gb", b) for b in batches]
    print(f"{'':<26}{'share':>8}{'params':>15}{'weights GB':>12}" + "".join(f"{c[0]:>15}" for c in cols))
    for name, r in rows.items():
        line = f"{name:<26}{r['block_params'] / shape.dense_params:>8.1%}{r['params']:>15,}{r['weights_gb']:>12.2f}"
        for _, key, b in cols:
            v = r["batches"][str(b)][key]
            line += f"{'-':>15}" if v is None else f"{v:>15.1f}" if key != "peak_gb" else f"{v:>15.2f}"
        print(line)
    full = rows["DISP class, full widths"]["batches"]
    for name in (n for n in rows if n.startswith("DISP-LLM")):
        pruned = rows[name]["batches"]
        parts = []
        for b in map(str, batches):
            parts.append(f"b={b}: prefill ×{pruned[b]['prefill_tokens_per_s'] / full[b]['prefill_tokens_per_s']:.2f}, "
                         f"decode ×{pruned[b]['decode_tokens_per_s'] / full[b]['decode_tokens_per_s']:.2f}"
                         + (f", peak memory ×{pruned[b]['peak_gb'] / full[b]['peak_gb']:.2f}"
                            if pruned[b]["peak_gb"] is not None else ""))
        print(f"{name} vs full widths: " + "; ".join(parts))
    broken = {name: r["batches"][str(batches[-1])]["step_breakdown"] for name, r in rows.items()
              if r["batches"][str(batches[-1])]["step_breakdown"]}
    if broken:
        kinds = [k for k, _ in KERNEL_KINDS] + ["other"]
        print(f"\none decode step at batch {batches[-1]}, ms: as decoded (replayed), the sum of its kernels, by kind")
        print(f"{'':<26}{'step':>8}{'kernels':>9}{'sum':>8}" + "".join(f"{k:>16}" for k in kinds))
        for name, k in broken.items():
            print(f"{name:<26}{k['step_ms']:>8.2f}{k['kernels']:>9.0f}{k['total_ms']:>8.2f}"
                  + "".join(f"{k[kind]:>16.2f}" for kind in kinds))
        for name, k in broken.items():
            print(f"\n{name}: the kernels of most time per step (ms, launches)")
            for kernel, ms, n in k["top"]:
                print(f"  {ms:7.3f} {n:5.0f}  {kernel[:110]}")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
