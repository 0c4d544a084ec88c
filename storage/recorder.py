"""Recorded experiments: the one lifecycle every run goes through, whichever front end starts it.

    recorder = Recorder(History(open_database()))
    with recorder.run("evaluation", cfg.to_dict(), name="OWL 50%") as run:   # saved as "running"
        run.progress({"rows": rows_so_far})                                 # partial results, kept
        run.done(results, protocol=protocol)                                # "done"
    # an exception in the block: "failed" with its message, or "cancelled" (Cancelled, Ctrl-C, a closed page),
    # the partial results kept either way

The web app's tabs, the command line (`--history URL`, `--no-history`) and Python code all record through here.
A history that cannot be written (locked, unreachable, deleted record) never costs the run its result: the
problem is reported once through `on_problem` (a warning in the log by default) and in `Run.problem`, and the
run goes on; a record that could not be saved at the start is saved whole at the next write that succeeds.
No UI, no torch; argparse only for the two shared command-line options.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import fields
from typing import Any

from dsa_core.errors import Cancelled, DSAError
from storage.db import open_database
from storage.errors import StorageError
from storage.history import History
from storage.records import ExperimentRecord, new_record

log = logging.getLogger(__name__)

# Ways a run ends early on purpose; anything else that escapes a run is a failure.
CANCELLATIONS = (Cancelled, KeyboardInterrupt, GeneratorExit)


def error_message(error: BaseException | str) -> str:
    """What a failed or cancelled run stores as its error: our errors' own sentence, else the exception named."""
    if isinstance(error, str):
        return error
    if isinstance(error, KeyboardInterrupt):
        return "Interrupted (Ctrl-C)."
    if isinstance(error, GeneratorExit):
        return "The page that started it was closed."
    return str(error) if isinstance(error, DSAError) else f"{type(error).__name__}: {error}"


class Run:
    """One recorded run. `results` holds what it found so far: `progress` and `done` write it, `fail` keeps it."""

    def __init__(self, recorder: Recorder, record: ExperimentRecord, stored: bool):
        self._recorder = recorder
        self.record = record  # as it should be stored now
        self.stored = stored  # whether the history holds it (a failed first save is retried on the next write)
        self.problem: str | None = None  # the last reason the history could not be written, for the user
        self.finished = False

    @property
    def id(self) -> str:
        return self.record.id

    @property
    def results(self) -> dict:
        return self.record.results

    @property
    def status(self) -> str:
        return self.record.status

    def progress(self, results: Mapping[str, Any]) -> None:
        """Replace the partial results and write them (a search calls this once per generation)."""
        self._write(results=dict(results))

    def done(self, results: Mapping[str, Any] | None = None, **changes: Any) -> None:
        """Finish as done with `results` (the partial ones when None); `changes`: protocol, environment."""
        self._write(status="done", results=dict(self.results if results is None else results), **changes)
        self.finished = True

    def fail(self, error: BaseException | str, results: Mapping[str, Any] | None = None) -> None:
        """Finish as cancelled (the user stopped it) or failed, keeping the partial results (or `results`) beside
        the error's message."""
        status = "cancelled" if isinstance(error, CANCELLATIONS) else "failed"
        kept = dict(self.results if results is None else results)
        self._write(status=status, results={**kept, "error": error_message(error)})
        self.finished = True

    def _write(self, **changes: Any) -> None:
        try:
            record = new_record(**{**_as_keywords(self.record), **changes})  # checked even when nothing is written
        except StorageError as e:  # a value no history can hold (a NaN perplexity): say so, keep what can be kept
            self._report(e)
            if "status" not in changes:
                return
            changes = {"status": changes["status"], "results": {**self.results, "error": str(e)}}  # still ends it
            record = new_record(**{**_as_keywords(self.record), **changes})
        self.record = record
        history = self._recorder.history
        if history is None:
            return
        try:
            if self.stored:
                history.update(self.id, **changes)
            else:
                history.add(record)
                self.stored = True
        except StorageError as e:
            self._report(e)

    def _report(self, error: StorageError) -> None:
        message = (f"The history could not record {self.record.kind} {self.id[:8]}: {error} The run goes on; its "
                   "result is shown here.")
        if message != self.problem:
            self._recorder.on_problem(message)
        self.problem = message


def _as_keywords(record: ExperimentRecord) -> dict:
    """The record's fields as new_record's keywords (dataclasses.asdict would copy every value once more)."""
    return {f.name: getattr(record, f.name) for f in fields(record)}


class Recorder:
    """Starts recorded runs in `history`; with None (recording turned off, or the history unreachable) runs go
    through the same lifecycle and nothing is written."""

    def __init__(self, history: History | None, on_problem: Callable[[str], None] = log.warning):
        self.history = history
        self.on_problem = on_problem

    def start(self, kind: str, config: Mapping[str, Any], **values: Any) -> Run:
        """Save a new run as running; `values` are new_record's keywords (name, tags, protocol, environment,
        results, notes)."""
        run = Run(self, new_record(kind, config, status="running", **values), stored=False)
        run._write()
        return run

    def resume(self, id: str, **fields: Any) -> Run:
        """Take up a recorded run again (a search resumed from its study): running once more, its results kept,
        its error cleared; `fields` change it too (its config, with a new budget). ExperimentNotFound when the
        history has no such run."""
        if self.history is None:
            raise StorageError("Recording is off, so no recorded run can be resumed.")
        record = self.history.get(id)
        results = {k: v for k, v in record.results.items() if k != "error"}
        run = Run(self, record, stored=True)
        run._write(status="running", results=results, **fields)
        return run

    @contextmanager
    def run(self, kind: str, config: Mapping[str, Any], **values: Any) -> Iterator[Run]:
        """`start`, then in the block: done when it ends without calling `done` itself, failed or cancelled when
        it raises (the exception goes on)."""
        run = self.start(kind, config, **values)
        try:
            yield run
        except BaseException as e:
            if not run.finished:
                run.fail(e)
            raise
        if not run.finished:
            run.done()


def open_recorder(url: str | None = None, *, enabled: bool = True,
                  on_problem: Callable[[str], None] = log.warning) -> Recorder:
    """A recorder over the history at `url` (None: the web app's, see storage.db.database_url). A history that
    cannot be opened is reported through `on_problem` and the runs go unrecorded, never stopped."""
    if not enabled:
        return Recorder(None, on_problem)
    try:
        return Recorder(History(open_database(url)), on_problem)
    except StorageError as e:
        on_problem(f"{e} This run is not recorded in the history; its result is shown here.")
        return Recorder(None, on_problem)


def add_history_options(parser: argparse.ArgumentParser) -> None:
    """--history [URL] and --no-history: a command's run is recorded in the web app's history unless told not to."""
    parser.add_argument("--history", nargs="?", const="", default="", metavar="URL",
                        help="record the run in this history database (default: the web app's, $DSA_DATABASE_URL "
                             "or ~/.local/share/sparsity-explorer/history.db)")
    parser.add_argument("--no-history", action="store_true", help="do not record the run in the history")


def recorder_from_args(args: argparse.Namespace) -> Recorder:
    return open_recorder(args.history or None, enabled=not args.no_history)
