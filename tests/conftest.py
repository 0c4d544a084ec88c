"""Shared fixtures: a tiny random LLaMA for fast unit tests and the real SmolLM2 for integration tests.

Tests use the shipped data (never the hub) so that results are reproducible offline, and a history database of their
own."""

import atexit
import os
import shutil
import tempfile

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Commands record their runs in the history by default: the tests' runs (and the command lines they start) go to a
# database of their own, never the user's.
_HISTORY = tempfile.mkdtemp(prefix="dsa-tests-")
atexit.register(shutil.rmtree, _HISTORY, True)
os.environ["DSA_DATABASE_URL"] = f"sqlite:///{_HISTORY}/history.db"
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
