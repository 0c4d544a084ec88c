"""What lets several workers share one search, on one machine or many (through one PostgreSQL URL).

- `open_storage`: the study's database with Optuna heartbeats, so that a trial left RUNNING by a dead worker
  is failed after a grace period and re-enqueued with the same parameters (RetryHeartbeatStaleTrialCallback).
- `claim` and `study_progress`: each trial records the function it evaluates (its `text` user attribute)
  before evaluating it, and goes ahead only when no other trial has that function complete or in flight and
  the budget is not already covered; so no function is evaluated twice and the budget of distinct functions is
  met exactly, whichever worker (or process memo) saw what.
- `run_workers`: one `python -m dsa_core worker` process per GPU (CUDA_VISIBLE_DEVICES set for each), or a
  number of CPU workers, and their reports.

dsa_core.search calls the claim helpers from its ask/tell loop; this module never loads a model.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import optuna
import sqlalchemy.exc
from optuna.trial import TrialState

from dsa_core.errors import ConfigError, DSAError

log = logging.getLogger(__name__)

HEARTBEAT_ENV = "DSA_HEARTBEAT_SECONDS"  # every worker of a study must use the same value
DEFAULT_HEARTBEAT_S = 10
GRACE_HEARTBEATS = 5  # a trial is stale after this many missed heartbeats
MAX_RETRIES = 3  # a trial whose worker keeps dying is given up after this many new attempts
# Processes that open a new database at once each create Optuna's tables, and all but one lose the race ("table
# studies already exists", optuna/optuna#1092); on another look the tables are there.
CREATE_ATTEMPTS, CREATE_WAIT_S = 5, 0.2


def heartbeat_seconds() -> int:
    value = os.environ.get(HEARTBEAT_ENV, str(DEFAULT_HEARTBEAT_S))
    if not value.isdigit() or int(value) < 1:
        raise ConfigError(f"{HEARTBEAT_ENV} must be a whole number of seconds ≥ 1; it is {value!r}.")
    return int(value)


def open_storage(url: str | None) -> optuna.storages.BaseStorage | None:
    """The study storage for a SQLAlchemy URL, with heartbeats and stale-trial retry; None (in memory) for None.
    The engine knows nothing of the history: a front end opening the history's database checks it first
    (storage.open_study_storage)."""
    if url is None:
        return None
    interval = heartbeat_seconds()
    for attempt in range(1, CREATE_ATTEMPTS + 1):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            try:
                return optuna.storages.RDBStorage(
                    url, heartbeat_interval=interval, grace_period=GRACE_HEARTBEATS * interval,
                    heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
                        max_retry=MAX_RETRIES),
                )
            except (ImportError, ValueError, sqlalchemy.exc.SQLAlchemyError) as e:  # not a URL, not a database
                if attempt < CREATE_ATTEMPTS and _lost_creation_race(e):
                    time.sleep(CREATE_WAIT_S * attempt)
                    continue
                raise ConfigError(f"Cannot open the study storage {url!r}: {str(e).splitlines()[0]}") from e


def _lost_creation_race(error: Exception) -> bool:
    text = str(error).lower()
    races = ("already exists", "duplicate", "unique constraint")  # SQLite, PostgreSQL and MySQL say it so
    return isinstance(error, sqlalchemy.exc.SQLAlchemyError) and any(r in text for r in races)


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass
class Progress:
    """Where a shared study stands: a finished trial of each candidate evaluated, the candidates in flight, and
    the trials finished since the tracker's last read."""

    done: dict[str, optuna.trial.FrozenTrial]
    in_flight: set[str]
    new: list[optuna.trial.FrozenTrial] = field(default_factory=list)


class ProgressTracker:
    """`study_progress` that takes in each finished trial once: a COMPLETE or PRUNED trial never changes, so a read
    costs a pass over the trial list, not a re-decoding of thousands of trials twice per candidate."""

    def __init__(self):
        self._taken: set[int] = set()
        self._done: dict[str, optuna.trial.FrozenTrial] = {}

    def read(self, study: optuna.Study, exclude: int | None = None) -> Progress:
        """Candidates evaluated (COMPLETE, or PRUNED at a fidelity stage: their `stage` attribute) and those claimed
        by RUNNING trials, trial `exclude` aside. A COMPLETE trial of a candidate is preferred to a pruned one."""
        running: set[str] = set()
        new = []
        states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
        for t in study.get_trials(deepcopy=False, states=states):
            if t._trial_id in self._taken:
                continue
            text = t.user_attrs.get("text")
            if t.state == TrialState.RUNNING:
                if text is not None and t.number != exclude:
                    running.add(text)
                continue
            self._taken.add(t._trial_id)
            if text is None or (t.state == TrialState.PRUNED and ("stage" not in t.user_attrs
                                                                  or "skipped" in t.user_attrs)):
                continue  # a repeat or a candidate beyond the budget: recorded, not evaluated
            if t.state == TrialState.COMPLETE or text not in self._done:
                if text not in self._done or self._done[text].state != TrialState.COMPLETE:
                    self._done[text] = t
                    new.append(t)
        return Progress(self._done, running - self._done.keys(), new)


def study_progress(study: optuna.Study, exclude: int | None = None) -> Progress:
    """Where the study stands now (see ProgressTracker.read)."""
    return ProgressTracker().read(study, exclude)


