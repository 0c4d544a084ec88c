"""The "Search" tab: an evolutionary (or random) search for allocation functions on the loaded model, with a live
chart of best and population fitness per generation and of the best profile so far; Stop keeps what was found,
and the best function loads into the builder in one click. The search is saved in the history as it goes."""

from __future__ import annotations

import gradio as gr

from dsa_core.errors import DSAError
from dsa_core.search import SAMPLERS, SearchConfig
from ui import experiments, figures
from ui.formula import controls_from_text
from ui.jobs import Cancelled, Job
from ui.layout import AppContext, error_text, permalink_for, stream_job
from ui.tab_builder import controls_update
from ui.tab_evaluate import parse_tags, saved_markdown


def build(ctx: AppContext) -> None:
    ws, history = ctx.workspace, ctx.history
    with gr.Row():
        sampler = gr.Radio(list(SAMPLERS), value="ga", label="Sampler", elem_id="sampler",
                           info="ga: genetic algorithm, children pre-selected by their allocations; nsga2: Optuna's "
                                "NSGA-II as a one-objective GA; random: the baseline")
        population = gr.Number(8, precision=0, minimum=2, label="Population", elem_id="population")
        budget = gr.Number(40, precision=0, minimum=0, label="Budget: candidates (0 = none)", elem_id="budget")
        seconds = gr.Number(0, minimum=0, label="Budget: seconds (0 = none)", elem_id="budget-seconds")
        windows = gr.Number(2, precision=0, minimum=1, label="Fitness windows", elem_id="fitness-windows",
                            info="WikiText-2 validation windows of the proxy perplexity")
        seed = gr.Number(0, precision=0, label="Seed", elem_id="search-seed")
    with gr.Row():
        name = gr.Textbox(label="Name", placeholder="optional", elem_id="search-name")
        tags = gr.Textbox(label="Tags", placeholder="comma-separated", elem_id="search-tags")
    with gr.Row():
        start = gr.Button("Start search", variant="primary", elem_id="search-start")
        stop = gr.Button("Stop (keep what was found)", variant="stop", elem_id="search-stop")
    status = gr.Markdown(elem_id="search-status", elem_classes="status-line")
    saved = gr.Markdown(elem_id="search-saved")
    with gr.Row():
        progress = gr.Plot(label="Fitness per generation", elem_id="search-progress")
        best_profile = gr.Plot(label="Best profile so far", elem_id="search-profile")
    with gr.Row():
        best = gr.Textbox(label="Best function so far", interactive=False, elem_id="search-best", scale=3)
        to_builder = gr.Button("Load into the builder", elem_id="search-to-builder")
    outputs = [status, saved, progress, best_profile, best]

    def charts(job: Job, cfg: SearchConfig) -> tuple:
        events = list(job.events)
        if not events:
            return figures.empty_figure("Waiting for the first candidate…"), gr.skip(), gr.skip()
        gens = experiments.generations(events)
        points = [(e.generation, e.fitness) for e in events if e.fitness < 1e9]
        last = events[-1]
        profiles = {"best function": last.best_ratios, **ws.references(cfg.sparsity)}
        return (figures.search_figure({"search": gens}, points), figures.profile_figure(profiles, cfg.sparsity),
                last.best_text)

    def search(sampler, population, budget, seconds, windows, seed, target, name, tags, request: gr.Request):
        try:
            cfg = ws.search_config(SearchConfig(
                sparsity=target, seed=int(seed), sampler=sampler, population=int(population),
                budget_candidates=int(budget) or None, budget_seconds=float(seconds) or None,
                fitness_windows=int(windows)))
            rec = history.save("search", cfg.to_dict(), name=name or "", tags=parse_tags(tags),
                               environment=ws.environment(),
                               protocol={"fitness": "proxy perplexity after fast re-masking", "dataset": "wikitext2",
                                         "split": "validation", "windows": cfg.fitness_windows, "seqlen": cfg.seqlen})
            job = ws.start("search", lambda job: ws.search(cfg, job))
        except (DSAError, TypeError, ValueError) as e:
            yield error_text(e), *(gr.skip(),) * (len(outputs) - 1)
            return
        link = permalink_for(request, rec.id)
        saved_generation = -1

        def live(job: Job) -> tuple:
            nonlocal saved_generation
            events = list(job.events)
            if events and events[-1].generation > saved_generation:  # one short UPDATE per generation
                saved_generation = events[-1].generation
                history.update(rec.id, results=experiments.search_results(events))
            return (saved_markdown(rec.id, link), *charts(job, cfg))

        def finish(result) -> tuple:
            # A stopped search is done: what it found is its result (results["stopped"] says it was stopped).
            history.update(rec.id, status="done",
                           results=experiments.search_results(list(job.events), result))
            how = "stopped" if result.stopped else "done"
            return (f"✓ Search {how}: {result.evaluated} functions evaluated in {result.elapsed:.1f} s; best proxy "
                    f"perplexity {result.best.fitness:.4g}.", saved_markdown(rec.id, link), *charts(job, cfg)[:2],
                    result.best.text)

        def fail(e: BaseException) -> tuple:
            results = {**experiments.search_results(list(job.events)), "error": str(e)}
            history.update(rec.id, status="cancelled" if isinstance(e, Cancelled) else "failed", results=results)
            return error_text(e), saved_markdown(rec.id, link), *(gr.skip(),) * 3

        def abandoned() -> None:  # the page was closed: the search was stopped, and what it found is kept
            history.update(rec.id, status="done", results={**experiments.search_results(list(job.events)),
                                                           "stopped": True})

        yield from stream_job(job, len(outputs), finish, fail, live, abandoned)

    def load_best(text: str):
        try:
            return [*controls_update(controls_from_text(text)), gr.Tabs(selected="builder"), ""]
        except DSAError as e:
            return [*(gr.skip(),) * 8, error_text(e)]

    builder = [ctx[c] for c in ("pre1", "pre2", "reduction", "transform1", "transform2", "mapping", "param")]
    inputs = [sampler, population, budget, seconds, windows, seed, ctx["target"], name, tags]
    start.click(search, inputs, outputs, api_name="search", show_progress="hidden", **ctx.device_queue)
    stop.click(ws.cancel, None, status, api_name="stop", concurrency_limit=None, concurrency_id="control")
    to_builder.click(load_best, best, [*builder, ctx["tabs"], status], api_name="load_best")
