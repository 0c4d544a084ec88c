"""Saved experiments as the web app shows them: what an evaluation, sweep or search stores in the history, and
how a stored record (or several, compared) turns back into charts, a table row and a summary.

Results are plain JSON (see `Workspace.evaluate`, `sweep`, and `search_results` below); figures come from
ui.figures. No Gradio and no model code here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import plotly.graph_objects as go

from dsa_core.search import FAILED_FITNESS, SearchEvent, SearchResult
from storage import ExperimentRecord
from ui import figures, structural_figures
from ui.workspace import OWN_LABEL

# The chart slots of the history tab, in order; "widths" and "training" belong to structural-pruning runs.
CHARTS = ("profiles", "perplexity", "sweep", "search", "widths", "training")


def search_results(events: Sequence[SearchEvent], result: SearchResult | None = None) -> dict:
    """What a search stores: every candidate, the per-generation curve and the best function so far."""
    candidates = [{"n": e.candidate, "generation": e.generation, "text": e.text, "fitness": _fitness(e.fitness)}
                  for e in events]
    out: dict = {"candidates": candidates, "generations": generations(events)}
    if events:
        last = events[-1]
        out.update(best=last.best_text, best_fitness=_fitness(last.best_fitness), best_ratios=last.best_ratios,
                   elapsed=last.elapsed)
    if result is not None:
        out.update(best=result.best.text, best_fitness=_fitness(result.best.fitness), evaluated=result.evaluated,
                   stopped=result.stopped, elapsed=result.elapsed,
                   top=[{"text": c.text, "fitness": _fitness(c.fitness)} for c in result.top])
    return out


def _fitness(value: float) -> float | None:
    """A failed candidate's sentinel fitness is stored as None: it is not a perplexity."""
    return value if math.isfinite(value) and value < FAILED_FITNESS else None


def generations(events: Sequence[SearchEvent]) -> list[dict]:
    """Best-so-far and mean fitness of each generation that has a successful candidate, from the live events."""
    by_generation: dict[int, list[float]] = {}
    for e in events:
        if e.fitness < FAILED_FITNESS:
            by_generation.setdefault(e.generation, []).append(e.fitness)
    out, best = [], math.inf
    for g in sorted(by_generation):
        chunk = by_generation[g]
        best = min(best, *chunk)
        out.append({"generation": g, "best": best, "mean": sum(chunk) / len(chunk)})
    return out


# --- charts -----------------------------------------------------------------------------------------------------


def charts(record: ExperimentRecord) -> dict[str, go.Figure]:
    """The charts of one experiment, keyed by slot (see CHARTS); slots that do not apply are absent."""
    return compare([record])


def compare(records: Sequence[ExperimentRecord]) -> dict[str, go.Figure]:
    """Charts that put one or more experiments side by side: profiles overlaid, perplexity bars grouped by
    experiment, sweeps and search curves overlaid."""
    single = len(records) == 1
    profiles, bars, sweeps, curves, points, structural = {}, {}, {}, {}, [], {}
    dense, target = None, None
    for rec in records:
        name = label(rec)
        res = rec.results
        if rec.kind == "evaluation" and res.get("rows"):
            rows = res["rows"]
            target = res.get("target")
            for row in rows if single else rows[:1]:
                profiles[row["label"] if single else name] = row["ratios"]
            bars[name] = {r["label"]: r["ppl"] for r in rows if r.get("ppl") is not None}
            dense = res.get("dense_ppl") if single else None
        elif rec.kind == "sweep" and res.get("series"):
            for s in res["series"]:
                sweeps[s["label"] if single else f"{name}: {s['label']}"] = [
                    (p["sparsity"], p["ppl"]) for p in s["points"]]
        elif rec.kind == "search" and res.get("generations"):
            curves[name] = res["generations"]
            if res.get("best_ratios"):
                profiles[f"best of {name}" if not single else "best function"] = res["best_ratios"]
                target = rec.config.get("sparsity")
            if single:
                points = [(c["generation"], c["fitness"]) for c in res.get("candidates", []) if c["fitness"]]
        elif rec.kind == "structural" and single and res.get("selection"):
            figs = structural_figures.charts(res)
            structural = {"widths": figs["widths"], "training": figs["loss"]}
    out: dict[str, go.Figure] = {}
    if profiles:
        out["profiles"] = figures.profile_figure(profiles, target if single else None)
    if bars:
        out["perplexity"] = figures.perplexity_bars(bars, dense)
    if sweeps:
        out["sweep"] = figures.sweep_figure(sweeps)
    if curves:
        out["search"] = figures.search_figure(curves, points, named=not single)
    return out | structural


# --- listing and summaries --------------------------------------------------------------------------------------


def label(record: ExperimentRecord) -> str:
    """A short name for legends and choices: the experiment's name, else its kind and short id."""
    return record.name or f"{record.kind} {record.id[:8]}"


def headline(record: ExperimentRecord) -> str:
    """The one number a list shows for an experiment."""
    res = record.results
    if record.kind == "evaluation" and res.get("rows"):
        own = next((r for r in res["rows"] if r["label"] == OWN_LABEL), res["rows"][0])
        return f"ppl {own['ppl']:.4g} at {res['target']:.0%}"
    if record.kind == "search" and res.get("best_fitness") is not None:
        return f"best proxy {res['best_fitness']:.4g}"
    if record.kind == "sweep" and res.get("targets"):
        return f"{len(res['targets'])} targets"
    return res.get("error", "")[:80]


TABLE_HEADERS = ["id", "created (UTC)", "kind", "name", "status", "model", "result"]


def table_rows(records: Sequence[ExperimentRecord]) -> list[list[str]]:
    return [[r.id, r.created_at.strftime("%Y-%m-%d %H:%M:%S"), r.kind, r.name, r.status, r.model or "smollm2",
             headline(r)] for r in records]


def choice(record: ExperimentRecord) -> tuple[str, str]:
    """(label, id) for the experiment picker."""
    return f"{label(record)} · {record.kind} · {record.created_at:%Y-%m-%d %H:%M} · {record.id[:8]}", record.id


def summary_markdown(record: ExperimentRecord, link: str) -> str:
    """Who, what, when and the permalink of one experiment, as Markdown."""
    cfg, env = record.config, record.environment
    lines = [
        f"### {label(record)}",
        f"**{record.kind}** · {record.status} · id `{record.id}`",
        f"created {record.created_at:%Y-%m-%d %H:%M:%S} UTC · updated {record.updated_at:%Y-%m-%d %H:%M:%S} UTC",
        f"model `{cfg.get('model') or 'smollm2'}` · metric {cfg.get('metric', '?')} · "
        f"{'allocation `' + cfg['allocation'] + '` · ' if cfg.get('allocation') else ''}"
        f"target {cfg.get('sparsity', '?')}",
        f"environment: python {env.get('python', '?')}, torch {env.get('torch', '?')}, "
        f"transformers {env.get('transformers', '?')}, device {env.get('device', '?')}",
        f"result: {headline(record) or '—'}",
        f"permalink: [{link}]({link})",
    ]
    if record.tags:
        lines.append("tags: " + ", ".join(f"`{t}`" for t in record.tags))
    if record.source:
        lines.append(f"imported from {record.source.get('origin') or 'a file'} "
                     f"(original id `{record.source.get('original_id')}`)")
    if record.results.get("error"):
        lines.append(f"⚠ {record.results['error']}")
    return "\n\n".join(lines)
