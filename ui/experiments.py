"""Saved experiments as the web app shows them: what an evaluation, sweep or search stores in the history, and
how a stored record (or several, compared) turns back into charts, a table row and a summary.

Results are plain JSON (see `Workspace.evaluate`, `sweep`, and `search_results` below); figures come from
ui.figures. A record whose stored values differ from what this version reads (storage.shape_problem: one imported
before imports were checked per kind) is listed as unreadable and left out of charts, never breaking the rest;
user-controlled text reaches Markdown only through ui.escape. No Gradio and no model code here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import plotly.graph_objects as go

from dsa_core.fitness import FITNESSES
from dsa_core.levels import expand_to_units
from dsa_core.search import FAILED_FITNESS, SearchConfig, SearchEvent, SearchResult
from storage import ExperimentRecord, shape_problem
from ui import escape, figures, structural_figures
from ui.workspace import OWN_LABEL
from ui.zeroshot_figures import zeroshot_bars, zeroshot_sections

# The chart slots of the history tab, in order; "refinement" belongs to hybrid searches, "widths" and "training" to
# structural-pruning runs.
CHARTS = ("profiles", "perplexity", "zero-shot", "sweep", "search", "refinement", "widths", "training")
UNREADABLE = "⚠ unreadable results"
_HEADLINE_KEYS = ("rows", "target", "best_fitness", "targets", "error", "ppl", "params", "warnings")  # `headline`'s


def search_protocol(cfg: SearchConfig) -> dict:
    """How a search measures its candidates, as saved with it: the fitness, its text and its fidelity stages."""
    windows = cfg.stage_windows()
    text = ({"dataset": "wikitext2", "split": "validation"} if cfg.fitness == "ppl"
            else {"dataset": cfg.calib, "split": "train (the calibration windows)"})
    return {"fitness": cfg.fitness, "measure": f"{FITNESSES[cfg.fitness]}, after fast re-masking", **text,
            "seqlen": cfg.seqlen, "windows": windows[-1], "stages": [{"tokens": w * cfg.seqlen, "windows": w}
                                                                     for w in windows],
            "promote": cfg.promote if len(windows) > 1 else None}


def stage_labels(protocol: Mapping) -> list[str]:
    """Legend labels of a staged search's fidelities ("stage 1: 2048 tokens", ...); none for a single stage."""
    stages = protocol.get("stages") or []
    return [f"stage {i + 1}: {s['tokens']} tokens" for i, s in enumerate(stages)] if len(stages) > 1 else []


def search_results(events: Sequence[SearchEvent], result: SearchResult | None = None,
                   model: Mapping | None = None) -> dict:
    """What a search stores: every candidate (the generation on one axis across a hybrid's phases, the fidelity
    stage it reached), the per-generation curve and the best candidate so far; with the `result`, the budget spent,
    the throughput per stage and, for a hybrid, its phases and the allocation the refinement started from. `model`
    (Workspace.description) gives the per-block profile of per-layer allocations and the layers' names."""
    candidates = [{"n": e.candidate, "generation": g, "text": e.text, "fitness": _fitness(e.fitness),
                   "stage": e.stage, "stages": e.stages, "phase": e.phase} for e, g in zip(events, _timeline(events))]
    out: dict = {"candidates": candidates, "generations": generations(events)}
    if events:
        last = events[-1]
        out.update(best=last.best_text, best_fitness=_fitness(last.best_fitness), best_ratios=last.best_ratios,
                   elapsed=last.elapsed)
    if result is not None:
        out.update(best=result.best.text, best_fitness=_fitness(result.best.fitness), best_ratios=result.best.ratios,
                   evaluated=result.evaluated, stopped=result.stopped, elapsed=result.elapsed, space=result.space,
                   top=[{"text": c.text, "fitness": _fitness(c.fitness)} for c in result.top],
                   throughput=result.throughput, start_ratios=result.start_ratios,
                   phases=[{**p, "best_fitness": _fitness(p["best_fitness"])} for p in result.phases])
        if result.stop_reason:
            out["stop_reason"] = result.stop_reason
    shapes = _layer_shapes(model)
    if shapes and out.get("best_ratios") and len(out["best_ratios"]) != len(shapes):
        out["best_block_ratios"] = expand_to_units(out["best_ratios"], shapes, "block").tolist()
    if shapes and out.get("start_ratios") and len(out["start_ratios"]) != len(shapes):
        out["unit_labels"] = [f"{b}.{name.split('.')[-1].removesuffix('_proj')}"
                              for b, block in enumerate(model["blocks"]) for name in block["layers"]]
    return out


def _layer_shapes(model: Mapping | None) -> list[list[tuple[int, int]]] | None:
    if not model or not model.get("blocks"):
        return None
    return [[tuple(shape) for shape in block["layers"].values()] for block in model["blocks"]]


