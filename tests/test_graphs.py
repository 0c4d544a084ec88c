"""CUDA graph capture and replay of fixed work (the GPU tests need one; CI has none, the lent machines do)."""

import gc
import threading

import pytest
import torch

from dsa_core.graphs import CapturedWork, on_one_gpu

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")


def test_graphs_apply_only_on_a_gpu_that_holds_every_tensor():
    assert not on_one_gpu([torch.ones(2)], torch.device("cpu"))
    assert not on_one_gpu([torch.ones(2)], torch.device("cuda"))


@cuda
def test_replay_follows_inputs_changed_in_place_and_captures_again_when_one_moves():
    x = torch.ones(3, device="cuda")
    held = [x]
    double = CapturedWork(lambda: held[0] * 2, lambda: held, torch.device("cuda"))
    assert double().tolist() == [2, 2, 2]
    x.fill_(5)
    assert double().tolist() == [10, 10, 10]
    held[0] = torch.full((3,), 7.0, device="cuda")  # a new tensor: the old graph would read x
    assert double().tolist() == [14, 14, 14]


@cuda
def test_garbage_collected_mid_capture_does_not_break_it():
    """A dead graph freed by a collection in another thread during a capture would invalidate the capture."""
    holder = [CapturedWork(lambda: torch.ones(1, device="cuda") + 1, lambda: [], torch.device("cuda"))]
    holder[0]()
    calls = []

    def allocate():  # enough for automatic collections of the youngest generation
        for _ in range(100):
            [[] for _ in range(10)]

    def work():
        calls.append(1)
        if len(calls) == 2:  # the capture, after the warm-up: the old graph becomes young cyclic garbage now
            cycle = [holder.pop()]
            cycle.append(cycle)
            del cycle
            other = threading.Thread(target=allocate)
            other.start()
            other.join()
        return torch.ones(2, device="cuda") * 3

    threshold = gc.get_threshold()
    gc.set_threshold(1)
    try:
        assert CapturedWork(work, lambda: [], torch.device("cuda"))().tolist() == [3, 3]
    finally:
        gc.set_threshold(*threshold)
