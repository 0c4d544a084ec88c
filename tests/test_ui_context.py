"""The helpers every tab shares: waiting for the device in order, streaming a job's progress to Gradio outputs,
and permalinks."""

import threading

import gradio as gr
import pytest

from dsa_core.errors import ConfigError
from ui.context import AppContext, error_text, owner_of, permalink_for, stream_job, wait_for_device
from ui.jobs import Busy, Job
from ui.workspace import Workspace

ID = "0123456789abcdef0123456789abcdef"


def endless(job: Job) -> None:
    while True:
        job("perplexity", 1, 2)
        job.stop.wait(0.01)


def test_a_closed_page_cancels_the_job_and_says_so():
    abandoned = []
    job = Job("evaluation").start(endless)
    stream = stream_job(job, 2, lambda r: ("done", r), lambda e: (error_text(e), None),
                        abandoned=lambda: abandoned.append(True))
    status, rest = next(stream)
    assert status.startswith("Running **evaluation**") and rest == gr.skip()
    stream.close()  # what Gradio does when the page goes away
    assert not job.running and abandoned == [True]


def test_finish_and_fail_end_the_stream():
    gate = threading.Event()
    done = Job("sweep").start(lambda job: gate.wait(5) and 7)
    stream = stream_job(done, 2, lambda r: ("finished", r), lambda e: ("failed", str(e)),
                        live=lambda job: ("live",), abandoned=lambda: (_ for _ in ()).throw(AssertionError))
    assert next(stream)[1] == "live"
    gate.set()
    assert list(stream)[-1] == ("finished", 7)

    def broken(job: Job) -> None:
        raise ConfigError("Give at least one target.")

    failed = list(stream_job(Job("sweep").start(broken), 2, lambda r: ("finished", r), lambda e: ("failed", str(e))))
    assert failed[-1] == ("failed", "Give at least one target.")


class FakeRequest:
    def __init__(self, headers: dict):
        self.headers = headers


def test_permalinks_use_the_page_address_when_the_browser_gives_it():
    page = FakeRequest({"referer": "https://host:7860/app/?experiment=" + "f" * 32 + "&x=1"})
    assert permalink_for(page, ID) == f"https://host:7860/app/?x=1&experiment={ID}"
    assert permalink_for(FakeRequest({}), ID) == f"?experiment={ID}"
    assert permalink_for(None, ID) == f"?experiment={ID}"


def drain(stream) -> tuple[list, object]:
    """Every value a generator yields, and what it returns."""
    values = []
    while True:
        try:
            values.append(next(stream))
        except StopIteration as end:
            return values, end.value


def test_work_waits_for_the_device_in_order_and_says_its_place():
    ws = Workspace("cpu")
    ctx = AppContext(ws, history=None)
    gate = threading.Event()
    ws.start("search", lambda job: gate.wait(10))
    first = wait_for_device(ctx, "evaluation", 2, None)
    status, rest = next(first)
    assert status.startswith("⏳ Queued (position 1): **evaluation** waits for the device; after **search**")
    assert rest == gr.skip()
    second = wait_for_device(ctx, "sweep", 2, None)
    status = next(second)[0]
    assert "Queued (position 2)" in status and "1 more waiting before it" in status
    with pytest.raises(Busy, match="busy with search"):  # nothing jumps the queue
        ws.start("load", lambda job: None)
    gate.set()
    _, ticket = drain(first)
    with pytest.raises(Busy, match="Evaluation is waiting"):  # the device is free, but promised
        ws.start("load", lambda job: None)
    assert ws.start("evaluation", lambda job: 7, ticket).result() == 7
    _, ticket = drain(second)
    assert ws.start("sweep", lambda job: 8, ticket).result() == 8 and ws.queue.front() is None


def test_cancel_withdraws_waiting_work_and_a_closed_page_leaves_the_queue():
    ws = Workspace("cpu")
    ctx = AppContext(ws, history=None)
    gate = threading.Event()
    running = ws.start("search", lambda job: gate.wait(10))
    waiting = wait_for_device(ctx, "evaluation", 2, None)
    next(waiting)
    assert ws.cancel(owner_of(None)) == "Withdrew evaluation from the queue."
    lines, ticket = drain(waiting)
    assert ticket is None and lines[-1][0].startswith("⚠ Evaluation was withdrawn from the queue")
    assert running.running  # the search of another page was not touched
    closed = wait_for_device(ctx, "sweep", 2, None)
    next(closed)
    closed.close()  # what Gradio does when the page goes away
    assert ws.queue.front() is None
    assert ws.cancel(owner_of(None)) == "Stopping search…"
    gate.set()
