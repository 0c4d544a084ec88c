"""Saved experiments as the web app shows them: how a stored record (or several, compared) turns back into charts,
a table row and a summary, through one `ResultView` registered per kind (a new kind registers one).

Results are plain JSON (see `Workspace.evaluate`, `sweep`, and dsa_core.search_record); figures come from
ui.figures. A record whose stored values differ from what this version reads (storage.shape_problem: one imported
before imports were checked per kind) is listed as unreadable and left out of charts, never breaking the rest;
user-controlled text reaches Markdown only through ui.escape. No Gradio and no model code here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import plotly.graph_objects as go

from dsa_core.fitness import FITNESS_NAMES
from dsa_core.levels import expand_to_units
from dsa_core.search_record import study_results
from storage import KINDS, ExperimentRecord, shape_problem
from ui import escape, figures, structural_figures
from ui.workspace import OWN_LABEL
from ui.zeroshot_figures import zeroshot_bars, zeroshot_sections

# The chart slots of the history tab, in order; "refinement" belongs to hybrid searches, "widths" and "training" to
# structural-pruning runs.
CHARTS = ("profiles", "perplexity", "zero-shot", "sweep", "search", "refinement", "widths", "training")
UNREADABLE = "⚠ unreadable results"
_HEADLINE_KEYS = ("rows", "target", "best_fitness", "targets", "error", "ppl", "params", "warnings")  # `headline`'s


def stage_labels(protocol: Mapping) -> list[str]:
    """Legend labels of a staged search's fidelities ("stage 1: 2048 tokens", ...); none for a single stage."""
    stages = protocol.get("stages") or []
    return [f"stage {i + 1}: {s['tokens']} tokens" for i, s in enumerate(stages)] if len(stages) > 1 else []


SUMMARY_PREFIX = "direct allocation"  # how `candidate_summary` starts for an allocation


def is_allocation(text: str) -> bool:
    """Whether a search candidate is a direct allocation (its text lists levels) rather than a function."""
    return text.startswith("levels:")


def candidate_summary(text: str, ratios: Sequence[float], layer_shapes: list | None = None,
                      start: str = "") -> str:
    """A candidate as the search tab shows it: a function's text, or a direct allocation's sparsities (two
    decimals; per block, as the block means of a per-layer allocation); `start` is what a hybrid's refinement
    started from (a function's text, or a baseline such as ATP with its β)."""
    if not is_allocation(text):
        return text
    n = len(ratios)
    if layer_shapes and n != len(layer_shapes):
        blocks = expand_to_units(ratios, layer_shapes, "block")
        head = f"{SUMMARY_PREFIX}, {n} linear layers ({n // len(layer_shapes)} per block); block means"
    else:
        blocks, head = ratios, f"{SUMMARY_PREFIX}, {n} blocks"
    what = f"the function {start}" if start.startswith("W:") else start
    refined = f" (refined from {what})" if start else ""
    return f"{head}{refined}: " + " ".join(f"{r:.2f}" for r in blocks)


def search_figure(results: Mapping, protocol: Mapping, fitness: str = "ppl") -> go.Figure:
    """The progress chart of one search, live or saved: its curve and its candidates coloured by the stage they
    reached, with the start of a hybrid's allocation phase marked. Records saved before staged selection have no
    stage (one stage) and no phase (functions only)."""
    cands = results.get("candidates", [])
    points = [(c["generation"], c["fitness"], c.get("stage", 0)) for c in cands if c["fitness"]]
    refining = [c["generation"] for c in cands if c.get("phase") == "allocation"]
    hybrid = refining and any(c.get("phase", "function") == "function" for c in cands)
    return figures.search_figure({"search": results.get("generations", [])}, points, stages=stage_labels(protocol),
                                 allocation_from=min(refining) if hybrid else None, fitness=fitness)


def refinement_figure(results: Mapping, target: float | None = None) -> go.Figure | None:
    """How far a hybrid's refinement moved each unit, when the results hold both allocations."""
    start, refined = results.get("start_ratios"), results.get("best_ratios")
    if not start or not refined or len(start) != len(refined):
        return None
    return figures.refinement_figure(start, refined, results.get("unit_labels"), target)


