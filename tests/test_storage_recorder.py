"""storage/recorder.py: a run's lifecycle (running → done / failed / cancelled, partial results kept), resuming one,
the command-line options, and a history that cannot be written: the run goes on and says why, and its record is
saved whole once the history can be written again."""

import argparse
import sqlite3

import pytest

from dsa_core.errors import Cancelled, ConfigError
from storage import History, Recorder, StorageError, open_database, open_recorder
from storage.recorder import add_history_options, recorder_from_args

CONFIG = {"model": "random:tiny", "sparsity": 0.5}


@pytest.fixture
def history(tmp_path):
    db = open_database(f"sqlite:///{tmp_path / 'h.db'}", busy_timeout=0.2)
    yield History(db)
    db.close()


def test_a_run_is_saved_running_then_done(history):
    with Recorder(history).run("evaluation", CONFIG, name="one", tags=["t"]) as run:
        assert history.get(run.id).status == "running" and run.stored
        run.progress({"rows": []})
        assert history.get(run.id).results == {"rows": []}
        run.done({"target": 0.5}, protocol={"windows": 2})
    record = history.get(run.id)
    assert (record.status, record.results, record.protocol, record.name, record.tags) == (
        "done", {"target": 0.5}, {"windows": 2}, "one", ["t"])


def test_a_block_that_ends_without_done_is_done_with_its_partial_results(history):
    with Recorder(history).run("search", CONFIG) as run:
        run.progress({"candidates": [], "generations": []})
    assert history.get(run.id).status == "done" and history.get(run.id).results == {"candidates": [],
                                                                                     "generations": []}


def test_a_failure_keeps_the_partial_results_and_the_users_message(history):
    recorder = Recorder(history)
    with pytest.raises(ConfigError), recorder.run("search", CONFIG) as run:
        run.progress({"best": "W:(NO_OP)-(VAR)-(NO_OP)"})
        raise ConfigError("Sparsity 2 is outside (0, 0.99).")
    record = history.get(run.id)
    assert record.status == "failed"
    assert record.results == {"best": "W:(NO_OP)-(VAR)-(NO_OP)", "error": "Sparsity 2 is outside (0, 0.99)."}
    with pytest.raises(KeyError), recorder.run("evaluation", CONFIG) as run:
        CONFIG["missing"]  # noqa: B018 (a bug in the run)
    assert history.get(run.id).results["error"] == "KeyError: 'missing'"  # a bug, named


@pytest.mark.parametrize("error,message", [
    (Cancelled("Search was cancelled."), "Search was cancelled."),
    (KeyboardInterrupt(), "Interrupted (Ctrl-C)."),
    (GeneratorExit(), "The page that started it was closed."),
])
def test_a_cancelled_run_keeps_what_it_found(history, error, message):
    with pytest.raises(type(error)), Recorder(history).run("structural", CONFIG) as run:
        run.progress({"curve": [{"step": 0, "loss": 1.0, "ce": 1.0, "ratio": 1.0}]})
        raise error
    record = history.get(run.id)
    assert record.status == "cancelled" and record.results["error"] == message
    assert record.results["curve"] == [{"step": 0, "loss": 1.0, "ce": 1.0, "ratio": 1.0}]


def test_fail_can_be_told_the_results_so_far(history):
    run = Recorder(history).start("structural", CONFIG)
    run.fail(Cancelled("Structural pruning was cancelled."), {"curve": []})
    assert history.get(run.id).results == {"curve": [], "error": "Structural pruning was cancelled."}
    assert run.finished and run.status == "cancelled"


def test_a_resumed_run_is_running_again_with_its_results_and_a_new_config(history):
    recorder = Recorder(history)
    run = recorder.start("search", CONFIG)
    run.fail(Cancelled("stopped"), {"candidates": [1]})
    again = recorder.resume(run.id, config={**CONFIG, "budget_candidates": 9})
    record = history.get(run.id)
    assert again.id == run.id and record.status == "running" and record.results == {"candidates": [1]}
    assert record.config["budget_candidates"] == 9
    with pytest.raises(StorageError, match="No experiment"):
        recorder.resume("0" * 32)


def test_a_locked_history_costs_the_run_nothing_and_says_why(history, tmp_path):
    said = []
    recorder = Recorder(history, on_problem=said.append)
    lock = sqlite3.connect(tmp_path / "h.db", isolation_level=None)
    lock.execute("BEGIN IMMEDIATE")  # another program holds the write lock
    run = recorder.start("evaluation", CONFIG, name="while locked")
    run.done({"target": 0.5})  # the run went on; its result is kept in memory
    assert not run.stored and run.status == "done" and run.results == {"target": 0.5}
    assert len(said) == 1 and "is busy" in said[0] and "The run goes on" in said[0] and run.problem == said[0]
    lock.execute("ROLLBACK")
    late = recorder.start("evaluation", CONFIG)
    lock.execute("BEGIN IMMEDIATE")
    late.progress({"rows": []})  # cannot be written now...
    lock.execute("ROLLBACK")
    late.done({"target": 0.7})  # ...the next write succeeds
    assert history.get(late.id).results == {"target": 0.7} and history.get(late.id).status == "done"
    assert history.find(text="while locked") == []
    run.done({"target": 0.5})  # once the lock is gone, the record is saved whole
    assert history.get(run.id).status == "done" and history.get(run.id).name == "while locked"


def test_an_unreachable_history_records_nothing_and_says_so_once(tmp_path):
    said = []
    recorder = open_recorder(f"sqlite:///{tmp_path / 'no' / 'such' / 'folder.db'}", on_problem=said.append)
    with recorder.run("evaluation", CONFIG) as run:
        run.done({"target": 0.5})
    assert recorder.history is None and not run.stored and run.results == {"target": 0.5}
    assert len(said) == 1 and "cannot be used" in said[0] and "not recorded" in said[0]


def test_values_that_cannot_be_stored_are_refused_at_the_start(history):
    with pytest.raises(StorageError, match="name"):
        Recorder(history).start("evaluation", CONFIG, name="x" * 1000)
    assert history.count() == 0


@pytest.mark.parametrize("argv,url,enabled", [
    ([], None, True), (["--history"], None, True), (["--history", "sqlite:///{path}"], "{path}", True),
    (["--no-history"], None, False),
])
def test_history_options(tmp_path, monkeypatch, argv, url, enabled):
    monkeypatch.setenv("DSA_DATABASE_URL", f"sqlite:///{tmp_path / 'default.db'}")
    parser = argparse.ArgumentParser()
    add_history_options(parser)
    path = tmp_path / "given.db"
    recorder = recorder_from_args(parser.parse_args([a.format(path=path) for a in argv]))
    if not enabled:
        assert recorder.history is None
        return
    expected = path if url else tmp_path / "default.db"
    db = recorder.history.db
    assert db.url == f"sqlite:///{expected}" and db.study_url == db.url


def test_results_no_history_can_hold_still_end_the_run_and_say_why(history):
    said = []
    run = Recorder(history, on_problem=said.append).start("evaluation", CONFIG)
    run.progress({"rows": []})
    run.done({"target": 0.5, "dense_ppl": float("nan")})
    record = history.get(run.id)
    assert record.status == "done" and record.results["rows"] == []  # the partial results, and why not the rest
    assert "results.dense_ppl is nan" in record.results["error"] and "results.dense_ppl is nan" in said[0]
