"""The helpers every tab shares: streaming a job's progress to Gradio outputs, and permalinks."""

import threading

import gradio as gr

from dsa_core.errors import ConfigError
from ui.jobs import Job
from ui.layout import error_text, permalink_for, stream_job

ID = "0123456789abcdef0123456789abcdef"


def endless(job: Job) -> None:
    while True:
        job("perplexity", 1, 2)
        job.cancel_requested.wait(0.01)


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
