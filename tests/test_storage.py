"""Tests of storage/db.py, storage/history.py and storage/records.py: round trips, filters, refusals,
concurrent writers in several processes, and a locked database."""

import multiprocessing
import sqlite3
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import optuna
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from storage import ExperimentNotFound, ExperimentRecord, History, StorageError, open_database
from storage.db import check_database
from tests.strategies import TEXT, json_values

CONFIG = {"model": "HuggingFaceTB/SmolLM2-135M", "metric": "wanda", "pattern": "unstructured", "sparsity": 0.5,
          "allocation": "owl", "calib": "wikitext2", "nsamples": 128, "seqlen": 2048, "seed": 0}


@pytest.fixture
def history(tmp_path):
    db = open_database(f"sqlite:///{tmp_path / 'history.db'}")
    yield History(db)
    db.close()


def rows(history: History) -> list:
    """Every row as plain dicts, to show that a refused call changed nothing."""
    return [r.to_dict() for r in history.find(limit=None)]


def test_save_and_get_round_trip(history):
    saved = history.save("evaluation", CONFIG, name="OWL 50%", status="done", protocol={"eval": "wikitext2"},
                         results={"ppl": 21.5, "ratios": [0.4, 0.6]}, environment={"torch": "2.13.0"},
                         tags=["owl", "baseline"], notes="first try")
    got = history.get(saved.id)
    assert got == saved
    assert len(got.id) == 32 and int(got.id, 16) >= 0
    assert got.model == CONFIG["model"]
    assert got.created_at.tzinfo == UTC and got.updated_at == got.created_at
    assert abs(got.created_at - datetime.now(UTC)) < timedelta(minutes=1)
    assert (got.results, got.tags, got.notes, got.status) == ({"ppl": 21.5, "ratios": [0.4, 0.6]},
                                                              ["owl", "baseline"], "first try", "done")


def test_record_dict_round_trip(history):
    saved = history.save("structural", CONFIG, results={"removed_heads": [1, 2]}, source={"origin": "a.json"})
    assert ExperimentRecord.from_dict(saved.to_dict()) == saved
    with pytest.raises(StorageError, match="Unknown experiment fields: colour"):
        ExperimentRecord.from_dict({**saved.to_dict(), "colour": "red"})


def test_records_are_detached_copies(history):
    config = dict(CONFIG)
    saved = history.save("search", config)
    config["model"] = "changed"
    saved.config["sparsity"] = 0.9
    assert history.get(saved.id).config == CONFIG


def test_numpy_values_are_stored_as_plain_json(history):
    saved = history.save("evaluation", CONFIG, results={"ratios": np.array([0.25, 0.75], dtype=np.float32),
                                                        "ppl": np.float64(12.5), "steps": (1, 2)})
    assert history.get(saved.id).results == {"ratios": [0.25, 0.75], "ppl": 12.5, "steps": [1, 2]}


def test_update_changes_fields_and_time(history):
    saved = history.save("search", CONFIG, name="search")
    time.sleep(0.002)
    history.update(saved.id, results={"generation": 3, "best": [0.5, 0.5]}, status="done", tags=["good"],
                   config={**CONFIG, "model": "other/model"})
    got = history.get(saved.id)
    assert got.status == "done" and got.results == {"generation": 3, "best": [0.5, 0.5]} and got.tags == ["good"]
    assert got.model == "other/model" and history.find(text="other/model") == [got]
    assert got.updated_at > saved.updated_at and got.created_at == saved.created_at


def test_update_refusals_change_nothing(history):
    saved = history.save("search", CONFIG)
    before = rows(history)
    with pytest.raises(ExperimentNotFound, match="No experiment with id 'f+'"):
        history.update("f" * 32, status="done")
    with pytest.raises(StorageError, match="Unknown experiment status 'exploded'"):
        history.update(saved.id, status="exploded")
    with pytest.raises(StorageError, match=r"results\.loss is nan"):
        history.update(saved.id, status="done", results={"loss": float("nan")})
    with pytest.raises(StorageError, match="Cannot update 'created_at'"):
        history.update(saved.id, created_at=datetime.now(UTC))
    assert rows(history) == before


