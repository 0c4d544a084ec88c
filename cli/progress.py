"""Progress on the command line: one tqdm bar per phase of a run, on stderr (stdout keeps the table or JSON)."""

from __future__ import annotations

import sys
from collections.abc import Callable

from tqdm import tqdm


def tqdm_progress() -> Callable[[str, int, int], None]:
    """A progress callback that shows one tqdm bar per phase on stderr."""
    bars: dict[str, tqdm] = {}

    def progress(phase: str, done: int, total: int) -> None:
        bar = bars.get(phase)
        if bar is None or bar.total != total or done < bar.n:
            if bar is not None:
                bar.close()
            bar = bars[phase] = tqdm(total=total, desc=phase, file=sys.stderr, leave=False)
        bar.update(done - bar.n)

    return progress
