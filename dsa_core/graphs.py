"""Fixed GPU work captured once in a CUDA graph and replayed, for the work the search repeats per candidate.

Re-masking from the score cache and measuring the fitness windows launch thousands of small kernels each time
from Python. For a small model that CPU time is as long as the GPU work, and it is taken from the search's
breeding thread. A replay launches the captured kernels at once. They are the kernels of one eager pass, and on
the H100 the results equal the eager path's bit for bit (the GPU tests check it), although some run slower inside
a graph: the gain is the CPU time given back. Kernels read and write tensors at the addresses they had when
captured, so `CapturedWork` captures again whenever one of the tensors it is told about has moved. No model code.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

import torch

T = TypeVar("T")


def on_one_gpu(tensors: Iterable[torch.Tensor], device: torch.device) -> bool:
    """Whether CUDA graphs apply: `device` is a GPU and every tensor is on it (not so for blocks offloaded to CPU)."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return False
    index = device.index if device.index is not None else torch.cuda.current_device()
    return all(t.device.type == "cuda" and t.device.index == index for t in tensors)


class CapturedWork(Generic[T]):
    """`work()` captured in a CUDA graph on `device`; calling replays it and returns its (static) outputs.

    tensors: what the work reads or writes that lives outside it (weights, caches); when any of them has moved or
    been replaced since the capture, the next call captures again. Raises RuntimeError when capture fails (the work
    waits on the GPU, say): callers fall back to running the work eagerly."""

    def __init__(self, work: Callable[[], T], tensors: Callable[[], list[torch.Tensor]], device: torch.device):
        self.work, self.tensors, self.device = work, tensors, device
        self._captured: tuple[torch.cuda.CUDAGraph, T, list[int]] | None = None  # graph, outputs, addresses

    @torch.no_grad()
    def __call__(self) -> T:
        addresses = [t.data_ptr() for t in self.tensors()]
        if self._captured is None or self._captured[2] != addresses:
            self._captured = None  # a failed capture must not leave the old graph in place
            self._captured = (*self._capture(), addresses)
        graph, outputs, _ = self._captured
        graph.replay()
        return outputs

    def _capture(self) -> tuple[torch.cuda.CUDAGraph, T]:
        with torch.cuda.device(self.device):
            # Warm up on a side stream first, as PyTorch's CUDA graph notes ask: lazy initialisation is not capturable.
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                self.work()
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            # Collect now and not during the capture, in any thread (the search breeds on another): collecting a dead
            # graph destroys it, which a capture forbids. (torch.cuda.graph stopped collecting first in PyTorch 2.x.)
            gc.collect()
            collecting = gc.isenabled()
            gc.disable()
            try:
                with torch.cuda.graph(graph):
                    outputs = self.work()
            finally:
                if collecting:
                    gc.enable()
            return graph, outputs
