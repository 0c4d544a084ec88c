"""The web app's server-side state: one loaded model per device (a `PruningSession`), its block statistics, and
the job that holds the device, shared by every browser tab of one app process.

Each method is a short sequence of calls into dsa_core (open_session, allocate, compare, run_search), so
the event handlers stay thin and the same work can be tested without a browser. No Gradio and no storage here.
"""

from __future__ import annotations

import gc
import logging
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from dsa_core import functions
from dsa_core.allocation import Allocation, allocate, check_target
from dsa_core.comparison import compare
from dsa_core.config import EvalConfig
from dsa_core.errors import ConfigError
from dsa_core.models import DEFAULT_MODEL, pick_device
from dsa_core.pipeline import environment, open_session
from dsa_core.scores import parse_pattern
from dsa_core.search import run_search, search_fitness
from dsa_core.search_config import SearchConfig
from dsa_core.search_record import study_events
from dsa_core.search_result import SearchResult
from dsa_core.session import PruningSession
from dsa_core.settings import SETUP
from dsa_core.stats import BlockStats
from dsa_core.studies import create_study
from ui.jobs import Busy, DeviceQueue, Job, Ticket, duration
from ui.limits import Limits

log = logging.getLogger(__name__)

# What the builder and evaluations compare every function with: label -> allocation spec.
REFERENCES = {"uniform": "uniform", "owl": "owl", "dsa preset": "dsa"}
OWN_LABEL = "this function"
@dataclass
class Profiles:
    """Per-block sparsity of the function being built and of the references, at one target."""

    ratios: dict[str, list[float]]
    warnings: list[str] = field(default_factory=list)


def is_local_path(spec: str) -> bool:
    """Whether a model or text spec names something on this machine's disk rather than a hub id or preset."""
    path = Path(spec).expanduser()
    return spec.startswith((".", "/", "~")) or path.suffix in (".gguf", ".txt") or path.exists() or spec.count("/") > 1


