"""The "Search" tab: a search for sparsity allocations on the loaded model (DSA's functions, direct per-block or
per-layer allocations, or both in turn), with a live chart of the candidates by the fidelity stage they reached and
of the best and population fitness per generation, and of the best profile so far; a hybrid search ends with a
chart of how far its refinement moved each unit. Stop keeps what was found; the best function loads into the
builder in one click. The search is recorded in the history as it goes, and its Optuna study lives in the history's
database: workers can join it, and it can be resumed (after a restart too) from its experiment id.

The controls of the search's own settings (SearchConfig's declared fields, dsa_core.settings, from which the command
line's options come too) are generated from those declarations: labels, choices, help and defaults are written once.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import Field, fields, replace

import gradio as gr

from dsa_core.errors import ConfigError, DSAError
from dsa_core.fitness import FITNESS_NAMES
from dsa_core.search import refined_from
from dsa_core.search_config import SAMPLERS, SearchConfig
from dsa_core.search_record import leader, search_protocol, search_results
from dsa_core.search_result import SearchResult
from dsa_core.settings import help_of
from dsa_core.studies import create_study
from ui import escape, experiments, figures
from ui.context import (
    AppContext,
    cancel_handler,
    error_text,
    permalink_for,
    stream_job,
    target_slider,
    wait_for_device,
)
from ui.formula import controls_from_text
from ui.jobs import Job
from ui.tab_builder import controls_update
from ui.tab_evaluate import parse_tags, saved_markdown

# Declared settings shown beside the budget, and the allocation and hybrid details in an accordion. The set-up comes
# from the loaded model, the sampler, population and budgets have controls of their own, and the app ranks by the
# fitness (re-ranking and the faithful table are the command line's final steps).
MAIN = ("space", "granularity", "fitness", "fidelity", "promote")
DETAILS = ("last_stage", "sequential_windows", "rescore", "refiner", "cma_sigma", "level_step", "parents", "start",
           "hybrid_split", "refine_patience")
DECLARED: tuple[Field, ...] = tuple(f for f in fields(SearchConfig) if f.name in MAIN + DETAILS)  # the API's order
NOT_A_FUNCTION = ("ⓘ The best candidate is a direct allocation (one sparsity per block or linear layer), not a "
                  "function: only functions load into the builder. Its profile is shown above, and the History "
                  "keeps it.")


def _label(name: str) -> str:
    return name.replace("_", " ").capitalize()


def _help(text: str) -> str:
    """A declared setting's help as the form shows it: command-line options named by their fields' labels."""
    return re.sub(r"--([a-z][a-z-]*)", lambda m: f"“{_label(m.group(1).replace('-', '_'))}”", text)


def declared_control(f: Field) -> gr.components.Component:
    """The form field of one declared SearchConfig setting: its label, choices, help and default."""
    kw = {"label": _label(f.name), "info": _help(help_of(f)), "elem_id": "search-" + f.name.replace("_", "-")}
    if f.metadata.get("choices"):
        return gr.Radio(list(f.metadata["choices"]), value=f.default, **kw)
    if isinstance(f.default, bool):  # before int: a bool is one
        return gr.Checkbox(f.default, **kw)
    if isinstance(f.default, int):
        return gr.Number(f.default, precision=0, **kw)
    if isinstance(f.default, float):
        return gr.Number(f.default, **kw)
    return gr.Textbox(f.default, **kw)


def declared_value(f: Field, value):
    """A form value as the setting's type (numbers arrive as floats, empty boxes as None)."""
    if value is None or value == "":
        return f.default
    return type(f.default)(value.strip() if isinstance(value, str) else value)