@pytest.mark.parametrize("kwargs, message", [
    (dict(kind="training"), "Unknown experiment kind 'training'"),
    (dict(status="paused"), "Unknown experiment status 'paused'"),
    (dict(results={"ppl": float("inf")}), r"results\.ppl is inf, which JSON cannot hold"),
    (dict(results={"by_block": {3: 0.5}}), r"results\.by_block has a key 3 that is not text"),
    (dict(environment={"device": object()}), r"environment\.device is a object"),
    (dict(tags=["a\"b"]), "holds quotes"),
    (dict(tags="owl"), "not a single string"),
    (dict(name="x" * 201), "at most 200"),
    (dict(id="not-a-hex-id"), "is not an experiment id"),
])
def test_save_refuses_what_cannot_be_stored(history, kwargs, message):
    history.save("evaluation", CONFIG)
    before = rows(history)
    with pytest.raises(StorageError, match=message):
        history.save(**{"kind": "evaluation", "config": CONFIG, **kwargs})
    assert rows(history) == before


def test_save_refuses_a_taken_id(history):
    saved = history.save("evaluation", CONFIG, name="original")
    with pytest.raises(StorageError, match=f"id {saved.id} already exists"):
        history.save("search", {}, id=saved.id, name="intruder")
    assert rows(history) == [saved.to_dict()]


def test_find_filters_order_and_paging(history):
    t0 = datetime(2025, 1, 1, tzinfo=UTC)
    made = [
        history.save("evaluation", {"model": "SmolLM2-135M"}, name="OWL 50% run", status="done",
                     tags=["owl", "Paper"], created_at=t0),
        history.save("search", {"model": "Llama-3-8B"}, name="evolution", status="running", tags=["owl-50"],
                     created_at=t0 + timedelta(days=1)),
        history.save("sweep", {"model": "smollm2-360M"}, name="sweep_a", status="failed", tags=["café"],
                     created_at=t0 + timedelta(days=2)),
        history.save("evaluation", {}, name="dense", status="done", created_at=t0 + timedelta(days=3)),
    ]
    ids = lambda records: [r.id for r in records]
    newest_first = ids(reversed(made))
    assert ids(history.find()) == newest_first
    assert ids(history.find(limit=2, offset=1)) == newest_first[1:3]
    assert ids(history.find(kind="evaluation")) == [made[3].id, made[0].id]
    assert ids(history.find(status="done", kind="evaluation", text="owl")) == [made[0].id]
    assert ids(history.find(text="SMOLLM2")) == [made[2].id, made[0].id]  # model, ignoring case
    assert ids(history.find(text="50%")) == [made[0].id]  # % is matched literally
    assert ids(history.find(text="_")) == [made[2].id]  # _ too
    assert ids(history.find(tag="owl")) == [made[0].id]  # one whole tag, not a prefix of "owl-50"
    assert ids(history.find(tag="paper")) == [made[0].id]
    assert ids(history.find(tag="café")) == [made[2].id]
    assert ids(history.find(created_after=t0 + timedelta(days=1), created_before=t0 + timedelta(days=2))) == \
        [made[2].id, made[1].id]
    naive = datetime(2025, 1, 3, 12)  # naive datetimes are read as UTC
    assert ids(history.find(created_after=naive)) == [made[3].id]
    assert history.count() == 4 and history.count(kind="evaluation", status="done") == 2
    with pytest.raises(StorageError, match="Unknown filters: colour"):
        history.find(colour="red")
    with pytest.raises(StorageError, match="Unknown experiment kind"):
        history.find(kind="bogus")


def test_delete_one_and_many(history):
    a, b, c = (history.save("evaluation", CONFIG, name=n) for n in "abc")
    assert history.delete(a.id) == 1
    assert history.delete([b.id, "0" * 32, b.id]) == 1
    assert history.delete([]) == 0
    assert [r.id for r in history.find()] == [c.id]
    with pytest.raises(ExperimentNotFound):
        history.get(a.id)


