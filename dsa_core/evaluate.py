"""Perplexity with the standard protocol: non-overlapping windows, ppl = exp(mean token NLL).

`perplexity` measures a model on token windows from dsa_core.data; `FixedWindowsPerplexity` measures one set of
windows again and again, as the search does. Neither changes weights.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F

from dsa_core.graphs import CapturedWork, on_one_gpu
from dsa_core.models import LoadedModel, widened

log = logging.getLogger(__name__)


@torch.no_grad()
def nll_sum(lm: LoadedModel, windows: torch.Tensor, batch_size: int,
            progress: Callable[[int, int], None] | None = None) -> tuple[float, int]:
    """Summed next-token NLL over all windows and the number of predicted tokens."""
    total, count = 0.0, 0
    for start in range(0, windows.shape[0], batch_size):
        ids = windows[start : start + batch_size].to(lm.device)
        total = _accumulate(total, _window_nlls(lm, ids).tolist())
        count += ids.shape[0] * (ids.shape[1] - 1)
        if progress:
            progress(min(start + batch_size, windows.shape[0]), windows.shape[0])
    return total, count


def _accumulate(total: float, nlls: list[float]) -> float:
    """`total` plus each window's NLL in turn: the one order of nll_sum and FixedWindowsPerplexity, so that their
    results are equal (not sum(), which since Python 3.12 adds floats with compensation)."""
    for nll in nlls:
        total += nll
    return total


def _window_nlls(lm: LoadedModel, ids: torch.Tensor) -> torch.Tensor:
    """Each window's summed next-token NLL (float32; float64 for a float64 model), from one forward pass over
    the batch `ids`."""
    logits = lm.model(input_ids=ids, use_cache=False).logits
    # Per window, so that float32 logits of one window at a time bound the extra memory.
    return torch.stack([F.cross_entropy(widened(logits[b, :-1]), ids[b, 1:], reduction="sum")
                        for b in range(ids.shape[0])])


def default_batch_size(device: torch.device) -> int:
    """Windows per forward pass when measuring: 8 on a GPU; 1 on a CPU, where batching gains nothing."""
    return 8 if device.type == "cuda" else 1


LOGITS_PER_BATCH = 2**30  # a repeated measurement keeps its batch's logits in a CUDA graph's memory: bound them


def repeated_batch_size(lm: LoadedModel, seqlen: int) -> int:
    """Windows per forward pass of a measurement repeated in a CUDA graph: the default, fewer for a large
    vocabulary (Gemma's 262,144 logits a token take 1 GiB a window in bf16). SmolLM2 keeps 8."""
    vocab = lm.model.get_output_embeddings().weight.shape[0]
    return max(1, min(default_batch_size(lm.device), LOGITS_PER_BATCH // (seqlen * vocab)))


def perplexity(lm: LoadedModel, windows: torch.Tensor, batch_size: int | None = None,
               progress: Callable[[int, int], None] | None = None) -> float:
    total, count = nll_sum(lm, windows, batch_size or default_batch_size(lm.device), progress)
    return math.exp(total / count)


class FixedWindowsPerplexity:
    """`perplexity` of one fixed set of windows, measured again and again while the weights change in place: the
    search's fitness. On a GPU that holds the whole model, the forward passes and losses are replayed from a CUDA
    graph (dsa_core.graphs): a small model's forward launches kernels from Python (SmolLM2, 8 windows: about 1,400),
    and that CPU time is taken from the search's breeding thread. Elsewhere, or when capture fails, `perplexity`."""

    def __init__(self, lm: LoadedModel, windows: torch.Tensor, batch_size: int | None = None):
        self.lm, self.windows = lm, windows
        self.batch_size = batch_size or repeated_batch_size(lm, windows.shape[1])
        self.count = windows.shape[0] * (windows.shape[1] - 1)
        self.graph: CapturedWork[torch.Tensor] | None = None
        if on_one_gpu(_model_tensors(lm.model), lm.device):
            ids = windows.to(lm.device)  # there before capture: a copy from host memory is not capturable
            # Plain functions, not methods: a graph in a reference cycle is freed only by a garbage collection.
            self.graph = CapturedWork(partial(_batched_nlls, lm, ids, self.batch_size),
                                      partial(_model_tensors, lm.model), lm.device)

    def __call__(self) -> float:
        if self.graph is not None:
            try:
                nlls = self.graph().tolist()
            except RuntimeError as e:
                log.warning("Measuring perplexity without a CUDA graph, which failed: %s", str(e).splitlines()[0])
                self.graph = None
            else:
                return math.exp(_accumulate(0.0, nlls) / self.count)
        return perplexity(self.lm, self.windows, self.batch_size)


def _batched_nlls(lm: LoadedModel, ids: torch.Tensor, batch_size: int) -> torch.Tensor:
    starts = range(0, ids.shape[0], batch_size)
    return torch.cat([_window_nlls(lm, ids[start : start + batch_size]) for start in starts])


def _model_tensors(model: torch.nn.Module) -> list[torch.Tensor]:
    return [*model.parameters(), *model.buffers()]


class FixedWindowsKL:
    """Mean per-token KL(dense ‖ pruned) of the next-token distributions on fixed windows, measured again and again
    while the weights change in place: EvoPress's fitness. The dense logits are computed once, at construction (the
    model must be dense then), and kept as the model produced them, in its own dtype, so the dense model's KL is
    exactly 0: both sides go through the same log-softmax. On a GPU that holds the whole model it replays a CUDA
    graph, as FixedWindowsPerplexity does."""

    def __init__(self, lm: LoadedModel, windows: torch.Tensor, batch_size: int | None = None,
                 dense: list[torch.Tensor] | None = None):
        """`dense`: the dense logits of these windows and maybe more, in batches of `batch_size` from the first
        window (another FixedWindowsKL's `dense`), shared rather than computed again: a staged fitness's
        stages measure the first windows of its last stage, and Gemma's logits take 1 GB per window."""
        self.lm, self.windows = lm, windows
        self.batch_size = batch_size or repeated_batch_size(lm, windows.shape[1])
        self.count = windows.numel()
        ids = windows.to(lm.device)
        n, size = ids.shape[0], self.batch_size
        if dense is None:
            with torch.no_grad():
                dense = [lm.model(input_ids=ids[s : s + size], use_cache=False).logits for s in range(0, n, size)]
        self.dense = [d[: n - s] for s, d in zip(range(0, n, size), dense)]
        work = partial(_batched_kls, lm, ids, self.dense, self.batch_size)
        self.graph: CapturedWork[torch.Tensor] | None = None
        if on_one_gpu(_model_tensors(lm.model), lm.device):
            self.graph = CapturedWork(work, partial(_model_tensors, lm.model), lm.device)
        self.work = work

    def __call__(self) -> float:
        if self.graph is not None:
            try:
                return _accumulate(0.0, self.graph().tolist()) / self.count
            except RuntimeError as e:
                log.warning("Measuring KL without a CUDA graph, which failed: %s", str(e).splitlines()[0])
                self.graph = None
        return _accumulate(0.0, self.work().tolist()) / self.count


@torch.no_grad()
def _batched_kls(lm: LoadedModel, ids: torch.Tensor, dense: list[torch.Tensor], batch_size: int) -> torch.Tensor:
    """Each window's summed KL(dense ‖ model) over its positions, in chunks of positions whose float32
    log-probabilities take at most ~2²⁷ values each (512 positions of Gemma's vocabulary, all of SmolLM2's)."""
    out = []
    for i, start in enumerate(range(0, ids.shape[0], batch_size)):
        logits = lm.model(input_ids=ids[start : start + batch_size], use_cache=False).logits
        chunk = max(1, 2**27 // logits.shape[-1])
        for b in range(logits.shape[0]):
            total = logits.new_zeros((), dtype=torch.promote_types(logits.dtype, torch.float32))
            for pos in range(0, logits.shape[1], chunk):
                p = F.log_softmax(widened(dense[i][b, pos : pos + chunk]), dim=-1)
                q = F.log_softmax(widened(logits[b, pos : pos + chunk]), dim=-1)
                total = total + F.kl_div(q, p, log_target=True, reduction="sum")
            out.append(total)
    return torch.stack(out)
