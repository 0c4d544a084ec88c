"""Long device work (loading, scoring, evaluating, searching) run in a worker thread, so that a Gradio generator
handler can stream its progress while a button in another event cancels it.

A `Job` is also the progress callback that dsa_core takes, `(phase, done, total)`: once cancelled, the next call
raises `Cancelled` inside the engine, which unwinds the work at the next block or window. Searches instead watch
`cancel_requested` as their stop event and return what they found. No Gradio and no model code here.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from dsa_core.errors import DSAError
from ui import escape

log = logging.getLogger(__name__)


class Cancelled(DSAError):
    """The user cancelled the job before it finished."""


class Busy(DSAError):
    """Another job holds the device."""


class Job:
    """One call of `fn(job)` in a daemon thread: its progress, its published items, its outcome."""

    def __init__(self, name: str):
        self.name = name
        self.cancel_requested = threading.Event()
        self.stage = ""  # which part of a multi-part job runs (e.g. "uniform, 2 of 4")
        self.phase, self.done, self.total = "starting", 0, 0
        self.events: list[Any] = []  # what the job publishes as it goes (search events); appended by one thread
        self.started = time.perf_counter()
        self._thread: threading.Thread | None = None
        self._result: Any = None
        self._error: BaseException | None = None

    def __call__(self, phase: str, done: int, total: int) -> None:
        """The progress callback: records where the work is, and stops it once cancelled."""
        if self.cancel_requested.is_set():
            raise Cancelled(f"{self.name.capitalize()} was cancelled.")
        self.phase, self.done, self.total = phase, done, total

    def publish(self, item: Any) -> None:
        self.events.append(item)

    def cancel(self) -> None:
        self.cancel_requested.set()

    def start(self, fn: Callable[[Job], Any]) -> Job:
        def run() -> None:
            try:
                self._result = fn(self)
            except BaseException as e:  # handed to the waiting handler, which shows it or re-raises it
                if not isinstance(e, DSAError):
                    log.exception("%s failed", self.name)
                self._error = e

        self._thread = threading.Thread(target=run, name=f"job-{self.name}", daemon=True)
        self._thread.start()
        return self

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def updates(self, every: float = 0.3) -> Iterator[Job]:
        """Yields the job every `every` seconds while it runs (for a handler to stream), then once at the end."""
        while self.running:
            self._thread.join(every)
            yield self

    def result(self) -> Any:
        """What `fn` returned; re-raises what it raised (Cancelled when it was cancelled)."""
        if self._thread is not None:
            self._thread.join()
        if self._error is not None:
            raise self._error
        return self._result

    def stop_and_wait(self) -> None:
        """Cancel and wait for the thread to leave the device (when the page that started it goes away)."""
        if self.running:
            self.cancel()
            self._thread.join()

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def status(self) -> str:
        """One line of Markdown: what runs, how far it is, for how long."""
        where = f"{escape.markdown(self.stage)} · " if self.stage else ""  # it may name the model typed
        count = f" {self.done}/{self.total}" if self.total else f" {self.done}" if self.done else ""
        bar = ""
        if self.total:
            filled = round(20 * self.done / self.total)
            bar = f" `{'█' * filled}{'░' * (20 - filled)}`"
        stopping = " · stopping…" if self.cancel_requested.is_set() else ""
        return f"Running **{self.name}** · {where}{self.phase}{count}{bar} · {self.elapsed():.1f} s{stopping}"