def test_compare_keeps_order_and_names_missing_ids(history):
    a, b, c = (history.save("evaluation", CONFIG, name=n) for n in "abc")
    assert [r.name for r in history.compare([c.id, a.id, b.id])] == ["c", "a", "b"]
    assert [r.name for r in history.compare([b.id, b.id])] == ["b", "b"]
    history.delete(b.id)
    with pytest.raises(ExperimentNotFound, match=rf"1 of 3 experiments are not in the history \({b.id}\)"):
        history.compare([a.id, b.id, c.id])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(results=st.dictionaries(st.text(TEXT, max_size=8), json_values, max_size=5))
def test_any_json_results_round_trip(history, results):
    saved = history.save("search", CONFIG, results=results)
    assert history.get(saved.id).results == results
    history.update(saved.id, results={"again": results})
    assert history.get(saved.id).results == {"again": results}


# ---- opening the database ------------------------------------------------------------------------------------

def test_sqlite_settings(tmp_path):
    with open_database(f"sqlite:///{tmp_path / 'h.db'}", busy_timeout=3) as db:
        with db.engine.connect() as conn:
            pragma = lambda name: conn.exec_driver_sql(f"PRAGMA {name}").scalar()
            assert (pragma("journal_mode"), pragma("foreign_keys"), pragma("busy_timeout")) == ("wal", 1, 3000)
    tables = sqlite3.connect(tmp_path / "h.db").execute("SELECT name FROM sqlite_master WHERE type='table'")
    assert {name for (name,) in tables} == {"experiments", "storage_meta"}


def test_url_from_environment_then_default_path(tmp_path, monkeypatch):
    monkeypatch.setenv("DSA_DATABASE_URL", f"sqlite:///{tmp_path / 'from-env.db'}")
    with open_database() as db:
        History(db).save("evaluation", CONFIG)
    assert (tmp_path / "from-env.db").exists()
    monkeypatch.delenv("DSA_DATABASE_URL")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    with open_database() as db:
        History(db).save("evaluation", CONFIG)
    assert (tmp_path / "home" / ".local" / "share" / "sparsity-explorer" / "history.db").exists()


def test_in_memory_database_is_shared_between_threads():
    with open_database("sqlite://") as db:
        history = History(db)
        saved = history.save("evaluation", CONFIG)
        seen = []
        thread = threading.Thread(target=lambda: seen.append(history.get(saved.id)))
        thread.start()
        thread.join()
        assert seen == [saved]


@pytest.mark.parametrize("url, message", [
    ("sqlite:////nonexistent-folder/deeper/history.db", "cannot be used: unable to open database file"),
    ("not a url", "is not a database URL"),
    ("postgresql+nosuchdriver://user:secret@localhost/history", "its database driver is missing"),
])
def test_unusable_urls_are_storage_errors(url, message):
    with pytest.raises(StorageError, match=message) as caught:
        open_database(url)
    assert "secret" not in str(caught.value)