def _fitness(value: float) -> float | None:
    """A failed candidate's sentinel fitness is stored as None: it is not a measure of anything."""
    return value if math.isfinite(value) and value < FAILED_FITNESS else None


def _timeline(events: Sequence[SearchEvent]) -> list[int]:
    """Each event's generation on one axis: a hybrid's refinement is a second study, whose generations count from 0
    again, so they are numbered on after the function phase's."""
    out, offset, phase, last = [], 0, None, -1
    for e in events:
        if phase is not None and e.phase != phase:
            offset = last + 1
        phase = e.phase
        out.append(offset + e.generation)
        last = max(last, out[-1])
    return out


def generations(events: Sequence[SearchEvent]) -> list[dict]:
    """Best-so-far and mean fitness of each generation that has a successful, fully measured candidate (one that
    reached the last fidelity stage: fitnesses of lower stages are measured on fewer tokens and not comparable)."""
    by_generation: dict[int, list[float]] = {}
    phases: dict[int, str] = {}
    for e, g in zip(events, _timeline(events)):
        if e.stage == e.stages - 1 and e.fitness < FAILED_FITNESS:
            by_generation.setdefault(g, []).append(e.fitness)
            phases[g] = e.phase
    out, best = [], math.inf
    for g in sorted(by_generation):
        chunk = by_generation[g]
        best = min(best, *chunk)
        out.append({"generation": g, "best": best, "mean": sum(chunk) / len(chunk), "phase": phases[g]})
    return out


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


# --- charts -----------------------------------------------------------------------------------------------------


def charts(record: ExperimentRecord) -> dict[str, go.Figure]:
    """The charts of one experiment, keyed by slot (see CHARTS); slots that do not apply are absent."""
    return compare([record])


def compare(records: Sequence[ExperimentRecord]) -> dict[str, go.Figure]:
    """Charts that put one or more experiments side by side: profiles overlaid, perplexity dots grouped by
    experiment, zero-shot bars (one evaluation: dense and each allocation; several: each one's own function), sweeps
    and search curves overlaid. Unreadable records are left out."""
    single = len(records) == 1
    profiles, bars, sweeps, curves, structural, zeroshot = {}, {}, {}, {}, {}, {}
    single_search, moved = None, None  # one search's own charts: its candidates, and a hybrid's refinement
    dense, target = None, None
    for rec in records:
        if shape_problem(rec) is not None:
            continue
        name = label(rec)
        res = rec.results
        if rec.kind == "evaluation" and res.get("rows"):
            rows = res["rows"]
            target = res.get("target")
            for row in rows if single else rows[:1]:
                profiles[row["label"] if single else name] = row["ratios"]
            bars[name] = {r["label"]: r["ppl"] for r in rows if r.get("ppl") is not None}
            dense = res.get("dense_ppl") if single else None
            zeroshot |= zeroshot_sections(res, None if single else name)  # across experiments: the function's
        elif rec.kind == "sweep" and res.get("series"):
            for s in res["series"]:
                sweeps[s["label"] if single else f"{name}: {s['label']}"] = [
                    (p["sparsity"], p["ppl"]) for p in s["points"]]
        elif rec.kind == "search" and res.get("generations"):
            curves[name] = res["generations"]
            best = res.get("best_block_ratios") or res.get("best_ratios")
            if best:
                kind = "allocation" if is_allocation(res.get("best", "")) else "function"
                profiles[f"best of {name}" if not single else f"best {kind}"] = best
                target = rec.config.get("sparsity")
            if single:
                single_search = search_figure(res, rec.protocol, rec.config.get("fitness", "ppl"))
                moved = refinement_figure(res, rec.config.get("sparsity"))
        elif rec.kind == "structural" and single and res.get("selection"):
            figs = structural_figures.charts(res)
            structural = {"widths": figs["widths"], "training": figs["loss"]}
    out: dict[str, go.Figure] = {}
    if profiles:
        out["profiles"] = figures.profile_figure(profiles, target if single else None)
    if bars:
        out["perplexity"] = figures.perplexity_figure(bars, dense)
    if zeroshot:
        out["zero-shot"] = zeroshot_bars(zeroshot)
    if sweeps:
        out["sweep"] = figures.sweep_figure(sweeps)
    if curves:
        kinds = {r.config.get("fitness", "ppl") for r in records if r.kind == "search"}
        out["search"] = single_search or figures.search_figure(
            curves, named=not single, fitness=kinds.pop() if len(kinds) == 1 else "")  # "": fitnesses differ
    if moved is not None:
        out["refinement"] = moved
    return out | structural


# --- listing and summaries --------------------------------------------------------------------------------------


def label(record: ExperimentRecord) -> str:
    """A short name for legends and choices: the experiment's name, else its kind and short id."""
    return record.name or f"{record.kind} {record.id[:8]}"