# --- charts, by kind ---------------------------------------------------------------------------------------------


@dataclass
class ChartParts:
    """What the experiments shown contribute to the History's charts, filled by each kind's view: profiles, dots,
    sweeps and search curves overlaid across experiments; `own` holds one experiment's own charts, by slot."""

    single: bool
    profiles: dict[str, list[float]] = field(default_factory=dict)
    bars: dict[str, dict[str, float]] = field(default_factory=dict)
    sweeps: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    curves: dict[str, list[dict]] = field(default_factory=dict)
    fitnesses: set[str] = field(default_factory=set)
    zeroshot: dict[str, dict] = field(default_factory=dict)
    own: dict[str, go.Figure] = field(default_factory=dict)
    dense: float | None = None
    target: float | None = None


@dataclass(frozen=True)
class ResultView:
    """How the app shows one kind of experiment: what a readable record adds to the charts, its one number for a
    list, what its summary says it asked for, and (optionally) how to bring a running record's results up to date
    from where its run keeps them."""

    add_charts: Callable[[ChartParts, ExperimentRecord, str], None]
    headline: Callable[[ExperimentRecord], str | None]
    setup: Callable[[ExperimentRecord], list[str]] = lambda rec: [_pruning_line(rec.config)]
    warnings: Callable[[ExperimentRecord], list[str]] = lambda rec: []
    refresh: Callable[[ExperimentRecord, Any], ExperimentRecord] | None = None


VIEWS: dict[str, ResultView] = {}


def register(kind: str, view: ResultView) -> None:
    """Show experiments of `kind` (one of storage.KINDS) with `view`."""
    VIEWS[kind] = view


def charts(record: ExperimentRecord) -> dict[str, go.Figure]:
    """The charts of one experiment, keyed by slot (see CHARTS); slots that do not apply are absent."""
    return compare([record])


def compare(records: Sequence[ExperimentRecord]) -> dict[str, go.Figure]:
    """Charts that put one or more experiments side by side: profiles overlaid, perplexity dots grouped by
    experiment, zero-shot bars (one evaluation: dense and each allocation; several: each one's own function), sweeps
    and search curves overlaid. Unreadable records are left out."""
    parts = ChartParts(single=len(records) == 1)
    for rec in records:
        if shape_problem(rec) is None:
            VIEWS[rec.kind].add_charts(parts, rec, label(rec))
    out: dict[str, go.Figure] = {}
    if parts.profiles:
        out["profiles"] = figures.profile_figure(parts.profiles, parts.target if parts.single else None)
    if parts.bars:
        out["perplexity"] = figures.perplexity_figure(parts.bars, parts.dense)
    if parts.zeroshot:
        out["zero-shot"] = zeroshot_bars(parts.zeroshot)
    if parts.sweeps:
        out["sweep"] = figures.sweep_figure(parts.sweeps)
    if parts.curves:
        fitness = parts.fitnesses.pop() if len(parts.fitnesses) == 1 else ""  # "": the fitnesses differ
        out["search"] = figures.search_figure(parts.curves, named=not parts.single, fitness=fitness)
    return out | parts.own


def refreshed(records: Sequence[ExperimentRecord], study_storage: Any) -> list[ExperimentRecord]:
    """The records with their results brought up to date where their kind knows how (a search from its study, which
    the workers that joined it write too); `study_storage` is the history's Optuna storage, or None."""
    if study_storage is None:
        return list(records)
    return [VIEWS[r.kind].refresh(r, study_storage)
            if VIEWS[r.kind].refresh and r.source is None and shape_problem(r) is None else r  # imported: not here
            for r in records]


def _evaluation_charts(parts: ChartParts, rec: ExperimentRecord, name: str) -> None:
    res = rec.results
    if not res.get("rows"):
        return
    rows = res["rows"]
    parts.target = res.get("target")
    for row in rows if parts.single else rows[:1]:
        parts.profiles[row["label"] if parts.single else name] = row["ratios"]
    parts.bars[name] = {r["label"]: r["ppl"] for r in rows if r.get("ppl") is not None}
    parts.dense = res.get("dense_ppl") if parts.single else None
    parts.zeroshot |= zeroshot_sections(res, None if parts.single else name)  # across experiments: the function's


