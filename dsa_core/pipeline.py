"""One evaluation run end to end: load → calibrate → score → allocate → prune → perplexity, as a typed `Evaluation`
that carries its protocol, timings and environment (and a stable dict form). The CLI prints it, storage keeps it.
Orchestration only: each step is a call into the modules of its stage.
"""

from __future__ import annotations

import platform
import resource
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from typing import ClassVar

import numpy as np
import torch

from dsa_core.allocation import allocate, required_stats
from dsa_core.config import EvalConfig
from dsa_core.errors import ConfigError, ResourceError
from dsa_core.functions import AllocationFunction, to_text
from dsa_core.models import LoadedModel, load_model
from dsa_core.reporter import Reporter
from dsa_core.session import PruningSession
from dsa_core.zeroshot.tasks import check_sources


def environment(lm: LoadedModel | None = None) -> dict:
    import transformers

    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "host": platform.node(),
        "platform": platform.platform(),
    }
    if lm is not None:
        env["device"] = torch.cuda.get_device_name(lm.device) if lm.device.type == "cuda" else platform.processor()
        env["dtype"] = str(lm.dtype).removeprefix("torch.")
    return env


def peak_memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # kilobytes on Linux


@contextmanager
def oom_as_error(what: str):
    """A CUDA out-of-memory error becomes one sentence that says what to reduce."""
    try:
        yield
    except torch.cuda.OutOfMemoryError as e:
        torch.cuda.empty_cache()
        raise ResourceError(
            f"The GPU ran out of memory while {what}; reduce --batch-size, --nsamples or --seqlen, "
            "or use --dtype bf16."
        ) from e


def open_session(cfg: EvalConfig, progress: Callable[[str, int, int], None] | None = None) -> PruningSession:
    with oom_as_error("loading the model"):
        start = time.perf_counter()
        lm = load_model(cfg.model, cfg.device, cfg.dtype)
        load_s = time.perf_counter() - start
    session = PruningSession(lm, cfg.calib, cfg.nsamples, cfg.seqlen, cfg.seed, cfg.data_source, cfg.batch_size,
                             progress=progress)
    session.timings["load"] = load_s
    return session


def protocol(cfg: EvalConfig, session: PruningSession, windows: int, eval_origin: str) -> dict:
    return {
        "dataset": cfg.eval,
        "split": "test",
        "source": eval_origin,
        "seqlen": cfg.seqlen,
        "windows": windows,
        "join": "rows joined with \\n\\n, tokenised once, non-overlapping windows, tail dropped",
        # True: every window (evaluation and calibration) starts with <bos> and holds seqlen - 1 text tokens
        # (Gemma); false: the literature's protocol, only the text's first window starts with <bos>.
        "bos_per_window": session.lm.bos_per_window,
        "calibration": cfg.calib,
        "calibration_source": session.calib_origin,
        "nsamples": cfg.nsamples,
        "seed": cfg.seed,
        "metric": cfg.metric,
        "pattern": cfg.pattern,
        "mode": cfg.mode,
    }


# An allocation as a run takes one: a spec `allocate` reads (or "dense"), a DSA function, or explicit ratios (per
# block or per linear layer, as a search's candidate gives them).
Spec = str | AllocationFunction | Sequence[float]


def spec_text(spec: Spec) -> str:
    if isinstance(spec, str):
        return spec
    if isinstance(spec, AllocationFunction):
        return to_text(spec)
    return "ratios:" + ",".join(f"{r:.6g}" for r in spec)


def prune_with(session: PruningSession, cfg: EvalConfig, allocation: Spec | None = None) -> tuple[np.ndarray, list]:
    """Prune the session's model per cfg (allocation overridable); returns (ratios, warnings)."""
    spec = cfg.allocation if allocation is None else allocation
    n = len(session.lm.blocks)
    if not isinstance(spec, str | AllocationFunction):
        ratios, warnings = np.asarray(spec, dtype=np.float64), []
    elif spec == "dense":
        session.restore()
        return np.zeros(n), []
    elif spec == "uniform":
        ratios, warnings = np.full(n, cfg.sparsity), []
    else:
        result = allocate(session.stats(cfg.metric, needs=required_stats(spec)), spec, cfg.sparsity)
        ratios, warnings = result.ratios, result.warnings
    with oom_as_error("pruning"):
        if cfg.mode == "fast":
            session.apply(ratios, cfg.metric, cfg.pattern)
        else:
            session.prune_sequential(ratios, cfg.metric, cfg.pattern)
    return ratios, warnings


