"""Jobs: work in a thread whose progress a handler streams and whose cancellation unwinds the engine."""

import threading

import pytest

from dsa_core.errors import ConfigError
from ui.jobs import Cancelled, Job


def test_result_progress_and_status():
    release = threading.Event()

    def work(job: Job) -> int:
        job.stage = "part 1 of 1"
        job("scoring", 3, 4)
        release.wait(5)
        return 42

    job = Job("scoring").start(work)
    updates = job.updates(every=0.01)
    next(updates)
    assert job.running and "part 1 of 1 · scoring 3/4" in job.status() and "███████████████" in job.status()
    release.set()
    list(updates)
    assert not job.running and job.result() == 42


def test_cancel_unwinds_at_the_next_progress_call():
    started, calls = threading.Event(), []

    def work(job: Job) -> None:
        started.set()
        for i in range(1000):
            job("perplexity", i, 1000)  # what the engine calls per window
            calls.append(i)
            job.cancel_requested.wait(0.01)

    job = Job("evaluation").start(work)
    started.wait(5)
    job.cancel()
    assert "stopping" in job.status()
    with pytest.raises(Cancelled, match="Evaluation was cancelled"):
        job.result()
    assert len(calls) < 1000


def test_errors_are_handed_to_the_waiting_handler():
    def work(job: Job) -> None:
        raise ConfigError("Sparsity 2 is outside [0, 1).")

    job = Job("evaluation").start(work)
    with pytest.raises(ConfigError, match="outside"):
        job.result()


def test_stop_and_wait_leaves_the_device_free():
    def work(job: Job) -> None:
        while True:
            job("search", 0, 0)
            job.cancel_requested.wait(0.01)

    job = Job("search").start(work)
    job.stop_and_wait()
    assert not job.running
    with pytest.raises(Cancelled):
        job.result()


def test_published_items_are_kept_in_order():
    job = Job("search").start(lambda job: [job.publish(i) for i in range(5)])
    job.result()
    assert job.events == [0, 1, 2, 3, 4]
