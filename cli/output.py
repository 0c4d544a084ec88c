"""What a recorded command prints: its result as one JSON object or as its table, with the id the history holds it
under (storage.Recorder) when it was recorded."""

from __future__ import annotations

import json
from collections.abc import Callable

from storage.recorder import Run


def print_result(result: dict, run: Run, as_json: bool, table: Callable[[dict], None]) -> None:
    if run.stored:
        result["history_id"] = run.id
    if as_json:
        print(json.dumps(result))
    else:
        table(result)