def zeroshot(session: PruningSession, cfg: EvalConfig, batch_size: int | None = None, exclude: int = 0) -> dict:
    """Zero-shot accuracy of the session's model as it is now on cfg.tasks; its seconds join the timings. `exclude`:
    leave out the rows a zero-shot search fitness of that many rows per task measured (harness.evaluate_tasks)."""
    from dsa_core.zeroshot.harness import evaluate_tasks  # imports lm-eval (seconds): only when tasks are asked

    with oom_as_error("scoring the zero-shot tasks"):
        result = evaluate_tasks(session.lm, cfg.tasks, cfg.tasks_limit, cfg.tasks_data, cfg.data_source, batch_size,
                                session.progress, exclude=exclude)
    session.timings["zeroshot"] = session.timings.get("zeroshot", 0.0) + result["seconds"]
    return result


@dataclass
class Evaluation:
    """What `run_evaluation` returns: one allocation pruned and measured (with the dense model when asked)."""

    kind: ClassVar[str] = "evaluation"
    config: dict
    ppl: float
    ratios: list[float]
    achieved_sparsity: float
    achieved_per_block: list[float]
    warnings: list[str]
    protocol: dict
    timings: dict[str, float]
    peak_memory_gb: float
    environment: dict
    dense_ppl: float | None = None
    zeroshot: dict | None = None  # harness.evaluate_tasks' result, when cfg.tasks names any
    dense_zeroshot: dict | None = None

    def to_dict(self) -> dict:
        """The stable serialised form: its fields, those not measured left out, and its kind."""
        return {"kind": self.kind, **{k: v for k, v in asdict(self).items() if v is not None}}

    @classmethod
    def from_dict(cls, d: dict) -> Evaluation:
        if d.get("kind", cls.kind) != cls.kind:
            raise ConfigError(f"Not an evaluation: its kind is {d.get('kind')!r}.")
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def run_evaluation(cfg: EvalConfig, reporter: Reporter | None = None,
                   session: PruningSession | None = None) -> Evaluation:
    """Evaluate one configuration; with cfg.dense also the unpruned model, in the same run. The reporter hears the
    progress of every phase (loading, calibration, scoring, pruning, perplexity) and can cancel it."""
    cfg.validate()
    if cfg.tasks:
        check_sources(cfg.tasks, cfg.tasks_data, cfg.data_source)
    session = session or open_session(cfg, reporter)
    with session.reporting(reporter):
        return _evaluate(session, cfg)


def _evaluate(session: PruningSession, cfg: EvalConfig) -> Evaluation:
    windows, origin = session.eval_windows(cfg.eval, "test", cfg.seqlen, cfg.eval_windows)
    dense_ppl = dense_zeroshot = scores = None
    with oom_as_error("measuring perplexity"):
        if cfg.dense:
            session.restore()
            dense_ppl = session.perplexity(cfg.eval, "test", cfg.seqlen, cfg.eval_windows)
            if cfg.tasks:
                dense_zeroshot = zeroshot(session, cfg)
        ratios, warnings = prune_with(session, cfg)
        ppl = session.perplexity(cfg.eval, "test", cfg.seqlen, cfg.eval_windows)
    if cfg.tasks:
        scores = zeroshot(session, cfg)
    overall, per_block = session.achieved_sparsity()
    return Evaluation(
        config=cfg.to_dict(), ppl=ppl, ratios=[float(r) for r in ratios], achieved_sparsity=overall,
        achieved_per_block=per_block, warnings=list(warnings),
        protocol=protocol(cfg, session, int(windows.shape[0]), origin), timings=dict(session.timings),
        peak_memory_gb=peak_memory_gb(session.lm.device), environment=environment(session.lm),
        dense_ppl=dense_ppl, zeroshot=scores, dense_zeroshot=dense_zeroshot,
    )
