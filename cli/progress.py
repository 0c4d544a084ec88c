"""Progress on the command line: a run's reporter that shows one tqdm bar per phase on stderr (stdout keeps the
table or JSON) and, when given, prints what the run publishes."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from tqdm import tqdm

from dsa_core.reporter import Reporter


class TerminalReporter(Reporter):
    def __init__(self, bars: bool = True, on_event: Callable[[Any], None] | None = None):
        super().__init__()
        self._show_bars, self._on_event = bars, on_event
        self._bars: dict[str, tqdm] = {}

    def on_progress(self, phase: str, done: int, total: int) -> None:
        if not self._show_bars:
            return
        bar = self._bars.get(phase)
        if bar is None or bar.total != total or done < bar.n:
            if bar is not None:
                bar.close()
            bar = self._bars[phase] = tqdm(total=total, desc=phase, file=sys.stderr, leave=False)
        bar.update(done - bar.n)

    def on_event(self, item: Any) -> None:
        if self._on_event is not None:
            self._on_event(item)
