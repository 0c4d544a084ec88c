"""The "Model & data" tab: which model, metric, pattern, target sparsity and calibration data; loading and scoring
with streamed progress; the model's blocks and parameter counts."""

from __future__ import annotations

import gradio as gr

from dsa_core.config import EvalConfig
from dsa_core.errors import DSAError
from dsa_core.models import DEFAULT_MODEL
from dsa_core.settings import setting
from ui import escape
from ui.context import AppContext, cancel_handler, error_text, stream_job, target_slider, wait_for_device

MODELS = [DEFAULT_MODEL, "gemma3-270m", "random:tiny"]
BLOCK_HEADERS = ["block", "parameters", "linear layers (out × in)"]


def summary_markdown(d: dict) -> str:
    """The loaded model, shown to every page: its name and calibration source are what someone typed."""
    t = d.get("timings", {})
    took = ", ".join(f"{k} {v:.1f} s" for k, v in t.items())
    text = escape.markdown
    return (f"**{text(d['name'])}** · {text(d['arch'])} · {len(d['blocks'])} blocks · {d['total_params']:,} "
            f"parameters, {d['prunable_params']:,} prunable · {d['device']} · {d['dtype']}\n\n"
            f"calibration: {text(d.get('calibration_source') or '—')}\n\n{took}")


def ready_text(d: dict, metric: str, pattern: str) -> str:
    return f"✓ Ready: {escape.markdown(d['name'])} scored with {metric} ({pattern})."


def block_rows(d: dict) -> list[list]:
    return [[b["index"], b["params"], ", ".join(f"{n} {o}×{i}" for n, (o, i) in b["layers"].items())]
            for b in d["blocks"]]


def choice(name: str) -> dict:
    """A dropdown's choices and default, from EvalConfig's declaration of the setting `name` (as the CLI's)."""
    f = setting(EvalConfig, name)
    return {"choices": list(f.metadata["choices"]), "value": f.default}


def build(ctx: AppContext) -> None:
    ws = ctx.workspace
    where = ("smollm2 (SmolLM2-135M-Instruct, the default), gemma3-270m (Gemma 3 270M), random:tiny, a Hugging Face "
             "hub id, a local directory or a .gguf file" if ws.limits is None else ws.limits.text())
    with gr.Row():
        model = gr.Dropdown(MODELS if ws.limits is None else list(ws.limits.models), value=DEFAULT_MODEL,
                            allow_custom_value=ws.limits is None, label="Model", info=where,
                            elem_id="model", scale=3)
        metric = gr.Dropdown(**choice("metric"), label="Metric", elem_id="metric")
        pattern = gr.Dropdown(**choice("pattern"), label="Pattern", elem_id="pattern")
    target = target_slider(ctx, "target")
    with gr.Row():
        calib = gr.Dropdown(["wikitext2", "c4"], value="wikitext2", allow_custom_value=ws.allow_local_paths,
                            label="Calibration text", info="wikitext2, c4 (hub only)" +
                            (" or a text file's path" if ws.allow_local_paths else ""), elem_id="calib")
        nsamples = gr.Number(32, precision=0, minimum=1, label="Calibration samples", elem_id="nsamples")
        seqlen = gr.Number(512, precision=0, minimum=16, label="Sequence length", elem_id="seqlen")
        seed = gr.Number(0, precision=0, label="Seed", elem_id="seed")
        source = gr.Dropdown(**choice("data_source"), label="Data source")
    with gr.Row():
        load = gr.Button("Load & score", variant="primary", elem_id="load")
        cancel = gr.Button("Cancel", variant="stop", elem_id="load-cancel")
    status = gr.Markdown("No model loaded yet.", elem_id="model-status", elem_classes="status-line")
    summary = gr.Markdown(elem_id="model-summary")
    blocks = gr.Dataframe(headers=BLOCK_HEADERS, datatype=["number", "number", "str"], interactive=False,
                          label="Blocks", elem_id="blocks", max_height=360)
    ctx.add(model=model, metric=metric, pattern=pattern, target=target, calib=calib, nsamples=nsamples,
            seqlen=seqlen, seed=seed, source=source)

    def load_model(model, metric, pattern, target, calib, nsamples, seqlen, seed, source, request: gr.Request):
        try:
            cfg = EvalConfig(model=(model or DEFAULT_MODEL).strip(), metric=metric, pattern=pattern, sparsity=target,
                             calib=(calib or "wikitext2").strip(), nsamples=int(nsamples), seqlen=int(seqlen),
                             seed=int(seed), data_source=source)
        except (DSAError, TypeError, ValueError) as e:
            yield error_text(e), gr.skip(), gr.skip()
            return
        ticket = yield from wait_for_device(ctx, "loading and scoring", 3, request)
        if ticket is None:
            return
        try:
            job = ws.start("loading and scoring", lambda job: ws.load(cfg, job), ticket)
        except DSAError as e:
            yield error_text(e), gr.skip(), gr.skip()
            return
        yield job.status(), "", []  # the model shown before is being replaced

        def finish(d: dict) -> tuple:
            return ready_text(d, metric, pattern), summary_markdown(d), block_rows(d)

        yield from stream_job(job, 3, finish, lambda e: (error_text(e), "", []))

    def show_loaded() -> tuple:
        """A page opened after a model was loaded (by this or another page) shows that model."""
        d, cfg = ws.description, ws.config
        if d is None or cfg is None:
            return (gr.skip(),) * 3
        return ready_text(d, cfg.metric, cfg.pattern), summary_markdown(d), block_rows(d)

    ctx.page_loads.append((show_loaded, None, [status, summary, blocks]))
    inputs = [model, metric, pattern, target, calib, nsamples, seqlen, seed, source]
    ctx.events["loaded"] = load.click(load_model, inputs, [status, summary, blocks], api_name="load_model",
                                      show_progress="hidden", **ctx.device_queue)
    cancel.click(cancel_handler(ws), None, status, api_name="cancel", concurrency_limit=None, concurrency_id="control")
