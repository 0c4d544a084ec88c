"""Search workers sharing one study in a real PostgreSQL server, and the history database kept there too.

The server is Debian's, started by `make postgres` (which `make test`, hence CI, runs first); its URL comes in
DSA_TEST_POSTGRES_URL. Without that variable these tests are skipped, so that pytest runs where there is no
server; `make test` always sets it."""

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter

import optuna
import pytest
from optuna.trial import TrialState

from dsa_core.search_config import SearchConfig
from dsa_core.studies import create_study
from dsa_core.workers import HEARTBEAT_ENV

PG_URL = os.environ.get("DSA_TEST_POSTGRES_URL")
pytestmark = pytest.mark.skipif(not PG_URL, reason="DSA_TEST_POSTGRES_URL is unset; `make postgres` starts a "
                                "server and `make test` sets it")

# Candidates of about two seconds on the CPU, so that a worker can be killed in the middle of one.
SLOW = dict(model="random:tiny", nsamples=2, seqlen=512, fitness_windows=8, data_source="local", device="cpu",
            population=4)
BUDGET = 5


@pytest.fixture
def study_name():
    name = f"pg-{uuid.uuid4().hex[:10]}"
    yield name
    try:
        optuna.delete_study(study_name=name, storage=PG_URL)
    except KeyError:
        pass


def worker_env() -> dict:
    # A one-second heartbeat makes a dead worker's trial stale after five; one thread each keeps two workers
    # and this test from starving each other (and the heartbeat threads) on a small machine.
    return {**os.environ, HEARTBEAT_ENV: "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def start_worker(name: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "dsa_core", "worker", "--study", name, "--storage", PG_URL],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=worker_env())


def first_claim(study: optuna.Study, pids: list[int], timeout: float) -> tuple[int, int]:
    """(pid, trial number) of the first of these worker processes seen evaluating a trial."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            pid = int(t.user_attrs.get("worker", ":0").rsplit(":", 1)[1])
            if pid in pids and "text" in t.user_attrs:
                return pid, t.number
        time.sleep(0.05)
    raise AssertionError(f"no worker claimed a trial within {timeout} s")


def test_a_killed_worker_loses_no_trial_and_no_function_is_evaluated_twice(study_name, monkeypatch):
    monkeypatch.setenv(HEARTBEAT_ENV, "1")
    cfg = SearchConfig(**SLOW, budget_candidates=BUDGET, study=study_name, seed=11).validate()
    create_study(cfg, PG_URL)
    procs = [start_worker(study_name), start_worker(study_name)]
    study = optuna.load_study(study_name=study_name, storage=PG_URL)
    try:
        # The first worker seen mid-trial is killed (whichever started first); the other finishes the budget.
        pid, killed = first_claim(study, [p.pid for p in procs], timeout=180)
        victim, survivor = sorted(procs, key=lambda p: p.pid != pid)
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        out, err = survivor.communicate(timeout=300)
    finally:
        for p in procs:
            p.kill()
    assert survivor.returncode == 0, err[-3000:]

    trials = study.get_trials()
    by_number = {t.number: t for t in trials}
    assert {t.state for t in trials} <= {TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL}, \
        Counter(t.state.name for t in trials)
    assert by_number[killed].state == TrialState.FAIL  # killed mid-trial, failed by the survivor's heartbeat check

    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    texts = Counter(t.user_attrs["text"] for t in complete)
    assert max(texts.values()) == 1, texts  # no function complete twice...
    assert len(texts) == BUDGET  # ...and exactly the budget of distinct functions
    for failed in (t for t in trials if t.state == TrialState.FAIL):  # every failed trial was tried again
        retries = [t for t in trials if failed.number in t.system_attrs.get("retry_history", [])]
        assert retries and retries[0].params == failed.params
        assert retries[-1].state == TrialState.COMPLETE or retries[-1].user_attrs["text"] in texts
    for t in trials:
        if t.state == TrialState.PRUNED:  # skipped, never evaluated: a repeat or beyond the budget
            assert t.user_attrs["skipped"] in ("repeat", "budget")
            assert t.user_attrs["skipped"] == "budget" or t.user_attrs["text"] in texts

    report = json.loads(out.strip().splitlines()[-1])
    mine = [t for t in complete if t.user_attrs["worker"].endswith(f":{survivor.pid}")]
    theirs = [t for t in complete if t.user_attrs["worker"].endswith(f":{victim.pid}")]
    assert report["evaluated"] == len(mine) and len(mine) + len(theirs) == BUDGET


def test_search_starts_its_workers_with_one_command(study_name):
    args = ["--model", "random:tiny", "--nsamples", "2", "--seqlen", "64", "--device", "cpu", "--data-source",
            "local", "--population", "4", "--fitness-windows", "2", "--sparsity", "0.6", "--budget-candidates", "8",
            "--seed", "4", "--study", study_name, "--storage", PG_URL, "--workers", "2", "--no-final", "--json"]
    out = subprocess.run([sys.executable, "-m", "dsa_core", "search", *args], capture_output=True, text=True,
                         timeout=300, env=worker_env())
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout)
    study = optuna.load_study(study_name=study_name, storage=PG_URL)
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    texts = Counter(t.user_attrs["text"] for t in complete)
    assert len(texts) == 8 == result["evaluated"] and max(texts.values()) == 1
    assert result["best"] == min(complete, key=lambda t: t.value).user_attrs["text"]
    # Both workers ran to the end and reported; how the 8 candidates fell between them is timing (a worker still
    # loading its model when the other has finished gets none), and each trial names the worker that measured it.
    assert [w["device"] for w in result["workers"]] == ["CPU", "CPU"]
    assert sum(w["evaluated"] for w in result["workers"]) == 8
    assert 1 <= len({t.user_attrs["worker"] for t in complete}) <= 2
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING, TrialState.FAIL))


def test_history_database_in_postgresql():
    from storage import Filters, History, open_database

    with open_database(PG_URL) as db:
        history = History(db)
        tag = f"été-{uuid.uuid4().hex[:8]}"  # non-ASCII, and unique in a database other runs share
        saved = history.save("evaluation", {"model": "random:tiny", "sparsity": 0.5}, name="on PostgreSQL",
                             results={"ppl": 21.5, "ratios": [0.4, 0.6]}, tags=["postgres", tag])
        try:
            assert history.get(saved.id) == saved
            assert [r.id for r in history.find(Filters(tag=tag))] == [saved.id]
            history.update(saved.id, status="done", results={"ppl": 20.0})
            assert history.get(saved.id).results == {"ppl": 20.0}
        finally:
            assert history.delete(saved.id) == 1
