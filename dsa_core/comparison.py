"""What a search's result is measured against, and how: the references every table holds (uniform, OWL,
AlphaPruning, ATP with its own one-parameter search on the search's fitness, the DSA preset), the faithful table
(sequential pruning, WikiText-2 test) of candidates beside them, and a larger validation re-ranking of a search's
top-k. Nothing here searches; dsa_core.search calls `atp_beta` to pick a hybrid's start.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from dsa_core import functions
from dsa_core.allocation import allocate, required_stats
from dsa_core.errors import ConfigError
from dsa_core.fitness import Fitness, stage_windows
from dsa_core.session import PruningSession

if TYPE_CHECKING:  # dsa_core.search imports this module
    from dsa_core.search import Candidate, SearchConfig, SearchResult


def rerank(session: PruningSession, cfg: SearchConfig, result: SearchResult) -> SearchResult:
    """Order the top-k by validation perplexity on `rerank_tokens` tokens (more than the search measured), and
    make the first of that order the result: a larger held-out check, never the test split."""
    if not cfg.rerank_tokens or len(result.top) < 2:
        return result
    check = Fitness(session, cfg.metric, cfg.sparsity, "ppl", stage_windows((cfg.rerank_tokens,), cfg.seqlen, 1))
    for c in result.top:
        c.rerank = check.measure(c.text, c.ratios, 0)
    session.restore()
    result.top.sort(key=lambda c: c.rerank)
    result.best = result.top[0]
    return result


def atp_beta(fitness: Fitness, target: float, until: float | None = None) -> float:
    """ATP's own one-parameter search, as its search.sh does (β = 0.002, 0.004, … while the progression stays in
    [0, 0.99]), on the search's fitness: the β whose allocation scores best (of those tried by `until`, a
    time.perf_counter() deadline, when given)."""
    best, beta, value = 0.0, 0.002, fitness("uniform")
    while beta <= 1.0 and (until is None or time.perf_counter() < until):
        try:
            allocate(fitness.stats, f"atp:beta={beta:g}", target)
        except ConfigError:
            break
        v = fitness(f"atp:beta={beta:g}")
        if v < value:
            best, value = beta, v
        beta = round(beta + 0.002, 6)
    return best


def references(session: PruningSession, cfg: SearchConfig, fitness: Fitness | None = None) -> list[tuple[str, str]]:
    """The allocations every table compares against: uniform, OWL, AlphaPruning, ATP (β searched on `fitness`
    when given, else its default) and the DSA preset, as (label, spec)."""
    atp = f"atp:beta={atp_beta(fitness, cfg.sparsity):g}" if fitness is not None else "atp"
    return [("uniform", "uniform"), ("owl", "owl"), ("alpha", "alpha"), ("atp", atp),
            ("dsa preset", functions.to_text(functions.DSA_PRESET))]


def faithful_table(session: PruningSession, cfg: SearchConfig, candidates: list[Candidate | str],
                   progress: Callable[[str, int, int], None] | None = None,
                   refs: list[tuple[str, str]] | None = None) -> list[dict]:
    """Re-evaluate candidates with the faithful protocol (sequential pruning, WikiText-2 test) next to the
    references (default: `references` without a fitness), all in this one run and on the same calibration windows.
    A candidate is a function's text or a searched Candidate (its ratios, per block or per layer, are pruned as
    they are)."""
    refs = references(session, cfg) if refs is None else refs
    specs: list[tuple[str, str, list[float] | None]] = [(label, spec, None) for label, spec in refs]
    for i, c in enumerate(candidates):
        label = f"searched #{i + 1}"
        specs.append((label, c, None) if isinstance(c, str) else (label, c.text, c.ratios))
    rows = []
    for i, (label, spec, ratios) in enumerate(specs):
        warnings = []
        if ratios is None:
            result = allocate(session.stats(cfg.metric, needs=required_stats(spec)), spec, cfg.sparsity)
            ratios, warnings = [float(r) for r in result.ratios], result.warnings
        session.prune_sequential(np.asarray(ratios), cfg.metric)
        ppl = session.perplexity("wikitext2", "test", cfg.seqlen, cfg.final_eval_windows)
        rows.append({"label": label, "allocation": spec, "ppl": ppl, "ratios": ratios, "warnings": warnings})
        if progress:
            progress("final evaluation", i + 1, len(specs))
    session.restore()
    return rows
