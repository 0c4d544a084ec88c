"""The "Structural pruning" tab: DISP-LLM's hypernetwork trained on the device with a live loss curve, then
the per-block widths of the six selection structures as a heat map and the perplexity of the compressed
model against the dense model and the uniform-width baseline at the same parameter count. Each run is saved
in the history (kind "structural") through the recorder as it starts, and updated when it ends.

The run loads its own copy of the model (training hooks and compression never touch the workspace's
pruning session) but shares the workspace's device lock and Cancel. Figures come from ui.structural_figures.
"""

from __future__ import annotations

import gradio as gr

from dsa_core.errors import DSAError
from dsa_core.structural.runner import StructuralRun, default_name, run_structural, stored_results
from dsa_core.structural.training import StructuralConfig
from ui import figures, structural_figures
from ui.context import AppContext, cancel_handler, error_text, permalink_for, stream_job, wait_for_device
from ui.jobs import Job
from ui.tab_evaluate import parse_tags, saved_markdown

TABLE_HEADERS = ["model", "kept block parameters", "total parameters", "perplexity"]


def build_structural_tab(ctx: AppContext) -> None:
    """Lay out the tab's components in the current Gradio block and wire its events."""
    ws = ctx.workspace
    d = StructuralConfig.defaults_for(ws.device)  # CPU-sized on a CPU
    with gr.Row():
        model = gr.Textbox("smollm2", label="Model (LLaMA, Mistral, Qwen2/3, Gemma 2/3)", elem_id="st-model",
                           info="smollm2, gemma3-270m, a hub id, or random:tiny for a quick try")
        target = gr.Slider(0.1, 0.95, value=d.target_ratio, step=0.05, label="Keep this share of block parameters",
                           elem_id="st-target")
        steps = gr.Number(d.steps, precision=0, minimum=1, label="Training steps", elem_id="st-steps")
    with gr.Row():
        batch = gr.Number(d.batch_size, precision=0, minimum=1, label="Windows per step", elem_id="st-batch")
        seqlen = gr.Number(d.seqlen, precision=0, minimum=16, label="Tokens per window", elem_id="st-seqlen")
        lam = gr.Number(d.lam, minimum=0, label="λ (budget weight)", elem_id="st-lam")
        lr = gr.Number(d.lr, minimum=0, label="Learning rate", elem_id="st-lr")
        windows = gr.Number(8, precision=0, minimum=0, label="Test windows (0 = the whole test split)",
                            elem_id="st-windows")
        baseline = gr.Checkbox(True, label="Uniform-width baseline", elem_id="st-baseline")
        heads = gr.Checkbox(d.prune_heads, label="Prune attention heads too", elem_id="st-heads",
                            info="shrinks the KV cache; DISP-LLM itself keeps every head")
    if ws.device.startswith("cpu"):
        gpu = StructuralConfig()
        times = (gpu.steps * gpu.batch_size * gpu.seqlen) / (d.steps * d.batch_size * d.seqlen)
        gr.Markdown(f"ⓘ On the CPU the settings start sized for minutes ({d.steps} steps of {d.batch_size} × "
                    f"{d.seqlen} tokens); a GPU's defaults ({gpu.steps} steps of {gpu.batch_size} × {gpu.seqlen}) "
                    f"would train on {times:.0f} times as many tokens. Once training starts, the status line says "
                    "how long is left.", elem_id="st-cpu-note")
    with gr.Row():
        name = gr.Textbox(label="Name", placeholder="optional", elem_id="st-name")
        tags = gr.Textbox(label="Tags", placeholder="comma-separated", elem_id="st-tags")
    with gr.Row():
        start = gr.Button("Train and compress", variant="primary", elem_id="st-start")
        cancel = gr.Button("Cancel", variant="stop", elem_id="st-cancel")
    status = gr.Markdown(elem_id="st-status", elem_classes="status-line")
    saved = gr.Markdown(elem_id="st-saved")
    table = gr.Dataframe(headers=TABLE_HEADERS, interactive=False, label="Perplexity (WikiText-2 test)",
                         elem_id="st-table")
    with gr.Row():
        loss = gr.Plot(label="Training", elem_id="st-loss")
        heatmap = gr.Plot(label="Widths", elem_id="st-widths")
    outputs = [status, saved, table, loss, heatmap]

    def train(model, target, steps, batch, seqlen, lam, lr, windows, baseline, heads, name, tags,
              request: gr.Request):
        ticket = yield from wait_for_device(ctx, "structural pruning", len(outputs), request)
        if ticket is None:
            return
        try:
            cfg = StructuralConfig.defaults_for(
                ws.device, model=None if (model or "").strip() in ("", "smollm2") else model.strip(),
                target_ratio=float(target), steps=int(steps), batch_size=int(batch), seqlen=int(seqlen),
                lam=float(lam), lr=float(lr), eval_windows=int(windows) or None, baseline=bool(baseline),
                prune_heads=bool(heads)).validate()
            ws.check_sources(cfg)
            run = ctx.recorder.start("structural", cfg.to_dict(), name=name or default_name(cfg.to_dict()),
                                     tags=parse_tags(tags), environment=ws.environment())
        except (DSAError, TypeError, ValueError) as e:
            ws.queue.leave(ticket)
            yield error_text(e), *(gr.skip(),) * (len(outputs) - 1)
            return
        try:
            # The job is the run's reporter: the training points are its events, the status line shows the time left.
            job = ws.start("structural pruning", lambda job: run_structural(cfg, job), ticket)
        except DSAError as e:
            run.fail(e)
            yield error_text(e), *(gr.skip(),) * (len(outputs) - 1)
            return
        link = permalink_for(request, run.id)
        yield (job.status(), saved_markdown(run, link), [], figures.empty_figure("Loading the model…"),
               figures.empty_figure(f"Run {run.id[:8]}: the widths appear when training ends."))

        def live(job: Job) -> tuple:
            curve = list(job.events)
            fig = (structural_figures.loss_curve(curve, cfg.target_ratio) if curve
                   else figures.empty_figure("Loading the model and the calibration text…"))
            return saved_markdown(run, link), gr.skip(), fig, gr.skip()

        def finish(structural: StructuralRun) -> tuple:
            result = structural.result
            results = stored_results(result)
            run.done(results, protocol=result["protocol"], environment={**ws.environment(), **result["environment"]})
            charts = structural_figures.charts(results)
            params, ppl = result["params"], result["ppl"]
            versus = f", uniform baseline {ppl['baseline']:.2f}" if "baseline" in ppl else ""
            return (f"✓ Kept {params['ratio']:.2%} of the block parameters; perplexity {ppl['compressed']:.2f} "
                    f"(dense {ppl['dense']:.2f}{versus}) in {job.elapsed():.1f} s."
                    + "".join(f"\n\n⚠ {w}" for w in result["warnings"]), saved_markdown(run, link),
                    structural_figures.perplexity_rows(results), charts["loss"], charts["widths"])

        def fail(e: BaseException) -> tuple:
            run.fail(e, {"curve": list(job.events)})  # the training curve so far is kept
            return error_text(e), saved_markdown(run, link), *(gr.skip(),) * 3

        def abandoned() -> None:  # the page was closed: the run was cancelled; its curve so far is kept
            run.fail(GeneratorExit(), {"curve": list(job.events)})

        yield from stream_job(job, len(outputs), finish, fail, live, abandoned)

    inputs = [model, target, steps, batch, seqlen, lam, lr, windows, baseline, heads, name, tags]
    start.click(train, inputs, outputs, api_name="structural", **ctx.device_queue)
    cancel.click(cancel_handler(ws), None, status, api_name="structural_cancel", concurrency_limit=None,
                 concurrency_id="control")