def finished_text(result: SearchResult, fitness: str) -> str:
    """The status line of a search that ended: what it evaluated, how fast each fidelity stage measured, the best."""
    noun = {"function": "functions", "allocation": "allocations"}.get(result.space, "candidates")
    refinements = result.phases[1:]
    starts = f" from {len(refinements)} starts" if len(refinements) > 1 else ""
    split = (f" ({result.phases[0]['evaluated']} functions, then {sum(p['evaluated'] for p in refinements)} "
             f"allocations{starts})" if refinements else "")
    rates = "; ".join(f"{t['tokens']} tokens: {t['evaluated']} measured at {t['per_second']:.2f}/s"
                      for t in result.throughput)
    stages = f" — {'per stage, ' if len(result.throughput) > 1 else ''}{rates}" if rates else ""
    warning = f" ⚠ {result.stop_reason}" if result.stop_reason else ""
    return (f"✓ Search {'stopped' if result.stopped else 'done'}: {result.evaluated} {noun}{split} evaluated in "
            f"{result.elapsed:.1f} s{stages}; best {FITNESS_NAMES[fitness]} {result.best.fitness:.4g}."
            + warning)


def loadable_function(result: SearchResult) -> str:
    """What "Load into the builder" loads after a search: the best function, or a hybrid's first-phase function;
    "" when the best is a direct allocation with no function behind it."""
    if not experiments.is_allocation(result.best.text):
        return result.best.text
    first = result.phases[0] if result.phases else {}
    return first.get("best", "") if first.get("space") == "function" else ""