def headline(record: ExperimentRecord) -> str:
    """The one number a list shows for an experiment, or UNREADABLE."""
    if shape_problem(record, _HEADLINE_KEYS) is not None:
        return UNREADABLE
    res = record.results
    if record.kind == "evaluation" and res.get("rows"):
        own = next((r for r in res["rows"] if r["label"] == OWN_LABEL), res["rows"][0])
        return f"ppl {own['ppl']:.4g} at {res['target']:.0%}"
    if record.kind == "search" and res.get("best_fitness") is not None:
        kind = figures.FITNESS_LABELS.get(record.config.get("fitness", "ppl"), "fitness")
        return f"best {kind} {res['best_fitness']:.4g}"
    if record.kind == "sweep" and res.get("targets"):
        return f"{len(res['targets'])} targets"
    if record.kind == "structural" and (res.get("ppl") or {}).get("compressed") is not None:
        ppl, kept = res["ppl"], (res.get("params") or {}).get("ratio")
        versus = f" (uniform {ppl['baseline']:.4g})" if ppl.get("baseline") is not None else ""
        share = f", {kept:.0%} kept" if kept is not None else ""
        return f"ppl {ppl['compressed']:.4g}{versus}{share}" + (" ⚠ did not converge" if res.get("warnings") else "")
    return res.get("error", "")[:80]


# The name first (what a person looks for; on a narrow screen the table scrolls from it), the id last.
TABLE_HEADERS = ["name", "kind", "status", "result", "model", "created (UTC)", "id"]
IMPORTED = "imported"  # marks an experiment that came from a shared file, in the list's status column


def table_rows(records: Sequence[ExperimentRecord]) -> list[list[str]]:
    return [[label(r), r.kind, f"{r.status} · {IMPORTED}" if r.source else r.status, headline(r),
             r.model or "smollm2", r.created_at.strftime("%Y-%m-%d %H:%M:%S"), r.id] for r in records]


def choice(record: ExperimentRecord) -> tuple[str, str]:
    """(label, id) for the experiment picker."""
    return f"{label(record)} · {record.kind} · {record.created_at:%Y-%m-%d %H:%M} · {record.id[:8]}", record.id


def _search_line(cfg: Mapping, protocol: Mapping) -> str:
    """What a search searched and how it measured: space (and granularity), fitness, fidelity stages."""
    space = cfg.get("space", "function")
    per = "linear layer" if cfg.get("granularity") == "projection" else "block"
    unit = "" if space == "function" else f" per {per}"
    stages = ", ".join(str(s["tokens"]) for s in protocol.get("stages", []))
    return (f"search: {escape.markdown(space)}{unit} · fitness "
            f"{figures.FITNESS_LABELS.get(cfg.get('fitness', 'ppl'), '?')}"
            + (f" · stages of {escape.markdown(stages)} tokens" if stages else ""))


def summary_markdown(record: ExperimentRecord, link: str) -> str:
    """Who, what, when and the permalink of one experiment, as Markdown; every stored string is escaped, and an
    unreadable record says why."""
    cfg, env, text = record.config, record.environment, escape.markdown
    problem = shape_problem(record)
    allocation = f"allocation {escape.code(cfg['allocation'])} · " if cfg.get("allocation") else ""
    lines = [
        f"### {text(label(record))}",
        f"**{record.kind}** · {record.status} · id `{record.id}`",
        f"created {record.created_at:%Y-%m-%d %H:%M:%S} UTC · updated {record.updated_at:%Y-%m-%d %H:%M:%S} UTC",
        f"model {escape.code(cfg.get('model') or 'smollm2')} · " + (
            _structural_line(cfg) if record.kind == "structural" and problem is None else
            f"metric {text(cfg.get('metric', '?'))} · {allocation}target {text(cfg.get('sparsity', '?'))}"),
        "environment: " + ", ".join(f"{key} {text(env.get(key, '?'))}"
                                    for key in ("python", "torch", "transformers", "device")),
        f"result: {text(headline(record) or '—')}",
        f"permalink: {escape.link(link)}",
    ]
    if record.kind == "search" and problem is None:
        lines.insert(4, _search_line(cfg, record.protocol))
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
    if record.kind == "structural" and problem is None:
        lines += [f"⚠ {text(w)}" for w in record.results.get("warnings", [])]
    return "\n\n".join(lines)


def _structural_line(cfg: Mapping) -> str:
    """What a structural run asked for: the share of block parameters kept, and how long it trained."""
    keep = f"keep {cfg['target_ratio']:.0%} of the block parameters" if cfg.get("target_ratio") is not None else ""
    steps = cfg.get("steps")
    training = (f"{steps:g} steps of {cfg.get('batch_size') or 1:g} × {cfg.get('seqlen') or '?'} tokens"
                if steps is not None else "")
    return "structural pruning" + "".join(f" · {part}" for part in (keep, training) if part)
