"""Physical floors of the engine's phases on this GPU: FLOPs at its measured matrix rate, bytes at its measured
memory bandwidth. A phase's floor is the time it could not beat even with perfect kernels, so measured / floor
shows how much is left to gain. Counted work (per token, of a LLaMA-family model):

- forward through the decoder blocks: 2 FLOPs per linear-layer parameter, plus causal attention (QKᵀ and AV,
  each 2 · head_dim FLOPs per head per visible key, seqlen / 2 keys on average);
- the LM head (perplexity only): 2 · hidden · vocab;
- sequential Wanda: each block runs twice (statistics on the dense block, outputs of the pruned one);
- re-masking: per prunable weight, read the dense copy and the int16 rank, write the weight.

Sorting the scores, tokenising and Python overhead have no floor here; they show up in the gap.
"""

from __future__ import annotations

import statistics
import time

import torch


def _timed(fn, device: torch.device, repeats: int = 5) -> float:
    fn()
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize(device)
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def matmul_rate(device: torch.device, dtype: torch.dtype, n: int = 8192) -> float:
    """Dense matrix-multiply FLOP/s of an n×n by n×n product in `dtype`."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    return 2 * n**3 / _timed(lambda: a @ b, device)


def bandwidth(device: torch.device, gib: float = 2.0) -> float:
    """Device-memory bytes/s of a large copy (bytes read + bytes written)."""
    src = torch.empty(int(gib * 2**30), dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    return 2 * src.numel() / _timed(lambda: dst.copy_(src), device)


def forward_flops(config, prunable_params: int, tokens: int, seqlen: int, head: bool) -> float:
    """FLOPs of one forward pass over `tokens` tokens in windows of `seqlen`."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    attention = config.num_hidden_layers * config.num_attention_heads * 2 * 2 * head_dim * seqlen / 2
    flops = tokens * (2 * prunable_params + attention)
    if head:
        flops += tokens * 2 * config.hidden_size * config.vocab_size
    return flops


def phase_floors(config, prunable_params: int, weight_bytes: int, calib_tokens: int, eval_tokens: int,
                 seqlen: int, rate: float, bw: float) -> dict[str, float]:
    """Seconds each engine phase needs at least, by the same names as PruningSession.timings."""
    block_pass = forward_flops(config, prunable_params, calib_tokens, seqlen, head=False) / rate
    return {
        "scoring": block_pass,
        "pruning": 2 * block_pass,
        "perplexity": forward_flops(config, prunable_params, eval_tokens, seqlen, head=True) / rate,
        "re-mask": prunable_params * (2 * weight_bytes + 2) / bw,
    }
