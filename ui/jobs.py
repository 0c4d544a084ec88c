"""Long device work (loading, scoring, evaluating, searching) run in a worker thread, so that a Gradio generator
handler can stream its progress while a button in another event cancels it.

A `Job` is the run's `dsa_core.reporter.Reporter`: the progress callback dsa_core takes (once cancelled, the next
call raises `Cancelled` inside the engine), the stop event a search watches, the events it publishes and its time
left. Work that waits for the device holds a `Ticket` in the `DeviceQueue`, so
that its page can say where it stands. No Gradio and no model code here.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from dsa_core.errors import DSAError
from dsa_core.reporter import EventLog
from ui import escape

log = logging.getLogger(__name__)


class Busy(DSAError):
    """Another job holds the device."""


def duration(seconds: float) -> str:
    """A time span as a status line says it: "40 s", "12 min", "1 h 05 min"."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds // 3600:.0f} h {seconds % 3600 // 60:02.0f} min"


class Job(EventLog):
    """One call of `fn(job)` in a daemon thread: the run's reporter (progress, cancellation, time left), what it
    published (`events`, appended by the job's thread), its outcome."""

    def __init__(self, name: str, owner: str = ""):
        super().__init__(name)
        self.owner = owner  # the page (session) that started it
        self._thread: threading.Thread | None = None
        self._result: Any = None
        self._error: BaseException | None = None

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

    def status(self) -> str:
        """One line of Markdown: what runs, how far it is, for how long."""
        where = f"{escape.markdown(self.stage)} · " if self.stage else ""  # it may name the model typed
        count = f" {self.done}/{self.total}" if self.total else f" {self.done}" if self.done else ""
        bar = ""
        if self.total:
            filled = round(20 * self.done / self.total)
            bar = f" `{'█' * filled}{'░' * (20 - filled)}`"
        stopping = " · stopping…" if self.cancelled else ""
        eta = self.eta()
        left = f" · ≈ {duration(eta)} left" if eta is not None and not stopping else ""
        return f"Running **{self.name}** · {where}{self.phase}{count}{bar} · {self.elapsed():.1f} s{left}{stopping}"


@dataclass(eq=False)
class Ticket:
    """A place in the device's queue: the work's name, the page that asked, and whether it was withdrawn."""

    name: str
    owner: str = ""
    withdrawn: threading.Event = field(default_factory=threading.Event)


class DeviceQueue:
    """Work waiting for the device, in order of arrival. The workspace starts a job only for the ticket at the
    front, once the device is free; a waiting page asks its position, and Cancel withdraws its ticket."""

    def __init__(self):
        self._tickets: list[Ticket] = []
        self._changed = threading.Condition()

    def join(self, name: str, owner: str = "") -> Ticket:
        ticket = Ticket(name, owner)
        with self._changed:
            self._tickets.append(ticket)
        return ticket

    def leave(self, ticket: Ticket) -> None:
        """Take the ticket out (its work started, failed to start, or its page went away); a no-op when out."""
        with self._changed:
            if ticket in self._tickets:
                self._tickets.remove(ticket)
                self._changed.notify_all()

    def withdraw(self, owner: str) -> Ticket | None:
        """Withdraw the first ticket this page holds (its Cancel button); None when it holds none."""
        with self._changed:
            ticket = next((t for t in self._tickets if t.owner == owner), None)
        if ticket is not None:
            ticket.withdrawn.set()
            self.leave(ticket)
        return ticket

    def position(self, ticket: Ticket) -> int:
        """1 for the front of the queue; 0 when the ticket is no longer in it."""
        with self._changed:
            return self._tickets.index(ticket) + 1 if ticket in self._tickets else 0

    def front(self) -> Ticket | None:
        with self._changed:
            return self._tickets[0] if self._tickets else None

    def wait(self, timeout: float) -> None:
        """Until the queue changes or `timeout` seconds pass (the running job's end is polled)."""
        with self._changed:
            self._changed.wait(timeout)
