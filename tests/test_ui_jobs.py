"""Jobs: work in a thread whose progress a handler streams and whose cancellation unwinds the engine."""

import threading
import time

import pytest

from dsa_core.errors import Cancelled, ConfigError
from ui.jobs import DeviceQueue, Job, duration


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
            job.stop.wait(0.01)

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
            job.stop.wait(0.01)

    job = Job("search").start(work)
    job.stop_and_wait()
    assert not job.running
    with pytest.raises(Cancelled):
        job.result()


def test_published_items_are_kept_in_order():
    job = Job("search").start(lambda job: [job.event(i) for i in range(5)])
    job.result()
    assert job.events == [0, 1, 2, 3, 4]


def test_time_left_comes_from_progress_parts_or_what_the_work_says(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(time, "perf_counter", lambda: now[0])
    job = Job("evaluation")
    assert job.eta() is None  # nothing to go by yet
    job("perplexity", 1, 4)
    now[0] += 10.0
    job("perplexity", 2, 4)  # the same count: half done in 10 s
    assert job.eta() == pytest.approx(10.0) and "≈ 10 s left" in job.status()
    job("pruning", 1, 10)  # a new count starts its own clock
    now[0] += 5.0
    job("pruning", 5, 10)
    assert job.eta() == pytest.approx(5.0)
    job.part = (1, 4)  # the second of four parts, half done: 3/8 of the job in 15 s
    assert job.eta() == pytest.approx(25.0)
    job.time_left(600.0)  # what the work says wins while it lasts
    now[0] += 60.0
    assert job.eta() == pytest.approx(540.0) and "≈ 9 min left" in job.status()
    job.cancel()
    assert "left" not in job.status() and "stopping" in job.status()


def test_durations_read_as_people_say_them():
    assert [duration(s) for s in (4.2, 89, 95, 3000, 5400, 4 * 3600 + 65)] == [
        "4 s", "89 s", "2 min", "50 min", "1 h 30 min", "4 h 01 min"]


def test_the_queue_keeps_order_and_a_page_withdraws_its_own_ticket():
    queue = DeviceQueue()
    first, second, third = queue.join("search", "a"), queue.join("evaluation", "b"), queue.join("sweep", "b")
    assert [queue.position(t) for t in (first, second, third)] == [1, 2, 3] and queue.front() is first
    assert queue.withdraw("b") is second and second.withdrawn.is_set() and not third.withdrawn.is_set()
    assert queue.position(second) == 0 and queue.position(third) == 2
    assert queue.withdraw("nobody") is None
    queue.leave(first)
    queue.leave(first)  # leaving twice is harmless
    assert queue.front() is third and queue.position(third) == 1
