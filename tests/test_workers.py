"""dsa_core/workers.py without a server: devices per worker, claims, and a stale trial failed and re-enqueued
by the heartbeat (SQLite). tests/test_search_postgres.py runs real workers against PostgreSQL."""

import multiprocessing
import sqlite3
import time

import optuna
import pytest
from optuna.trial import TrialState

from cli.main import main
from dsa_core import workers as W
from dsa_core.errors import ConfigError
from dsa_core.search_config import SearchConfig
from dsa_core.studies import search_space
from storage import StorageError
from storage.db import open_study_storage


@pytest.mark.parametrize("visible,spec,expected", [
    ("3,5", "all", ["3", "5"]),
    ("3,5", "3", ["3", "5", "3"]),
    ("", "2", [None, None]),
    ("-1", "1", [None]),
])
def test_one_worker_per_visible_gpu_or_cpu_workers(monkeypatch, visible, spec, expected):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    assert W.worker_devices(spec) == expected


@pytest.mark.parametrize("visible,spec,message", [("", "all", "has none"), ("0", "0", "positive"), ("0", "x", "'x'")])
def test_bad_worker_counts_are_refused(monkeypatch, visible, spec, message):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    with pytest.raises(ConfigError, match=message):
        W.worker_devices(spec)


@pytest.mark.parametrize("url,file,message", [
    ("not a url", None, "is not a database URL"),
    ("sqlite:///{path}", "hello, not a database\n", "file is not a database"),
])
def test_a_storage_that_is_not_a_database_is_one_sentence(tmp_path, url, file, message):
    path = tmp_path / "notes.txt"
    if file:
        path.write_text(file)
    with pytest.raises(StorageError, match=message):
        open_study_storage(url.format(path=path))
    assert [p.read_text() for p in tmp_path.iterdir()] == ([file] if file else [])


@pytest.mark.parametrize("command", [
    ["search", "--model", "random:tiny", "--device", "cpu", "--nsamples", "2", "--seqlen", "64",
     "--data-source", "local", "--budget-candidates", "2", "--fitness-windows", "1", "--no-final"],
    ["worker", "--study", "s"],
])
def test_search_and_worker_leave_another_programs_database_untouched(tmp_path, capsys, command):
    path = tmp_path / "app.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
    conn.commit()
    conn.close()
    before = path.read_bytes()
    assert main([*command, "--storage", f"sqlite:///{path}"]) == 2
    err = capsys.readouterr().err
    assert "holds another program's tables (customers)" in err and err.count("\n") == 1
    assert [p.name for p in tmp_path.iterdir()] == ["app.db"] and path.read_bytes() == before  # no Optuna tables


def _open_at_once(url: str, barrier, results) -> None:
    barrier.wait()
    try:
        W.open_storage(url)
        results.put("ok")
    except ConfigError as e:
        results.put(str(e))


def test_processes_that_open_a_new_study_database_at_once_all_get_it(tmp_path):
    """Workers started together on a database not yet made each create Optuna's tables; the ones that lose that race
    look again instead of stopping (before this, 2 rounds in 3 had a worker stop with "table ... already exists")."""
    ctx = multiprocessing.get_context("spawn")
    for round_ in range(2):
        url = f"sqlite:///{tmp_path / f'new{round_}.db'}"
        barrier, results = ctx.Barrier(4), ctx.Queue()
        processes = [ctx.Process(target=_open_at_once, args=(url, barrier, results)) for _ in range(4)]
        for p in processes:
            p.start()
        outcomes = [results.get(timeout=120) for _ in processes]
        for p in processes:
            p.join()
        assert outcomes == ["ok"] * 4


def test_bad_heartbeat_setting_is_refused(monkeypatch):
    monkeypatch.setenv(W.HEARTBEAT_ENV, "0")
    with pytest.raises(ConfigError, match=W.HEARTBEAT_ENV):
        W.open_storage("sqlite://")


def test_a_function_complete_or_in_flight_is_not_claimed_again():
    study = optuna.create_study()
    space = search_space(SearchConfig())
    a, b, c = (W.ask(study, space) for _ in range(3))
    assert W.claim(study, a, "W:(NO_OP)-(MEAN)-(NO_OP)", budget=2) is None
    assert W.claim(study, b, "W:(NO_OP)-(MEAN)-(NO_OP)", budget=2) == "repeat"  # a has it in flight
    study.tell(a, 1.0)
    study.tell(b, state=TrialState.PRUNED)
    assert W.claim(study, c, "W:(NO_OP)-(MEAN)-(NO_OP)", budget=2) == "repeat"  # a has it complete
    d = W.ask(study, space)
    assert W.claim(study, d, "W:(NO_OP)-(STD)-(NO_OP)", budget=2) is None
    e = W.ask(study, space)
    assert W.claim(study, e, "W:(NO_OP)-(VAR)-(NO_OP)", budget=2) == "budget"  # a done + d in flight = 2
    progress = W.study_progress(study)
    assert set(progress.done) == {"W:(NO_OP)-(MEAN)-(NO_OP)"} and progress.in_flight == {
        "W:(NO_OP)-(STD)-(NO_OP)", "W:(NO_OP)-(VAR)-(NO_OP)"}


def test_a_trial_whose_worker_stopped_beating_is_failed_and_reenqueued(tmp_path, monkeypatch):
    monkeypatch.setenv(W.HEARTBEAT_ENV, "1")
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name="s", storage=W.open_storage(url))
    space = search_space(SearchConfig())
    dead = W.ask(study, space)
    with W.heartbeat(study, dead):  # beats once, then its "worker" stops beating without telling
        W.claim(study, dead, "W:(NO_OP)-(MEAN)-(NO_OP)", budget=None)
    W.fail_stale(study)
    assert study.get_trials()[0].state == TrialState.RUNNING  # still within the grace period
    time.sleep(W.GRACE_HEARTBEATS + 1.5)
    W.fail_stale(optuna.load_study(study_name="s", storage=W.open_storage(url)))  # any worker may notice
    failed, retry = study.get_trials()
    assert failed.state == TrialState.FAIL and retry.state == TrialState.WAITING
    assert retry.system_attrs["failed_trial"] == failed.number and retry.params == failed.params
    again = W.ask(study, space)
    assert again.number == retry.number and again.params == dead.params