class Workspace:
    """The loaded model and what was computed on it; `job` is the work that holds the device, if any."""

    def __init__(self, device: str | None = None, limits: Limits | None = None):
        """`limits`: what visitors may ask for when the app is reachable from other machines (None: no limits)."""
        self.device = str(pick_device(device))
        self.limits = limits
        self.session: PruningSession | None = None
        self.config: EvalConfig | None = None  # what the session was loaded and scored with
        self.stats: BlockStats | None = None
        self.description: dict | None = None
        self.job: Job | None = None
        self.queue = DeviceQueue()  # work waiting for the device, in order
        self._lock = threading.Lock()
        self._references: dict[float, dict[str, Allocation]] = {}

    # --- jobs -------------------------------------------------------------------------------------------------

    def start(self, name: str, fn, ticket: Ticket | None = None) -> Job:
        """Run `fn(job)` on the device in a worker thread; Busy while another job holds it or, without the ticket
        at the front of the queue, while other work waits for it. The ticket leaves the queue either way."""
        try:
            with self._lock:
                if self.job is not None and self.job.running:
                    raise Busy(f"The device is busy with {self.job.name}; wait for it or cancel it.")
                front = self.queue.front()
                if front is not None and front is not ticket:
                    raise Busy(f"{front.name.capitalize()} is waiting for the device before this; wait for it.")
                self.job = Job(name, ticket.owner if ticket is not None else "")
                return self.job.start(fn)
        finally:
            if ticket is not None:
                self.queue.leave(ticket)

    def turn(self, ticket: Ticket) -> bool:
        """Whether the ticket's work may start now: it is at the front and the device is free."""
        job = self.job
        return self.queue.front() is ticket and (job is None or not job.running)

    def queued_text(self, ticket: Ticket) -> str:
        """The status line of work waiting for the device: its place, and what it waits for."""
        job, place = self.job, self.queue.position(ticket)
        ahead = f"{place - 1} more waiting before it, " if place > 1 else ""
        if job is not None and job.running:
            eta = job.eta()
            left = f" (≈ {duration(eta)} left)" if eta is not None else ""
            now = f"{ahead}after **{job.name}**, which is running{left}"
        else:
            now = f"{ahead}starting" if not ahead else f"{ahead}the device is free"
        return f"⏳ Queued (position {place}): **{ticket.name}** waits for the device; {now}."

    def cancel(self, owner: str | None = None) -> str:
        """Withdraw the page's waiting work if it has some (`owner`: its session), else stop the running job."""
        if owner is not None and (ticket := self.queue.withdraw(owner)) is not None:
            return f"Withdrew {ticket.name} from the queue."
        job = self.job
        if job is None or not job.running:
            return "Nothing is running."
        job.cancel()
        return f"Stopping {job.name}…"

    def _progress(self, phase: str, done: int, total: int) -> None:
        if self.job is not None:
            self.job(phase, done, total)

    # --- model and scores -------------------------------------------------------------------------------------

    @property
    def allow_local_paths(self) -> bool:
        return self.limits is None

    def check_sources(self, cfg) -> None:
        """When the app is exposed beyond localhost: refuse local paths for the model and the calibration text, and
        anything beyond the limits (an EvalConfig or SearchConfig, a StructuralConfig)."""
        if self.limits is None:
            return
        model = cfg.model or DEFAULT_MODEL
        if model != DEFAULT_MODEL and not model.startswith("random:") and is_local_path(model):
            raise ConfigError("This app is reachable from other machines, so models cannot be loaded from local "
                              "paths; choose one it serves.")
        if cfg.calib not in ("wikitext2", "c4"):
            raise ConfigError("This app is reachable from other machines, so calibration text cannot come from a "
                              "local file; choose wikitext2 or c4.")
        self.limits.check(cfg)

    def load(self, cfg: EvalConfig, job: Job) -> dict:
        """Load the model (unless the loaded one has the same settings) and score it with cfg's metric and
        pattern; returns the model's description (blocks, layers, parameter counts) and where the data came from."""
        cfg = replace(cfg, device=self.device, allocation="uniform",
                      sparsity=_pattern_sparsity(cfg.pattern, cfg.sparsity)).validate()
        self.check_sources(cfg)
        # The set-up decides whether a loaded session can be reused (the metric and pattern only add scores).
        if self.session is None or any(getattr(self.config, k) != getattr(cfg, k) for k in SETUP):
            self._unload()
            job.stage = f"loading {cfg.model or DEFAULT_MODEL}"
            self.session = open_session(cfg, progress=self._progress)
        job.stage = f"scoring with {cfg.metric}"
        _, stats = self.session.scores(cfg.metric, cfg.pattern)
        self.session.restore()
        self.config, self.stats = cfg, stats
        self._references.clear()
        self.description = {**self.session.lm.describe(), "calibration_source": self.session.calib_origin,
                            "timings": dict(self.session.timings)}
        return self.description

    def _unload(self) -> None:
        self.session = self.config = self.stats = self.description = None
        self._references.clear()
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def require(self) -> tuple[PruningSession, EvalConfig, BlockStats]:
        if self.session is None or self.config is None or self.stats is None:
            raise ConfigError("Load a model first (Model & data tab).")
        return self.session, self.config, self.stats

    def environment(self) -> dict:
        import gradio
        import plotly

        lm = self.session.lm if self.session is not None else None
        env = {**environment(lm), "gradio": gradio.__version__, "plotly": plotly.__version__}
        env["device"] = env.get("device") or self.device  # the CPU's name is often unknown to `platform`
        return env

    # --- the builder ------------------------------------------------------------------------------------------

    def profiles(self, fn: functions.AllocationFunction, target: float) -> Profiles:
        """The function's profile and the references' at `target`, from the cached statistics (milliseconds)."""
        _, cfg, stats = self.require()
        own = allocate(stats, fn, check_target(target))
        warnings = list(own.warnings)
        if parse_pattern(cfg.pattern) is not None:
            warnings.append(f"The model was scored for the {cfg.pattern} pattern, which fixes every block's "
                            "sparsity; profiles apply to unstructured pruning only.")
        return Profiles({OWN_LABEL: own.ratios.tolist(), **self.references(target)}, warnings)

    def references(self, target: float) -> dict[str, list[float]]:
        """The reference allocations' profiles at `target`, computed once per target."""
        _, _, stats = self.require()
        target = check_target(target)
        refs = self._references.get(target)
        if refs is None:
            refs = {label: allocate(stats, spec, target) for label, spec in REFERENCES.items()}
            self._references = {target: refs}  # one target at a time: the slider moves, old entries are dead
        return {label: a.ratios.tolist() for label, a in refs.items()}

    # --- evaluations ------------------------------------------------------------------------------------------

    def eval_config(self, allocation: str, target: float, mode: str, windows: int | None) -> EvalConfig:
        _, cfg, _ = self.require()
        if parse_pattern(cfg.pattern) is not None:
            raise ConfigError(f"The {cfg.pattern} pattern fixes every block's sparsity, so allocations cannot be "
                              "compared; load the model with the unstructured pattern.")
        out = replace(cfg, allocation=allocation, sparsity=target, mode=mode, eval_windows=windows,
                      dense=False).validate()
        self.check_sources(out)
        return out

    def evaluate(self, fn: functions.AllocationFunction, target: float, mode: str, windows: int | None, dense: bool,
                 job: Job, tasks: tuple[str, ...] = (), tasks_limit: int | None = None) -> dict:
        """Perplexity (and zero-shot accuracy on `tasks`) of the function and of each reference at one target,
        all on this session's scores."""
        session, _, _ = self.require()
        specs = {OWN_LABEL: functions.to_text(fn), **REFERENCES}
        cfg = replace(self.eval_config(specs[OWN_LABEL], target, mode, windows), dense=dense, tasks=tasks,
                      tasks_limit=tasks_limit).validate()
        result = compare(session, cfg, list(specs.items()), reporter=job)
        rows = [{"label": r.label, "allocation": r.allocation, "ppl": r.ppl, "ratios": r.ratios,
                 "achieved_sparsity": r.achieved_sparsity, "warnings": r.warnings,
                 **({"zeroshot": r.zeroshot} if r.zeroshot else {})} for r in result.rows]
        dense_results = {"dense_ppl": result.dense_ppl} if result.dense_ppl is not None else {}
        if result.dense_zeroshot:
            dense_results["dense_zeroshot"] = result.dense_zeroshot
        return {"target": target, "mode": mode, "rows": rows, **dense_results, "protocol": result.protocol,
                "timings": result.timings}

    def sweep(self, fn: functions.AllocationFunction, targets: list[float], mode: str, windows: int | None,
              job: Job) -> dict:
        """Perplexity against sparsity: the function and the references at each target."""
        session, _, _ = self.require()
        if not targets:
            raise ConfigError("Give at least one target sparsity for the sweep, e.g. 0.3, 0.5, 0.7.")
        specs = {OWN_LABEL: functions.to_text(fn), **REFERENCES}
        targets = sorted(targets)
        cfg = replace(self.eval_config(specs[OWN_LABEL], targets[0], mode, windows), tasks=())
        result = compare(session, cfg, list(specs.items()), targets, reporter=job)
        series = {label: {"label": label, "allocation": spec, "points": []} for label, spec in specs.items()}
        for r in result.rows:
            series[r.label]["points"].append({"sparsity": r.target, "ppl": r.ppl, "ratios": r.ratios,
                                              "achieved_sparsity": r.achieved_sparsity})
        return {"targets": targets, "mode": mode, "series": list(series.values()), "protocol": result.protocol,
                "timings": result.timings}

    # --- search -----------------------------------------------------------------------------------------------

    def search_config(self, cfg: SearchConfig) -> SearchConfig:
        """`cfg` with the loaded model's settings, so that the saved configuration says what was searched on."""
        _, loaded, _ = self.require()
        if parse_pattern(loaded.pattern) is not None:
            raise ConfigError(f"A search allocates unstructured sparsity; the model was scored for {loaded.pattern}. "
                              "Load it with the unstructured pattern.")
        out = replace(cfg, model=loaded.model, metric=loaded.metric, calib=loaded.calib, nsamples=loaded.nsamples,
                      seqlen=loaded.seqlen, data_source=loaded.data_source, device=self.device,
                      dtype=loaded.dtype).validate()
        self.check_sources(out)
        return out

    def search(self, cfg: SearchConfig, job: Job, storage: str | None = None) -> SearchResult:
        """Run a search in its study at `storage` (a database URL, where workers can join it and a restarted app
        resume it; None: in memory), with the job as its reporter: each evaluated candidate is published to the job,
        after those the study already holds when it is resumed, and cancelling the job stops the search with what it
        found. The fitness is prepared first (its text tokenised, and for KL the dense model's logits computed), so
        that the status says so rather than sitting on the first candidate."""
        session, _, _ = self.require()
        cfg = self.search_config(cfg)
        windows = cfg.stage_windows()
        if cfg.fitness == "ppl":
            job.stage = f"tokenising WikiText-2 validation for the fitness ({windows[-1]} windows of {cfg.seqlen})"
        else:
            job.stage = f"the dense model's logits on {windows[-1]} calibration windows for the KL fitness"
        fitness = search_fitness(session, cfg)
        job.stage = f"{cfg.space} search" + (f" ({cfg.sampler})" if cfg.space != "allocation" else "")
        study = create_study(cfg, storage)
        for event in study_events(study):  # a resumed search: what it found before
            job.event(event)
        return run_search(session, cfg, study, job, fitness)


def _pattern_sparsity(pattern: str, sparsity: float) -> float:
    """An n:m pattern fixes the sparsity at n/m, whatever the slider says."""
    nm = parse_pattern(pattern)
    return nm[0] / nm[1] if nm else sparsity
