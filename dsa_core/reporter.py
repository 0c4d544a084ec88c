"""The one object through which a run tells whoever started it how far it is, and is told to stop.

Every runner takes one (`pipeline.run_evaluation`, `comparison.compare`, `search.run_search`,
`structural.runner.run_structural`), whichever front end started it: the web app's `ui.jobs.Job` and the command
line's `cli.progress.TerminalReporter` subclass it, and a script passes a plain `Reporter`, an `EventLog` (which
keeps what it hears) or none.

    reporter = Reporter()
    result = run_search(session, cfg, study, reporter)   # from another thread: reporter.cancel()
    reporter.eta()                                        # seconds left, or None

- `progress(phase, done, total)` (or calling the reporter): where the work is. Once `cancel()` was called, the next
  call raises `Cancelled`, which unwinds the work at the next block or window (`update` records it without that).
- `stop`: the event `cancel()` sets. A search watches it between candidates and returns what it found rather than
  raising.
- `begin(stage, index, count)`: a run made of similar parts (the allocations of a comparison) says which one runs.
- `event(item)`: what a run publishes as it goes: a search's `SearchEvent` per candidate, a comparison's row, a
  structural run's training point.
- `time_left(seconds)`: what the run itself estimates is left (a search with a time budget, a structural run after
  each training step); `eta()` prefers it and otherwise works it out from the progress.

Subclasses override `on_progress`, `on_event` and `on_time_left` to show them. No UI and no torch here.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from dsa_core.errors import Cancelled


class Reporter:
    def __init__(self, name: str = "the run"):
        self.name = name
        self.stop = threading.Event()
        self.stage = ""  # which part runs, in words (e.g. "uniform at 50% (2 of 4)")
        self.part: tuple[int, int] | None = None  # (index, count) when the run is made of similar parts
        self.phase, self.done, self.total = "starting", 0, 0
        self.started = time.perf_counter()
        self._counting_since = self.started  # when the current count (done of total) began
        self._told: tuple[float, float] | None = None  # (seconds left, when) as the work said

    # --- what a run calls -------------------------------------------------------------------------------------

    def progress(self, phase: str, done: int, total: int) -> None:
        if self.stop.is_set():
            raise Cancelled(f"{self.name[:1].upper() + self.name[1:]} was cancelled.")
        self.update(phase, done, total)

    __call__ = progress  # the engine's progress callbacks take (phase, done, total)

    def update(self, phase: str, done: int, total: int) -> None:
        """`progress` without the cancellation check, for work that stops on its own when cancelled (a search)."""
        if done < self.done or total != self.total:  # a new count begins (the next phase, the next part)
            self._counting_since = time.perf_counter()
        self.phase, self.done, self.total = phase, done, total
        self.on_progress(phase, done, total)

    def begin(self, stage: str, index: int | None = None, count: int | None = None) -> None:
        self.stage = stage
        self.part = (index, count) if index is not None and count else None

    def event(self, item: Any) -> None:
        self.on_event(item)

    def time_left(self, seconds: float, how: str = "") -> None:
        """What the run estimates is left; `how`: what the estimate is made of, for a front end that says it."""
        self._told = (seconds, time.perf_counter())
        self.on_time_left(seconds, how)

    # --- what a front end calls -------------------------------------------------------------------------------

    def cancel(self) -> None:
        self.stop.set()

    @property
    def cancelled(self) -> bool:
        return self.stop.is_set()

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def eta(self) -> float | None:
        """Seconds left, as the work said or from its progress: the share done of its parts (or of its current
        count) against the time spent on it; None until there is enough to go by."""
        now = time.perf_counter()
        if self._told is not None and self._told[0] - (now - self._told[1]) > 0:
            return self._told[0] - (now - self._told[1])
        if not self.total or not self.done:
            return None
        share = min(1.0, self.done / self.total)
        if self.part is not None:
            index, count = self.part
            share, spent = (index + share) / count, now - self.started
        else:
            spent = now - self._counting_since
        if share <= 0 or spent < 1:
            return None
        return spent * (1 - share) / share

    # --- what a front end overrides ---------------------------------------------------------------------------

    def on_progress(self, phase: str, done: int, total: int) -> None:
        """Show the progress (called after it is recorded)."""

    def on_event(self, item: Any) -> None:
        """Show or keep what the run published."""

    def on_time_left(self, seconds: float, how: str) -> None:
        """Show what the run estimates is left (called every time it says)."""


def reporter_or_silent(reporter: Reporter | None) -> Reporter:
    """The reporter a runner was given, or one nobody watches."""
    return reporter if reporter is not None else Reporter()


class EventLog(Reporter):
    """A reporter that keeps every event it hears in `events`, in order (for a script, a notebook or a test)."""

    def __init__(self, name: str = "the run"):
        super().__init__(name)
        self.events: list[Any] = []

    def on_event(self, item: Any) -> None:
        self.events.append(item)