def files(folder: Path) -> dict[str, bytes]:
    """Every file of a folder with its bytes: a refused database is left as it was, and no journal appears."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def another_programs_database(path: Path, *statements: str) -> None:
    conn = sqlite3.connect(path)
    for statement in statements:
        conn.execute(statement)
    conn.commit()
    conn.close()


def test_foreign_schema_is_refused_and_left_alone(tmp_path):
    another_programs_database(tmp_path / "other.db", "CREATE TABLE experiments (id TEXT PRIMARY KEY, title TEXT)")
    before = files(tmp_path)
    with pytest.raises(StorageError, match="without the columns .*kind.*not written by this version"):
        open_database(f"sqlite:///{tmp_path / 'other.db'}")
    assert files(tmp_path) == before  # not even switched to WAL


@pytest.mark.parametrize("refuse", [open_database, check_database])
def test_another_programs_database_is_refused_and_left_alone(tmp_path, refuse):
    another_programs_database(tmp_path / "app.db", "CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)",
                              "INSERT INTO customers (name) VALUES ('Ada')")
    before = files(tmp_path)
    with pytest.raises(StorageError, match=r"holds another program's tables \(customers\) .* left untouched"):
        refuse(f"sqlite:///{tmp_path / 'app.db'}")
    assert files(tmp_path) == before


def test_a_search_study_and_the_history_share_one_database(tmp_path):
    url = f"sqlite:///{tmp_path / 'h.db'}"
    optuna.create_study(study_name="s", storage=url)  # a search that ran before the history was opened
    check_database(url)
    with open_database(url) as db:
        History(db).save("search", CONFIG)
    assert optuna.load_study(study_name="s", storage=url).study_name == "s"


def test_newer_schema_version_is_refused(tmp_path):
    url = f"sqlite:///{tmp_path / 'h.db'}"
    open_database(url).close()
    with sqlite3.connect(tmp_path / "h.db") as conn:
        conn.execute("UPDATE storage_meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(StorageError, match="schema version 99, newer than"):
        open_database(url)


def test_locked_database_is_a_clear_storage_error(tmp_path):
    db = open_database(f"sqlite:///{tmp_path / 'h.db'}", busy_timeout=0.2)
    history = History(db)
    saved = history.save("evaluation", CONFIG)
    before = rows(history)
    other = sqlite3.connect(tmp_path / "h.db", isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    other.execute("INSERT INTO storage_meta VALUES ('held', 'by another program')")
    try:
        start = time.monotonic()
        with pytest.raises(StorageError, match="is busy: another program held a lock on it"):
            history.save("evaluation", CONFIG)
        assert 0.15 < time.monotonic() - start < 5
        with pytest.raises(StorageError, match="is busy"):
            history.update(saved.id, status="done")
        with pytest.raises(StorageError, match="is busy"):
            history.delete(saved.id)
        assert rows(history) == before  # readers still see the last commit (WAL)
    finally:
        other.execute("ROLLBACK")
        other.close()
    history.update(saved.id, status="done")
    assert history.get(saved.id).status == "done" and history.count() == 1
    db.close()


def test_threads_sharing_one_database(history):
    def work(worker):
        for i in range(10):
            record = history.save("search", {"model": f"thread-{worker}"}, name=str(i))
            history.update(record.id, status="done", results={"i": i})
            history.find(limit=5)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert history.count(status="done") == 60 and history.count(text="thread-5") == 10


# ---- several processes writing at once ----------------------------------------------------------------------

WRITERS, PER_WRITER, UPDATES = 4, 25, 3


def _writer(url: str, worker: int, barrier, queue) -> None:
    """Runs in a spawned process: saves experiments and updates each as a search would."""
    try:
        ids = []
        with open_database(url) as db:
            history = History(db)
            barrier.wait(timeout=60)
            for i in range(PER_WRITER):
                record = history.save("search", {"model": f"worker-{worker}", "i": i}, name=f"w{worker}-{i}")
                for step in range(UPDATES):
                    history.update(record.id, results={"generation": step, "worker": worker})
                history.update(record.id, status="done")
                ids.append(record.id)
        queue.put(ids)
    except BaseException as e:  # report every failure to the parent, which fails the test
        queue.put(f"{type(e).__name__}: {e}")


def test_concurrent_writers_in_several_processes(tmp_path):
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    open_database(url).close()
    ctx = multiprocessing.get_context("spawn")
    barrier, queue = ctx.Barrier(WRITERS), ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(url, w, barrier, queue)) for w in range(WRITERS)]
    for p in procs:
        p.start()
    reports = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert [r for r in reports if isinstance(r, str)] == [] and all(p.exitcode == 0 for p in procs)
    with open_database(url) as db:
        history = History(db)
        records = history.find(limit=None)
        assert {r.id for r in records} == {i for ids in reports for i in ids}
        assert len(records) == WRITERS * PER_WRITER
        assert all(r.status == "done" and r.results["generation"] == UPDATES - 1 for r in records)
        assert history.count(text="worker-3") == PER_WRITER