def _evaluation_headline(record: ExperimentRecord) -> str | None:
    rows = record.results.get("rows")
    if not rows:
        return None
    own = next((r for r in rows if r["label"] == OWN_LABEL), rows[0])
    return f"ppl {own['ppl']:.4g} at {record.results['target']:.0%}"


def _sweep_charts(parts: ChartParts, rec: ExperimentRecord, name: str) -> None:
    for s in rec.results.get("series") or []:
        parts.sweeps[s["label"] if parts.single else f"{name}: {s['label']}"] = [
            (p["sparsity"], p["ppl"]) for p in s["points"]]


def _sweep_headline(record: ExperimentRecord) -> str | None:
    targets = record.results.get("targets")
    return f"{len(targets)} targets" if targets else None


def _search_charts(parts: ChartParts, rec: ExperimentRecord, name: str) -> None:
    res = rec.results
    if not res.get("generations"):
        return
    parts.curves[name] = res["generations"]
    parts.fitnesses.add(rec.config.get("fitness", "ppl"))
    best = res.get("best_block_ratios") or res.get("best_ratios")
    if best:
        kind = "allocation" if is_allocation(res.get("best", "")) else "function"
        parts.profiles[f"best of {name}" if not parts.single else f"best {kind}"] = best
        parts.target = rec.config.get("sparsity")
    if parts.single:
        parts.own["search"] = search_figure(res, rec.protocol, rec.config.get("fitness", "ppl"))
        moved = refinement_figure(res, rec.config.get("sparsity"))
        if moved is not None:
            parts.own["refinement"] = moved


def _search_headline(record: ExperimentRecord) -> str | None:
    if record.results.get("best_fitness") is None:
        return None
    kind = FITNESS_NAMES.get(record.config.get("fitness", "ppl"), "fitness")
    return f"best {kind} {record.results['best_fitness']:.4g}"


def _search_from_study(record: ExperimentRecord, storage: Any) -> ExperimentRecord:
    """A search linked to its study (results["study"]: it lives in this history's database) with the candidates the
    study holds when it holds more than the record: a search still running, or joined by workers."""
    study = record.results.get("study")
    live = study_results(study, storage) if isinstance(study, str) else None
    if live is None or len(live["candidates"]) <= len(record.results.get("candidates") or []):
        return record
    return replace(record, results={**record.results, **live})


def _structural_charts(parts: ChartParts, rec: ExperimentRecord, name: str) -> None:
    if parts.single and rec.results.get("selection"):
        figs = structural_figures.charts(rec.results)
        parts.own |= {"widths": figs["widths"], "training": figs["loss"]}


def _structural_headline(record: ExperimentRecord) -> str | None:
    res = record.results
    if (res.get("ppl") or {}).get("compressed") is None:
        return None
    ppl, kept = res["ppl"], (res.get("params") or {}).get("ratio")
    versus = f" (uniform {ppl['baseline']:.4g})" if ppl.get("baseline") is not None else ""
    share = f", {kept:.0%} kept" if kept is not None else ""
    return f"ppl {ppl['compressed']:.4g}{versus}{share}" + (" ⚠ did not converge" if res.get("warnings") else "")


# --- listing and summaries --------------------------------------------------------------------------------------


def label(record: ExperimentRecord) -> str:
    """A short name for legends and choices: the experiment's name, else its kind and short id."""
    return record.name or f"{record.kind} {record.id[:8]}"


def headline(record: ExperimentRecord) -> str:
    """The one number a list shows for an experiment, or UNREADABLE."""
    if shape_problem(record, _HEADLINE_KEYS) is not None:
        return UNREADABLE
    return VIEWS[record.kind].headline(record) or record.results.get("error", "")[:80]


# The name first (what a person looks for; on a narrow screen the table scrolls from it), the id last.
TABLE_HEADERS = ["name", "kind", "status", "result", "model", "created (UTC)", "id"]
IMPORTED = "imported"  # marks an experiment that came from a shared file, in the list's status column


def table_rows(records: Sequence[ExperimentRecord]) -> list[list[str]]:
    return [[label(r), r.kind, f"{r.status} · {IMPORTED}" if r.source else r.status, headline(r),
             r.model or "smollm2", r.created_at.strftime("%Y-%m-%d %H:%M:%S"), r.id] for r in records]


