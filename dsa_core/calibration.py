"""The one calibration loop: capture what enters the first decoder block, then walk the blocks one by one.

Every method (Magnitude, Wanda, SparseGPT, OWL's statistics, the sequential and the fast mode) goes through
`capture_block_inputs` and `run_block`, with `ActivationStats` hooked on a block's linear layers to gather
what its scores need. Holding only one block's activations at a time is what lets 7B-class models
calibrate on one GPU. No scoring or masking here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from dsa_core.models import LoadedModel, widened


class _Captured(Exception):
    """Raised by the hook on block 0 to stop the forward pass once its inputs are recorded."""


@dataclass
class BlockInputs:
    """Hidden states entering a block, one tensor per calibration batch, and the keyword arguments
    (position embeddings, attention mask...) that the model passes to every block for that batch."""

    hidden: list[torch.Tensor]
    kwargs: list[dict]

    @property
    def tokens(self) -> int:
        return sum(h.shape[0] * h.shape[1] for h in self.hidden)

    def first(self, windows: int) -> BlockInputs:
        """The inputs of the first calibration windows, in whole batches: at least `windows` of them (a batch's
        keyword arguments, such as its attention masks, are shaped for the whole batch)."""
        count = 0
        for n, h in enumerate(self.hidden, 1):
            count += h.shape[0]
            if count >= windows:
                return BlockInputs(self.hidden[:n], self.kwargs[:n])
        return self


@torch.no_grad()
def capture_block_inputs(lm: LoadedModel, windows: torch.Tensor, batch_size: int) -> BlockInputs:
    """Run only the embedding part of the model and record the inputs of decoder block 0."""
    hidden, kwargs = [], []

    def hook(module, args, kw):
        hidden.append(args[0] if args else kw.pop("hidden_states"))
        kwargs.append({k: v for k, v in kw.items() if k != "hidden_states"})
        raise _Captured

    handle = lm.blocks[0].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for start in range(0, windows.shape[0], batch_size):
            ids = windows[start : start + batch_size].to(lm.device)
            try:
                lm.model(input_ids=ids, use_cache=False)
            except _Captured:
                pass
    finally:
        handle.remove()
    return BlockInputs(hidden, kwargs)


@torch.no_grad()
def run_block(block: nn.Module, inputs: BlockInputs) -> BlockInputs:
    """The block's outputs for every batch; these are the next block's inputs."""
    out = []
    for h, kw in zip(inputs.hidden, inputs.kwargs):
        y = block(h, **kw)
        out.append(y[0] if isinstance(y, tuple) else y)
    return BlockInputs(out, inputs.kwargs)


class ActivationStats:
    """Forward hooks on a block's linear layers that accumulate, per layer, the squared L2 norm of each
    input feature over all calibration tokens (Wanda's ‖X_j‖²) and, if asked, the Hessian 2/N·XXᵀ
    (SparseGPT). Layers fed the very same tensor (q/k/v, gate/up) share one accumulator, so shared
    inputs are reduced once."""

    def __init__(self, layers: dict[str, nn.Linear], hessian: bool = False):
        self.layers = layers
        self.hessian = hessian
        self.sq: dict[str, torch.Tensor] = {}
        self.H: dict[str, torch.Tensor] = {}
        self.count: dict[str, int] = {}
        self.root: dict[str, str] = {}
        self._prev: tuple[torch.Tensor | None, str | None] = (None, None)
        self._handles: list = []

    def __enter__(self) -> ActivationStats:
        self._handles = [m.register_forward_hook(self._hook(n)) for n, m in self.layers.items()]
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._prev = (None, None)

    def _hook(self, name: str):
        def hook(module, args, output):
            x = args[0]
            prev_x, prev_name = self._prev
            if x is prev_x:
                self.root[name] = self.root[prev_name]
                return
            self._prev = (x, name)
            self.root[name] = name
            x = widened(x.reshape(-1, x.shape[-1]))
            if name not in self.sq:
                self.sq[name] = torch.zeros(x.shape[1], dtype=x.dtype, device=x.device)
                self.count[name] = 0
                if self.hessian:
                    self.H[name] = torch.zeros(x.shape[1], x.shape[1], dtype=x.dtype, device=x.device)
            self.sq[name] += x.pow(2).sum(0)
            self.count[name] += x.shape[0]
            if self.hessian:
                self.H[name].addmm_(x.T, x)

        return hook

    def column_sqnorm(self, name: str) -> torch.Tensor:
        """Mean over tokens of X_j² for each input feature j (proportional to Wanda's ‖X_j‖²)."""
        r = self.root[name]
        return self.sq[r] / self.count[r]

    def hessian_of(self, name: str) -> torch.Tensor:
        """SparseGPT's H = 2/N · XXᵀ (float32, or float64 for a float64 model); a fresh tensor, safe to modify."""
        r = self.root[name]
        return self.H[r] * (2.0 / self.count[r])
