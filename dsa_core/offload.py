"""Decoder blocks kept in CPU memory and brought to the GPU one at a time, for models that do not fit one GPU
together with what a session keeps beside them (the dense copy, calibration inputs, the score cache).

`offload_blocks(lm, "cuda")` puts everything but the decoder blocks (embeddings, final norm, LM head) on the GPU
and every block in CPU memory. A forward pre-hook on each block brings it to the GPU when it is called
and sends the block that was there back, copying its weights home only if they were changed in place meanwhile
(pruning does; a Parameter's version counter says so). The calibration loop, sequential pruning and perplexity
therefore run unchanged, each block on the GPU while it computes, and its pruning happens there too since a block
stays until the next one is called. Holds no scoring, pruning or evaluation of its own.
"""

from __future__ import annotations

import logging
from itertools import chain

import torch
from torch import nn

from dsa_core.models import LoadedModel

log = logging.getLogger(__name__)


def _tensors(module: nn.Module, recurse: bool = True) -> list[torch.Tensor]:
    return list(chain(module.parameters(recurse=recurse), module.buffers(recurse=recurse)))


class BlockOffloader:
    """Pre-hooks that keep at most one of `blocks` on `device` at a time; the others live in CPU memory."""

    def __init__(self, blocks: nn.ModuleList, device: torch.device):
        self.blocks, self.device = blocks, device
        self.resident: int | None = None
        self._home: dict[int, tuple[torch.Tensor, int]] = {}  # id(tensor) -> (its CPU copy, version when loaded)
        # Pageable, not pinned, memory: PyTorch's pinned allocator rounds each block up to a power of two, which
        # would cost up to twice the model's size in host memory for copies about twice as fast.
        for block in blocks:
            for t in _tensors(block):
                t.data = t.data.to("cpu")
        self._handles = [b.register_forward_pre_hook(self._hook(i)) for i, b in enumerate(blocks)]

    def _hook(self, index: int):
        def hook(module, args):
            self.load(index)

        return hook

    @torch.no_grad()
    def load(self, index: int) -> None:
        """Bring block `index` to the device, sending the resident one home first."""
        if self.resident == index:
            return
        self.evict()
        for t in _tensors(self.blocks[index]):
            self._home[id(t)] = (t.data, t._version)
            t.data = t.data.to(self.device, non_blocking=True, copy=True)
        self.resident = index

    @torch.no_grad()
    def evict(self) -> None:
        """Send the resident block home, writing back the tensors changed in place while it was away."""
        if self.resident is None:
            return
        for t in _tensors(self.blocks[self.resident]):
            home, version = self._home.pop(id(t))
            if t._version != version:
                home.copy_(t.data)
            t.data = home
        self.resident = None

    def remove(self) -> None:
        """Send the resident block home and take the hooks off; the blocks stay in CPU memory."""
        self.evict()
        for h in self._handles:
            h.remove()
        self._handles = []


def offload_blocks(lm: LoadedModel, device: str | torch.device = "cuda") -> BlockOffloader:
    """Run `lm` on `device` with its decoder blocks kept in CPU memory (see the module docstring). The model may
    be loaded anywhere; afterwards `lm.device` is `device`, where inputs go."""
    device = torch.device(device)
    in_blocks = {id(t) for block in lm.blocks for t in _tensors(block)}
    with torch.no_grad():
        for module in lm.model.modules():
            for t in _tensors(module, recurse=False):
                if id(t) not in in_blocks:
                    t.data = t.data.to(device)
    offloader = BlockOffloader(lm.blocks, device)
    lm.device = device
    resident = sum(t.numel() * t.element_size() for t in _tensors(lm.model) if id(t) not in in_blocks)
    log.info("Offloaded %d blocks to CPU memory; %.2f GB stay on %s", len(lm.blocks), resident / 2**30, device)
    return offloader
