"""Perplexity with the standard protocol: non-overlapping windows, ppl = exp(mean token NLL).

`perplexity` measures a model on token windows from dsa_core.data; it never changes weights.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from dsa_core.models import LoadedModel


@torch.no_grad()
def nll_sum(lm: LoadedModel, windows: torch.Tensor, batch_size: int,
            progress: Callable[[int, int], None] | None = None) -> tuple[float, int]:
    """Summed next-token NLL over all windows and the number of predicted tokens."""
    total, count = 0.0, 0
    for start in range(0, windows.shape[0], batch_size):
        ids = windows[start : start + batch_size].to(lm.device)
        logits = lm.model(input_ids=ids, use_cache=False).logits
        # Per window, so that float32 logits of one window at a time bound the extra memory.
        for b in range(ids.shape[0]):
            total += float(F.cross_entropy(logits[b, :-1].float(), ids[b, 1:], reduction="sum"))
        count += ids.shape[0] * (ids.shape[1] - 1)
        del logits
        if progress:
            progress(min(start + batch_size, windows.shape[0]), windows.shape[0])
    return total, count


def default_batch_size(device: torch.device) -> int:
    """Windows per forward pass when measuring: 8 on a GPU; 1 on a CPU, where batching gains nothing."""
    return 8 if device.type == "cuda" else 1


def perplexity(lm: LoadedModel, windows: torch.Tensor, batch_size: int | None = None,
               progress: Callable[[int, int], None] | None = None) -> float:
    total, count = nll_sum(lm, windows, batch_size or default_batch_size(lm.device), progress)
    return math.exp(total / count)
