"""Allocations measured side by side, and what a search's result is measured against.

- `compare`: the one comparison of allocations (the references and any others, by spec, function or explicit
  ratios) at one or several targets, each pruned from the same dense weights and calibration of one session, with
  perplexity and, optionally, zero-shot accuracy; a typed `Comparison` with a stable dict form. The web app's
  evaluation and sweep, the search's faithful table and the zero-shot comparison are views of it.
- the references every search table holds (uniform, OWL, AlphaPruning, ATP with its own one-parameter search on the
  search's fitness, the DSA preset), the faithful table (sequential pruning, WikiText-2 test) of candidates beside
  them, and a larger validation re-ranking of a search's top-k.

Nothing here searches; dsa_core.search calls `atp_betas` to pick a hybrid's start.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import ClassVar

from dsa_core import functions
from dsa_core.allocation import allocate, describe
from dsa_core.config import EvalConfig
from dsa_core.errors import ConfigError
from dsa_core.fitness import Fitness, stage_windows
from dsa_core.pipeline import Spec, oom_as_error, protocol, prune_with, spec_text, zeroshot
from dsa_core.reporter import Reporter, reporter_or_silent
from dsa_core.search_config import SearchConfig
from dsa_core.search_result import Candidate, SearchResult
from dsa_core.session import PruningSession
from dsa_core.settings import setup_of
from dsa_core.zeroshot.tasks import check_sources


@dataclass
class ComparedAllocation:
    """One allocation pruned at one target and measured; `ppl` and `zeroshot` are None where not asked."""

    label: str
    allocation: str  # pipeline.spec_text of what was pruned
    target: float
    ratios: list[float]
    warnings: list[str]
    achieved_sparsity: float
    ppl: float | None = None
    zeroshot: dict | None = None


@dataclass
class Comparison:
    """What `compare` returns: its rows in the order measured (each target in turn, the allocations at each)."""

    kind: ClassVar[str] = "comparison"
    mode: str
    rows: list[ComparedAllocation]
    protocol: dict | None = None  # perplexity's (pipeline.protocol); None when perplexity was not measured
    dense_ppl: float | None = None
    dense_zeroshot: dict | None = None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def targets(self) -> list[float]:
        return sorted({row.target for row in self.rows})

    def to_dict(self) -> dict:
        return {"kind": self.kind, **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict) -> Comparison:
        if d.get("kind") != cls.kind:
            raise ConfigError(f"Not a comparison: its kind is {d.get('kind')!r}.")
        unknown = set(d) - {"kind"} - {f.name for f in fields(cls)}
        if unknown:
            raise ConfigError(f"Unknown comparison keys: {', '.join(sorted(unknown))}.")
        body = {k: v for k, v in d.items() if k != "kind"}
        return cls(**{**body, "rows": [ComparedAllocation(**row) for row in d.get("rows", [])]})


def compare(session: PruningSession, cfg: EvalConfig, allocations: Sequence[tuple[str, Spec]],
            targets: Sequence[float] | None = None, *, perplexity: bool = True, batch_size: int | None = None,
            exclude: int = 0, reporter: Reporter | None = None) -> Comparison:
    """Prune each (label, allocation) at each target (default: cfg.sparsity) with cfg's metric, pattern and mode, and
    measure it: perplexity on cfg.eval's test split (cfg.eval_windows) unless `perplexity` is False, zero-shot
    accuracy on cfg.tasks when it names any (`batch_size`; `exclude`: see pipeline.zeroshot). With cfg.dense the
    unpruned model is measured first. The reporter hears which allocation begins (`begin`, "owl at 50% (2 of 8)")
    and each row once it is measured (`event`), and the session's progress meanwhile (so that cancelling it stops
    the comparison). Every allocation is checked before anything runs; the session ends dense."""
    given, reporter = reporter, reporter_or_silent(reporter)
    cfg.validate()
    at = [replace(cfg, sparsity=t).validate() for t in ((cfg.sparsity,) if targets is None else targets)]
    for _, spec in allocations:
        if isinstance(spec, str) and spec != "dense":
            describe(spec)  # refuses what `allocate` cannot read
    if cfg.tasks:
        check_sources(cfg.tasks, cfg.tasks_data, cfg.data_source)
    out = Comparison(cfg.mode, [])
    steps = len(at) * len(allocations)
    try:
        with session.reporting(given):
            if cfg.dense:
                session.restore()
                if perplexity:
                    with oom_as_error("measuring perplexity"):
                        out.dense_ppl = session.perplexity(cfg.eval, "test", cfg.seqlen, cfg.eval_windows)
                if cfg.tasks:
                    out.dense_zeroshot = zeroshot(session, cfg, batch_size, exclude)
            for target_cfg in at:
                for label, spec in allocations:
                    at_target = f" at {target_cfg.sparsity:.0%}" if len(at) > 1 else ""
                    reporter.begin(f"{label}{at_target} ({len(out.rows) + 1} of {steps})", len(out.rows), steps)
                    ratios, warnings = prune_with(session, target_cfg, spec)
                    row = ComparedAllocation(label, spec_text(spec), target_cfg.sparsity, [float(r) for r in ratios],
                                             list(warnings), session.achieved_sparsity()[0])
                    if perplexity:
                        with oom_as_error("measuring perplexity"):
                            row.ppl = session.perplexity(cfg.eval, "test", cfg.seqlen, cfg.eval_windows)
                    if cfg.tasks:
                        row.zeroshot = zeroshot(session, target_cfg, batch_size, exclude)
                    out.rows.append(row)
                    reporter.event(row)
    finally:
        session.restore()
    if perplexity:
        windows, origin = session.eval_windows(cfg.eval, "test", cfg.seqlen, cfg.eval_windows)
        out.protocol = protocol(cfg, session, int(windows.shape[0]), origin)
    out.timings = dict(session.timings)
    return out


def rerank(session: PruningSession, cfg: SearchConfig, result: SearchResult,
           fitness: Fitness | None = None) -> SearchResult:
    """Order the top-k by a larger check than the search made, and make the first of that order the result: by
    validation perplexity on `rerank_tokens` tokens, or (`rerank_final`) by the search's fitness (`fitness`) after
    pruning each as the result is pruned. Never the test split."""
    check = rerank_check(session, cfg, fitness)
    if check is None or len(result.top) < 2:
        return result
    for c in result.top:
        c.rerank = check(c.ratios)
    session.restore()
    result.top.sort(key=lambda c: c.rerank)
    result.best = result.top[0]
    return result


def rerank_check(session: PruningSession, cfg: SearchConfig,
                 fitness: Fitness | None = None) -> Callable[[Sequence[float]], float] | None:
    """The re-ranking a search's configuration asks for, as a measure of an allocation's ratios (None: none).
    `rerank_final` measures with the search's own `fitness` (dsa_core.search.search_fitness)."""
    if cfg.rerank_final:
        if fitness is None:
            raise ValueError("Re-ranking by the final pruning measures with the search's fitness; pass it.")
        return fitness.measure_pruned
    if cfg.rerank_tokens:
        check = Fitness(session, cfg.metric, cfg.sparsity, "ppl", stage_windows((cfg.rerank_tokens,), cfg.seqlen, 1))
        return lambda ratios: check.measure(repr(list(ratios)), ratios, 0)
    return None