def choice(record: ExperimentRecord) -> tuple[str, str]:
    """(label, id) for the experiment picker."""
    return f"{label(record)} · {record.kind} · {record.created_at:%Y-%m-%d %H:%M} · {record.id[:8]}", record.id


def _search_lines(record: ExperimentRecord) -> list[str]:
    """What a search searched and how it measured: space (and granularity), fitness, fidelity stages."""
    cfg = record.config
    space = cfg.get("space", "function")
    per = "linear layer" if cfg.get("granularity") == "projection" else "block"
    unit = "" if space == "function" else f" per {per}"
    stages = ", ".join(str(s["tokens"]) for s in record.protocol.get("stages", []))
    return [_pruning_line(cfg), f"search: {escape.markdown(space)}{unit} · fitness "
            f"{FITNESS_NAMES.get(cfg.get('fitness', 'ppl'), '?')}"
            + (f" · stages of {escape.markdown(stages)} tokens" if stages else "")]


def _pruning_line(cfg: Mapping) -> str:
    """What a pruning run asked for: its metric, allocation and target."""
    allocation = f"allocation {escape.code(cfg['allocation'])} · " if cfg.get("allocation") else ""
    text = escape.markdown
    return f"metric {text(cfg.get('metric', '?'))} · {allocation}target {text(cfg.get('sparsity', '?'))}"


def summary_markdown(record: ExperimentRecord, link: str) -> str:
    """Who, what, when and the permalink of one experiment, as Markdown; every stored string is escaped, and an
    unreadable record says why."""
    cfg, env, text = record.config, record.environment, escape.markdown
    problem = shape_problem(record)
    view = VIEWS[record.kind]
    setup, *more = view.setup(record) if problem is None else [_pruning_line(cfg)]
    lines = [
        f"### {text(label(record))}",
        f"**{record.kind}** · {record.status} · id `{record.id}`",
        f"created {record.created_at:%Y-%m-%d %H:%M:%S} UTC · updated {record.updated_at:%Y-%m-%d %H:%M:%S} UTC",
        f"model {escape.code(cfg.get('model') or 'smollm2')} · {setup}",
        *more,
        "environment: " + ", ".join(f"{key} {text(env.get(key, '?'))}"
                                    for key in ("python", "torch", "transformers", "device")),
        f"result: {text(headline(record) or '—')}",
        f"permalink: {escape.link(link)}",
    ]
    if problem is not None:
        lines.append(f"⚠ This version cannot read what this experiment stored ({text(problem)}); the full record "
                     "is below.")
    if record.tags:
        lines.append("tags: " + ", ".join(escape.code(t) for t in record.tags))
    if record.source:
        lines.append(f"imported from {text(record.source.get('origin') or 'a file')} "
                     f"(original id {escape.code(record.source.get('original_id'))})")
    if record.results.get("error"):
        lines.append(f"⚠ {text(record.results['error'])}")
    if problem is None:
        lines += [f"⚠ {text(w)}" for w in view.warnings(record)]
    return "\n\n".join(lines)


def _structural_line(cfg: Mapping) -> str:
    """What a structural run asked for: the share of block parameters kept, and how long it trained."""
    keep = f"keep {cfg['target_ratio']:.0%} of the block parameters" if cfg.get("target_ratio") is not None else ""
    steps = cfg.get("steps")
    training = (f"{steps:g} steps of {cfg.get('batch_size') or 1:g} × {cfg.get('seqlen') or '?'} tokens"
                if steps is not None else "")
    return "structural pruning" + "".join(f" · {part}" for part in (keep, training) if part)


register("evaluation", ResultView(_evaluation_charts, _evaluation_headline))
register("sweep", ResultView(_sweep_charts, _sweep_headline))
register("search", ResultView(_search_charts, _search_headline, setup=_search_lines, refresh=_search_from_study))
register("structural", ResultView(_structural_charts, _structural_headline,
                                  setup=lambda rec: [_structural_line(rec.config)],
                                  warnings=lambda rec: list(rec.results.get("warnings", []))))
assert set(VIEWS) == set(KINDS)
