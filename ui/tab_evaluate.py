"""The "Evaluate" tab: prune with the builder's function and measure perplexity next to uniform, OWL and the DSA
preset at the same target (per-block profiles, perplexity dots), or sweep several targets (perplexity against
sparsity). Every run is saved in the history as it starts and updated when it ends."""

from __future__ import annotations

import re

import gradio as gr

from dsa_core import functions
from dsa_core.config import MODES
from dsa_core.errors import ConfigError, DSAError
from dsa_core.zeroshot.tasks import availability, parse_tasks
from storage import Run, StorageError
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
from ui.formula import CONTROLS, function_from_controls
from ui.zeroshot_figures import task_sets, zeroshot_bars, zeroshot_sections, zeroshot_table

RESULT_HEADERS = ["allocation", "spec", "perplexity", "achieved sparsity"]


def parse_targets(text: str) -> list[float]:
    """"0.3, 0.5 0.7" -> [0.3, 0.5, 0.7]; ConfigError naming what cannot be read."""
    items = [s for s in re.split(r"[,\s;]+", text or "") if s]
    try:
        targets = sorted({float(s) for s in items})
    except ValueError:
        raise ConfigError(f"Cannot read the sweep targets {text!r}; write fractions such as 0.3, 0.5, 0.7.") from None
    if not targets or len(targets) > 12:
        raise ConfigError("A sweep takes between 1 and 12 target sparsities.")
    return targets


def evaluate_label(target: float) -> str:
    """The Evaluate button names the target it evaluates at."""
    return f"Evaluate at {target:.0%} sparsity"


def parse_tags(text: str) -> list[str]:
    return [t.strip() for t in (text or "").split(",") if t.strip()]


def saved_markdown(run: Run, link: str) -> str:
    """Where a run is recorded, or why the history could not record it (the run goes on either way)."""
    saved = f"Saved as experiment `{run.id}` · permalink: {escape.link(link)}" if run.stored else ""
    problem = f"⚠ {escape.markdown(run.problem)}" if run.problem else ""
    return " · ".join(part for part in (saved, problem) if part)


def result_rows(kind: str, result: dict) -> list[list]:
    """The results table: one row per allocation (a sweep lists its perplexity at each target)."""
    if kind == "evaluation":
        return [[r["label"], r["allocation"], round(r["ppl"], 4), round(r["achieved_sparsity"], 4)]
                for r in result["rows"]]
    return [[s["label"], s["allocation"], " · ".join(f"{p['sparsity']:.0%}: {p['ppl']:.4g}" for p in s["points"]),
             " · ".join(f"{p['achieved_sparsity']:.3f}" for p in s["points"])] for s in result["series"]]


def zeroshot_outputs(result: dict) -> tuple:
    """Whether the zero-shot section shows, and its table and grouped bars (dense first when measured): the section
    is hidden when the evaluation had no tasks."""
    zs = zeroshot_sections(result)
    if not zs:
        return gr.Column(visible=False), gr.skip(), gr.skip()
    headers, rows = zeroshot_table(zs)
    return gr.Column(visible=True), gr.Dataframe(value=rows, headers=headers), zeroshot_bars(zs, "acc")