def atp_spec(beta: float) -> str:
    """The allocation ATP's search measures for β: 0 is uniform (so that it shares uniform's measurement)."""
    return "uniform" if beta == 0 else f"atp:beta={beta:g}"


def atp_betas(fitness: Fitness, target: float, until: float | None = None, stage: int | None = None) -> list[float]:
    """ATP's own one-parameter search, as its search.sh does (β = 0.002, 0.004, … while the progression stays in
    [0, 0.99]; 0 is uniform), on the search's fitness at `stage` (default: its last): every β tried by `until` (a
    time.perf_counter() deadline, when given), the best-scoring first."""
    tried, beta = [(fitness(atp_spec(0.0), stage), 0.0)], 0.002
    while beta <= 1.0 and (until is None or time.perf_counter() < until):
        try:
            allocate(fitness.stats, atp_spec(beta), target)
        except ConfigError:
            break
        tried.append((fitness(atp_spec(beta), stage), beta))
        beta = round(beta + 0.002, 6)
    return [b for _, b in sorted(tried)]


def atp_beta(fitness: Fitness, target: float, until: float | None = None) -> float:
    """The β of ATP's one-parameter search whose allocation scores best on the fitness's last stage."""
    return atp_betas(fitness, target, until)[0]


def references(session: PruningSession, cfg: SearchConfig, fitness: Fitness | None = None) -> list[tuple[str, str]]:
    """The allocations every table compares against: uniform, OWL, AlphaPruning, ATP (β searched on `fitness`
    when given, else its default) and the DSA preset, as (label, spec). Where the search re-ranks its top-k, ATP's
    best k values of β are re-ranked the same way."""
    atp = "atp"
    if fitness is not None:
        betas = atp_betas(fitness, cfg.sparsity)
        check = rerank_check(session, cfg, fitness)
        if check is not None:
            betas = sorted(betas[: cfg.top_k],
                           key=lambda b: check(allocate(fitness.stats, atp_spec(b), cfg.sparsity).ratios))
            session.restore()
        atp = f"atp:beta={betas[0]:g}"
    return [("uniform", "uniform"), ("owl", "owl"), ("alpha", "alpha"), ("atp", atp),
            ("dsa preset", functions.to_text(functions.DSA_PRESET))]


def faithful_table(session: PruningSession, cfg: SearchConfig, candidates: list[Candidate | str],
                   reporter: Reporter | None = None, refs: list[tuple[str, str]] | None = None) -> list[dict]:
    """Re-evaluate candidates with the faithful protocol (sequential pruning, WikiText-2 test) next to the
    references (default: `references` without a fitness), all in this one run and on the same calibration windows.
    A candidate is a function's text or a searched Candidate (its ratios, per block or per layer, are pruned as
    they are)."""
    allocations: list[tuple[str, Spec]] = list(references(session, cfg) if refs is None else refs)
    texts = {}  # a searched candidate is pruned by its ratios and named by its text
    for i, c in enumerate(candidates):
        label = f"searched #{i + 1}"
        allocations.append((label, c if isinstance(c, str) else c.ratios))
        texts[label] = c if isinstance(c, str) else c.text
    faithful = EvalConfig(**setup_of(cfg), metric=cfg.metric, sparsity=cfg.sparsity,
                          eval_windows=cfg.final_eval_windows, mode="sequential")
    table = compare(session, faithful, allocations, reporter=reporter)
    return [{"label": r.label, "allocation": texts.get(r.label, r.allocation), "ppl": r.ppl, "ratios": r.ratios,
             "warnings": r.warnings} for r in table.rows]
