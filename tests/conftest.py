"""Shared fixtures: a tiny random LLaMA for fast unit tests and the real SmolLM2 for integration tests.

Tests use the shipped data (never the hub) so that results are reproducible offline."""

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def tiny():
    from dsa_core.models import load_model

    return load_model("random:tiny", device="cpu")


@pytest.fixture(scope="session")
def smollm2():
    from dsa_core.models import load_model

    return load_model(None, device="cpu")


@pytest.fixture
def fresh_tiny():
    from dsa_core.models import load_model

    return load_model("random:tiny", device="cpu")


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: a second thread only adds synchronisation, which a busy machine makes very slow."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