def fail_stale(study: optuna.Study) -> None:
    """Fail the trials whose worker stopped beating and re-enqueue them (no-op without heartbeats)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def ask(study: optuna.Study, space: dict) -> optuna.Trial:
    """study.ask, a re-enqueued trial first; without Optuna's warning that heartbeats expect Study.optimize
    (`heartbeat` below does for ask/tell what optimize does)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Heartbeat of storage")
        return study.ask(space)


@contextmanager
def ctrl_c_stops(stop: threading.Event) -> Iterator[None]:
    """In the block, the first Ctrl-C sets `stop`, so that a search ends after the candidate in flight, told and
    kept; the second interrupts at once. (Interrupting a search anywhere could cut a SQLite write in half and leave
    its trial RUNNING until the heartbeat marks it stale.) Only the main thread receives signals."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def first(signum, frame) -> None:
        stop.set()
        signal.signal(signal.SIGINT, signal.default_int_handler)

    previous = signal.signal(signal.SIGINT, first)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@contextmanager
def heartbeat(study: optuna.Study, trial: optuna.Trial) -> Iterator[None]:
    """Beat for the trial while the block runs, as Study.optimize does for each of its trials."""
    from optuna.storages._heartbeat import get_heartbeat_thread  # the thread optimize uses; no public name

    with get_heartbeat_thread(trial._trial_id, study._storage):
        yield


def claim(study: optuna.Study, trial: optuna.Trial, text: str, budget: int | None,
          tracker: ProgressTracker | None = None) -> str | None:
    """Record that `trial` evaluates `text`, then decide: None to evaluate it, "repeat" when another trial has
    it complete or in flight, "budget" when the functions complete or in flight already cover the budget.
    The record is written before the others are read, so of two trials racing for one function at most one
    sees no rival; at worst both step back and the function waits for a later proposal."""
    trial.set_user_attr("text", text)
    trial.set_user_attr("worker", worker_id())
    progress = (tracker or ProgressTracker()).read(study, exclude=trial.number)
    if text in progress.done or text in progress.in_flight:
        return "repeat"
    if budget is not None and len(progress.done) + len(progress.in_flight) >= budget:
        return "budget"
    return None


def tell(study: optuna.Study, trial: optuna.Trial, value: float | None = None,
         state: TrialState = TrialState.COMPLETE) -> bool:
    """study.tell; False (logged) when the trial was failed meanwhile as stale, which a worker too busy to beat
    within the grace period can meet: its retry evaluates the function again (from the memo, if this worker
    takes it)."""
    try:
        study.tell(trial, value, state=state)
        return True
    except optuna.exceptions.UpdateFinishedTrialError:
        log.warning("Trial %d was failed as stale before its result came; a retry will take it up.", trial.number)
        return False


# --- one worker per GPU ---------------------------------------------------------------------------------------


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES entries."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [v.strip() for v in visible.split(",") if v.strip() and v.strip() != "-1"]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def worker_devices(spec: str) -> list[str | None]:
    """One entry per worker: the GPU it gets (a CUDA_VISIBLE_DEVICES value) or None for a CPU worker.
    "all" is one worker per GPU; a number N spreads N workers over the GPUs, or runs N on the CPU without any."""
    gpus = visible_gpus()
    if spec == "all":
        if not gpus:
            raise ConfigError("'all' starts one worker per GPU and this machine has none; give a number instead.")
        return list(gpus)
    if not spec.isdigit() or int(spec) < 1:
        raise ConfigError(f"Workers must be 'all' or a positive number; got {spec!r}.")
    n = int(spec)
    if gpus and n > len(gpus):
        log.warning("%d workers on %d GPUs: some GPUs hold two models.", n, len(gpus))
    return [gpus[i % len(gpus)] for i in range(n)] if gpus else [None] * n


def start_workers(study: str, storage: str, devices: list[str | None]) -> list[subprocess.Popen]:
    """Start `python -m dsa_core worker` once per device; progress goes to this process's stderr."""
    procs = []
    for device in devices:
        env = dict(os.environ)
        if device is not None:
            env["CUDA_VISIBLE_DEVICES"] = device
        cmd = [sys.executable, "-m", "dsa_core", "worker", "--study", study, "--storage", storage,
               "--device", "cpu" if device is None else "cuda"]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True))
    return procs


def run_workers(study: str, storage: str, spec: str) -> list[dict]:
    """Run one worker per device of `spec` (see worker_devices) until the study's budget is spent, and return
    their reports. A worker that dies leaves its trial to the others (heartbeat and retry); only when every
    worker failed is it an error."""
    devices = worker_devices(spec)
    log.info("Starting %d workers on %s", len(devices), ", ".join(f"GPU {d}" if d else "CPU" for d in devices))
    procs = start_workers(study, storage, devices)
    try:
        outputs = [p.communicate()[0] for p in procs]  # stdout holds one JSON line: no pipe fills up meanwhile
    except BaseException:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait()
        raise
    reports, failed = [], []
    for device, p, out in zip(devices, procs, outputs):
        where = "CPU" if device is None else f"GPU {device}"
        if p.returncode == 0 and out.strip():
            reports.append({"device": where, **json.loads(out.strip().splitlines()[-1])})
        else:
            failed.append(f"{where} (exit code {p.returncode})")
    if failed:
        log.warning("Workers failed: %s; the others finished their trials.", ", ".join(failed))
    if not reports:
        raise DSAError(f"Every worker failed ({', '.join(failed)}); their errors are printed above.")
    return reports