def build(ctx: AppContext) -> None:
    ws, history = ctx.workspace, ctx.history
    # The studies live in the history's database, so that a search resumes after a restart and workers can join it
    # (`python -m dsa_core worker --study NAME --storage URL`); in memory when the history is.
    study_storage = history.db.study_url
    target = target_slider(ctx, "search-target")  # a row of its own: beside six settings it had no room to slide
    with gr.Row():
        sampler = gr.Radio(list(SAMPLERS), value="ga", label="Sampler", elem_id="sampler",
                           info="functions: ga: genetic algorithm, children pre-selected by their allocations; nsga2: "
                                "Optuna's NSGA-II as a one-objective GA; random: the baseline")
        population = gr.Number(8, precision=0, minimum=2, label="Population", elem_id="population")
        budget = gr.Number(40, precision=0, minimum=0, label="Budget: candidates (0 = none)", elem_id="budget")
        seconds = gr.Number(0, minimum=0, label="Budget: seconds (0 = none)", elem_id="budget-seconds")
        windows = gr.Number(2, precision=0, minimum=1, label="Fitness windows", elem_id="fitness-windows",
                            info="windows of the fitness when no fidelity is given")
        seed = gr.Number(0, precision=0, label="Seed", elem_id="search-seed")
    declared: dict[str, gr.components.Component] = {}
    with gr.Row():
        for f in DECLARED:
            if f.name in MAIN:
                declared[f.name] = declared_control(f)
    with gr.Accordion("Allocation and hybrid settings", open=False, elem_id="search-more"), gr.Row():
        for f in DECLARED:
            if f.name not in MAIN:
                declared[f.name] = declared_control(f)
    with gr.Row():
        name = gr.Textbox(label="Name", placeholder="optional", elem_id="search-name")
        tags = gr.Textbox(label="Tags", placeholder="comma-separated", elem_id="search-tags")
        resume = gr.Textbox("", label="Resume the search", placeholder="an experiment id from the History",
                            elem_id="search-resume",
                            info="an earlier search (after a restart too) continues in its study up to the budget "
                                 "above, counted over the whole search; the loaded model must be the one it searched")
    with gr.Row():
        start = gr.Button("Start search", variant="primary", elem_id="search-start")
        stop = gr.Button("Stop (keep what was found)", variant="stop", elem_id="search-stop")
    status = gr.Markdown(elem_id="search-status", elem_classes="status-line")
    saved = gr.Markdown(elem_id="search-saved")
    with gr.Row():
        progress = gr.Plot(label="Fitness per generation", elem_id="search-progress")
        best_profile = gr.Plot(label="Best profile so far", elem_id="search-profile")
    with gr.Row():
        best = gr.Textbox(label="Best candidate so far", interactive=False, elem_id="search-best", scale=3)
        to_builder = gr.Button("Load into the builder", elem_id="search-to-builder")
    moved = gr.Plot(label="How far the refinement moved each unit", visible=False, elem_id="search-refinement")
    function = gr.State("")  # the function "Load into the builder" loads when the best candidate is not one
    outputs = [status, saved, progress, best_profile, best, moved, function]

    def charts(job: Job, cfg: SearchConfig, protocol: dict) -> tuple:
        """Progress chart, best profile, best candidate and its loadable function, from the events so far."""
        events = list(job.events)
        if not events:
            return figures.empty_figure("Waiting for the first candidate…"), gr.skip(), gr.skip(), gr.skip()
        results = search_results(events, model=ws.description)
        last, best = events[-1], leader(events)
        first = "" if last.phase == "function" else next(
            (e.best_text for e in reversed(events) if e.phase == "function"), "")
        kind = "allocation" if experiments.is_allocation(best.best_text) else "function"
        ratios = results.get("best_block_ratios") or best.best_ratios
        profiles = {f"best {kind}": ratios, **ws.references(cfg.sparsity)} if ratios else ws.references(cfg.sparsity)
        text = experiments.candidate_summary(best.best_text, best.best_ratios, ws.stats.layer_shapes,
                                             best.start or (first if best.phase == "allocation" else ""))
        loadable = first or ("" if experiments.is_allocation(best.best_text) else best.best_text)
        return (experiments.search_figure(results, protocol, cfg.fitness),
                figures.profile_figure(profiles, cfg.sparsity), text, loadable)

    def configure(sampler, population, budget, seconds, windows, seed, target, name, tags, resume, values):
        """The search to run and its recorded run: a new one from the form, or (`resume`: an experiment id) an earlier
        search taken up in its study with the form's budget, counted over the whole search."""
        budgets = {"budget_candidates": int(budget) or None, "budget_seconds": float(seconds) or None}
        wanted = (resume or "").strip().lower()
        if wanted:
            earlier = history.get(wanted)
            if earlier.kind != "search" or not earlier.config.get("study") or study_storage is None:
                raise ConfigError(f"Experiment {wanted} is not a search whose study this history keeps; only those "
                                  "resume.")
            cfg = ws.search_config(replace(SearchConfig.from_dict(earlier.config), **budgets))
            try:
                create_study(cfg, study_storage)  # refuses another set-up before the record is touched
            except ConfigError as e:
                raise ConfigError(f"{e} Load the model and data it searched first (Model & data tab).") from None
            return cfg, ctx.recorder.resume(earlier.id, config=cfg.to_dict())
        settings = {f.name: declared_value(f, v) for f, v in zip(DECLARED, values)}
        cfg = ws.search_config(SearchConfig(
            sparsity=target, seed=int(seed), sampler=sampler, population=int(population),
            fitness_windows=int(windows), study=f"dsa-{uuid.uuid4().hex[:8]}", **budgets, **settings))
        return cfg, ctx.recorder.start("search", cfg.to_dict(), name=name or "", tags=parse_tags(tags),
                                       environment=ws.environment(), protocol=search_protocol(cfg))

    def search(request: gr.Request, sampler, population, budget, seconds, windows, seed, target, name, tags,
               *values):
        *values, resume = values
        ticket = yield from wait_for_device(ctx, "search", len(outputs), request)
        if ticket is None:
            return
        try:
            cfg, run = configure(sampler, population, budget, seconds, windows, seed, target, name, tags, resume,
                                 values)
        except (DSAError, TypeError, ValueError) as e:
            ws.queue.leave(ticket)
            yield error_text(e), *(gr.skip(),) * (len(outputs) - 1)
            return
        try:
            job = ws.start("search", lambda job: ws.search(cfg, job, study_storage), ticket)
        except DSAError as e:
            run.fail(e)
            yield error_text(e), *(gr.skip(),) * (len(outputs) - 1)
            return
        protocol = search_protocol(cfg)
        link = permalink_for(request, run.id)
        command = f"python -m dsa_core worker --study {cfg.study} --storage {history.db.url}"
        joined = f" · workers join it with {escape.code(command)}" if study_storage is not None else ""

        def saved() -> str:
            return saved_markdown(run, link) + joined

        yield (job.status(), saved(), figures.empty_figure("Waiting for the first candidate…"),
               figures.empty_figure(f"Search {run.id[:8]} is running…"), "", gr.update(visible=False), "")
        saved_generation = -1
        # The record links its study when the study lives in the history's database: History reads it live.
        link_study = {"study": cfg.study} if study_storage is not None else {}

        def results(result: SearchResult | None = None) -> dict:
            return {**search_results(list(job.events), result, ws.description), **link_study}

        def live(job: Job) -> tuple:
            nonlocal saved_generation
            events = list(job.events)
            if events and events[-1].generation != saved_generation:  # one short UPDATE per generation
                saved_generation = events[-1].generation
                run.progress(results())
            progress_fig, profile_fig, text, loadable = charts(job, cfg, protocol)
            return saved(), progress_fig, profile_fig, text, gr.update(visible=False), loadable

        def finish(result: SearchResult) -> tuple:
            # A stopped search is done: what it found is its result (results["stopped"] says it was stopped).
            final = results(result)
            run.done(final)
            loadable = loadable_function(result)
            start = refined_from(result)
            text = experiments.candidate_summary(result.best.text, result.best.ratios, ws.stats.layer_shapes,
                                                 start or (loadable if loadable != result.best.text else ""))
            refinement = experiments.refinement_figure(final, cfg.sparsity)
            moved_update = gr.update(visible=False) if refinement is None else gr.update(value=refinement,
                                                                                         visible=True)
            progress_fig, profile_fig, *_ = charts(job, cfg, protocol)
            return (finished_text(result, cfg.fitness), saved(), progress_fig, profile_fig,
                    text, moved_update, loadable)

        def fail(e: BaseException) -> tuple:
            run.fail(e, results())
            return error_text(e), saved(), *(gr.skip(),) * (len(outputs) - 2)

        def abandoned() -> None:  # the page was closed: the search was stopped, and what it found is kept
            run.done({**results(), "stopped": True})

        yield from stream_job(job, len(outputs), finish, fail, live, abandoned)

    def load_best(text: str, found: str):
        """The best function into the builder; a hybrid's best is an allocation, so its first phase's function."""
        try:
            controls, message = controls_from_text(text), ""
        except DSAError as e:
            allocation = text.startswith(experiments.SUMMARY_PREFIX) or experiments.is_allocation(text)
            if not found or not allocation:
                return [*(gr.skip(),) * 8, NOT_A_FUNCTION if allocation else error_text(e)]
            controls = controls_from_text(found)
            message = (f"ⓘ Loaded {found}, the function the hybrid search's first phase found: the refined "
                       "allocation is not a function, so it cannot load into the builder.")
        return [*controls_update(controls), gr.Tabs(selected="builder"), message]

    builder = [ctx[c] for c in ("pre1", "pre2", "reduction", "transform1", "transform2", "mapping", "param")]
    inputs = [sampler, population, budget, seconds, windows, seed, target, name, tags,
              *(declared[f.name] for f in DECLARED), resume]
    start.click(search, inputs, outputs, api_name="search", show_progress="hidden", **ctx.device_queue)
    stop.click(cancel_handler(ws), None, status, api_name="stop", concurrency_limit=None, concurrency_id="control")
    to_builder.click(load_best, [best, function], [*builder, ctx["tabs"], status], api_name="load_best")