def build(ctx: AppContext) -> None:
    ws, history = ctx.workspace, ctx.history
    with gr.Row():
        target = target_slider(ctx, "eval-target")
        mode = gr.Radio(list(MODES), value="fast", label="Pruning mode", elem_id="mode",
                        info="fast: re-mask from the dense model's scores; sequential: prune block by block")
        windows = gr.Number(8, precision=0, minimum=0, label="Evaluation windows (0 = the whole test split)",
                            elem_id="eval-windows")
        dense = gr.Checkbox(False, label="Also measure the dense model", elem_id="dense")
        targets = gr.Textbox("0.3, 0.4, 0.5, 0.6, 0.7", label="Sweep targets", elem_id="sweep-targets")
    with gr.Row():
        tasks = gr.Textbox("", label="Zero-shot tasks (evaluate only)", placeholder="e.g. piqa, or paper for the seven",
                           elem_id="zs-tasks")
        tasks_limit = gr.Number(0, precision=0, minimum=0, label="Examples per task (0 = all)", elem_id="zs-limit")
        # The sets fill the box, which stays the one input (and the API's); a task not available here says so.
        task_set = gr.CheckboxGroup(task_sets(availability()), label="Zero-shot task sets", elem_id="zs-sets")
    with gr.Row():
        name = gr.Textbox(label="Name", placeholder="optional", elem_id="eval-name")
        tags = gr.Textbox(label="Tags", placeholder="comma-separated", elem_id="eval-tags")
        save = gr.Button("Save name & tags", elem_id="eval-save")
    with gr.Row():
        evaluate = gr.Button(evaluate_label(target.value), variant="primary", elem_id="evaluate")
        sweep = gr.Button("Sweep the targets", elem_id="sweep")
        cancel = gr.Button("Cancel", variant="stop", elem_id="eval-cancel")
    status = gr.Markdown(elem_id="eval-status", elem_classes="status-line")
    saved = gr.Markdown(elem_id="eval-saved")
    table = gr.Dataframe(headers=RESULT_HEADERS, interactive=False, label="Results", elem_id="eval-table")
    with gr.Row():
        profiles = gr.Plot(label="Per-block profiles", elem_id="eval-profiles")
        bars = gr.Plot(label="Perplexity", elem_id="eval-bars")
    sweep_plot = gr.Plot(label="Perplexity against sparsity", elem_id="eval-sweep")
    with gr.Column(visible=False, elem_id="zs-section") as zs_section, gr.Row():  # shown once there are results
        zs_table = gr.Dataframe(interactive=False, label="Zero-shot accuracy (acc, acc_norm; n examples)",
                                elem_id="zs-table")
        zs_bars = gr.Plot(label="Zero-shot accuracy", elem_id="zs-bars")
    experiment = gr.State(None)  # id of the experiment this tab saved last
    builder = [ctx[c] for c in CONTROLS]
    outputs = [status, saved, table, profiles, bars, sweep_plot, experiment, zs_section, zs_table, zs_bars]

    def run(kind: str, controls: tuple, target, mode, windows, dense, targets, name, tags, request, zs_tasks="",
            zs_limit=0):
        """Shared by both buttons: wait for the device, record the experiment as running, clear what an earlier run
        left on the tab, stream the job, record its outcome."""
        try:
            fn = function_from_controls(*controls)
            windows = int(windows) or None
            points = parse_targets(targets) if kind == "sweep" else []
            task_names = parse_tasks(zs_tasks) if kind != "sweep" and (zs_tasks or "").strip() else ()
        except DSAError as e:
            yield error_text(e), *(gr.skip(),) * (len(outputs) - 1)
            return
        ticket = yield from wait_for_device(ctx, kind, len(outputs), request)
        if ticket is None:
            return
        try:
            cfg = ws.eval_config(functions.to_text(fn), target, mode, windows)
            config = {**cfg.to_dict(), "dense": bool(dense), "compare": ["uniform", "owl", "dsa"]}
            if kind == "sweep":
                config["targets"] = points
                work = lambda job: ws.sweep(fn, points, mode, windows, job)
            else:
                limit = int(zs_limit or 0) or None
                config.update(tasks=list(task_names), tasks_limit=limit)
                work = lambda job: ws.evaluate(fn, target, mode, windows, bool(dense), job, task_names, limit)
            run = ctx.recorder.start(kind, config, name=name or "", tags=parse_tags(tags),
                                     environment=ws.environment())
        except DSAError as e:
            ws.queue.leave(ticket)
            yield error_text(e), *(gr.skip(),) * (len(outputs) - 1)
            return
        try:
            job = ws.start(kind, work, ticket)
        except DSAError as e:
            run.fail(e)
            yield error_text(e), *(gr.skip(),) * (len(outputs) - 1)
            return
        link = permalink_for(request, run.id)
        running = figures.empty_figure(f"{kind.capitalize()} {run.id[:8]} is running…")
        yield (job.status(), saved_markdown(run, link), [], running, running, running, run.id,
               gr.Column(visible=False), gr.skip(), gr.skip())  # nothing of an earlier run stays up

        def finish(result: dict) -> tuple:
            protocol = result.pop("protocol", None) or {}
            run.done(result, protocol=protocol)
            charts = experiments.charts(run.record)
            rows = result_rows(kind, result)
            empty = figures.empty_figure("Run a sweep to see this chart." if kind == "evaluation" else
                                         "Evaluate at one target to see this chart.")
            return (f"✓ {kind.capitalize()} done in {job.elapsed():.1f} s.", saved_markdown(run, link), rows,
                    charts.get("profiles", gr.skip()), charts.get("perplexity", gr.skip()),
                    charts.get("sweep", empty), run.id, *zeroshot_outputs(result))

        def fail(e: BaseException) -> tuple:
            run.fail(e)
            return error_text(e), saved_markdown(run, link), *(gr.skip(),) * 4, run.id, *(gr.skip(),) * 3

        yield from stream_job(job, len(outputs), finish, fail, abandoned=lambda: run.fail(GeneratorExit()))

    # Explicit parameters: Gradio places the request by its position in the signature.
    def evaluate_fn(pre1, pre2, reduction, transform1, transform2, mapping, param, target, mode, windows, dense,
                    targets, name, tags, zs_tasks, zs_limit, request: gr.Request):
        controls = (pre1, pre2, reduction, transform1, transform2, mapping, param)
        yield from run("evaluation", controls, target, mode, windows, dense, targets, name, tags, request, zs_tasks,
                       zs_limit)

    def sweep_fn(pre1, pre2, reduction, transform1, transform2, mapping, param, target, mode, windows, dense,
                 targets, name, tags, zs_tasks, zs_limit, request: gr.Request):
        controls = (pre1, pre2, reduction, transform1, transform2, mapping, param)
        yield from run("sweep", controls, target, mode, windows, dense, targets, name, tags, request)

    def save_meta(id: str | None, name: str, tags: str) -> str:
        if id is None:
            return "✗ Nothing to save yet: evaluate first."
        try:
            history.update(id, name=name or "", tags=parse_tags(tags))
        except StorageError as e:
            return error_text(e)
        return f"✓ Saved name and tags of experiment `{id}`."

    inputs = [*builder, target, mode, windows, dense, targets, name, tags, tasks, tasks_limit]
    evaluate.click(evaluate_fn, inputs, outputs, api_name="evaluate", show_progress="hidden", **ctx.device_queue)
    sweep.click(sweep_fn, inputs, outputs, api_name="sweep", show_progress="hidden", **ctx.device_queue)
    save.click(save_meta, [experiment, name, tags], status, api_name="save_experiment")
    target.change(lambda v: gr.Button(evaluate_label(v)), target, evaluate, api_visibility="private",
                  show_progress="hidden", queue=False)
    task_set.change(lambda picked: ", ".join(picked), task_set, tasks, api_visibility="private",
                    show_progress="hidden", queue=False)
    cancel.click(cancel_handler(ws), None, status, api_visibility="private", concurrency_limit=None,
                 concurrency_id="control")
