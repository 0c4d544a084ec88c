"""The "Formula builder" tab: one dropdown per stage of an allocation function, the mapping and its λ/ε; the
function as mathematics and as text; its per-block profile over uniform, OWL and the DSA preset, redrawn from
the cached statistics on every change; warnings beside it."""

from __future__ import annotations

import gradio as gr

from dsa_core import functions
from dsa_core import operations as ops
from dsa_core.errors import DSAError
from ui import figures
from ui.context import AppContext, error_text, target_slider, warnings_text
from ui.formula import (
    CONTROLS,
    PARAM_MAX,
    Controls,
    choices,
    controls_from_text,
    formula_markdown,
    function_from_controls,
    glossary,
    mapping_choices,
    preset_of,
)

PRESET_CHOICES = [("DSA preset (LLaMA-1-7B, Wanda, 70%)", "dsa"), ("OWL written as a function", "owl_fn"),
                  ("uniform written as a function", "uniform_fn")]
NO_MODEL = "Load a model on the Model & data tab to see profiles."


def controls_update(c: Controls) -> list:
    """The values of the builder's controls that show `c`."""
    return list(c.values())


def build(ctx: AppContext) -> None:
    ws = ctx.workspace
    start = Controls()
    # Controls on the left, the profile on the right, so that the live redraw is in view while editing (on a
    # narrow screen the columns stack: controls, formula and warnings first, then the profile).
    with gr.Row(equal_height=False):
        with gr.Column(scale=2, min_width=340):
            with gr.Row():
                preset = gr.Dropdown(PRESET_CHOICES, value=None, label="Start from a preset", elem_id="preset")
                target = target_slider(ctx, "builder-target")
            text = gr.Textbox(functions.to_text(function_from_controls(*start.values())), label="Text form",
                              info="edit and press Enter to load a function written as text",
                              elem_id="function-text")
            with gr.Row():
                pre1 = gr.Dropdown(choices(ops.PRE), value=start.pre1, label="Pre-process 1", elem_id="pre1")
                pre2 = gr.Dropdown(choices(ops.PRE), value=start.pre2, label="Pre-process 2", elem_id="pre2")
                reduction = gr.Dropdown(choices(ops.REDUCTION), value=start.reduction, label="Reduction",
                                        elem_id="reduction")
            with gr.Row():
                transform1 = gr.Dropdown(choices(ops.TRANSFORM), value=start.transform1, label="Transform 1",
                                         elem_id="transform1")
                transform2 = gr.Dropdown(choices(ops.TRANSFORM), value=start.transform2, label="Transform 2",
                                         elem_id="transform2")
            with gr.Row():
                mapping = gr.Radio(mapping_choices(), value=start.mapping, label="Mapping to sparsity",
                                   elem_id="mapping")
                param = gr.Slider(0.0, PARAM_MAX, value=start.param, step=0.01, elem_id="param",
                                  label="λ (band, at most 0.5) / ε (multiplicative, at most 1)")
            formula = gr.Markdown(formula_markdown(function_from_controls(*start.values())), elem_id="formula",
                                  elem_classes="formula",
                                  latex_delimiters=[{"left": "$$", "right": "$$", "display": True}])
            warnings = gr.Markdown(elem_id="builder-warnings")
            with gr.Accordion("What the operations do", open=False):
                for stage, title in ((ops.PRE, "Pre-process (element-wise)"),
                                     (ops.REDUCTION, "Reduction (to one value)"),
                                     (ops.TRANSFORM, "Transform (of the value)")):
                    gr.Markdown(f"**{title}**\n\n{glossary(stage)}",
                                latex_delimiters=[{"left": "$", "right": "$", "display": False}])
        with gr.Column(scale=3, min_width=340):
            plot = gr.Plot(figures.empty_figure(NO_MODEL), label="Per-block sparsity profile",
                           elem_id="profile-plot")
    controls = [pre1, pre2, reduction, transform1, transform2, mapping, param]
    ctx.add(**dict(zip(CONTROLS, controls)), function_text=text)
    presets = tuple(key for _, key in PRESET_CHOICES)

    def describe(*values):
        """The function as mathematics and text, and the preset it is (if any): no allocation, so it keeps up
        with the slider. Controls that make no function clear both, rather than show the last valid one."""
        try:
            fn = function_from_controls(*values)
        except DSAError as e:
            return error_text(e), "", None
        return formula_markdown(fn), functions.to_text(fn), preset_of(Controls(*values), presets)

    def profile(pre1, pre2, reduction, transform1, transform2, mapping, param, target):
        try:
            fn = function_from_controls(pre1, pre2, reduction, transform1, transform2, mapping, param)
        except DSAError as e:
            return figures.empty_figure(f"No profile: {e}"), error_text(e)
        try:
            p = ws.profiles(fn, target)
        except DSAError as e:
            return figures.empty_figure(str(e)), ""
        return (figures.profile_figure(p.ratios, target),
                warnings_text(p.warnings) or "No warnings: every block's value is finite.")

    def load_text(value: str, *shown):
        """A function's text or a preset into the controls; text that cannot be read is refused with a message,
        and the box goes back to the function the controls (and the plot) still show."""
        try:
            return [*controls_update(controls_from_text(value)), gr.skip(), ""]
        except DSAError as e:
            try:
                current = functions.to_text(function_from_controls(*shown))
            except DSAError:
                current = gr.skip()
            kept = f" The builder still shows {current}." if isinstance(current, str) else ""
            return [*(gr.skip(),) * len(controls), current, error_text(e) + kept]

    def mapping_changed(mapping: str) -> float:
        return functions.MAPPINGS[mapping]  # each mapping's published default

    quick = {"show_progress": "hidden", "trigger_mode": "always_last"}
    gr.on([c.change for c in controls], describe, controls, [formula, text, preset], api_name="describe",
          concurrency_limit=None, concurrency_id="describe", **quick)
    outputs = [plot, warnings]
    gr.on([c.change for c in controls] + [target.change], profile, [*controls, target], outputs, api_name="profile",
          concurrency_id="profile", **quick)
    ctx.events["loaded"].then(profile, [*controls, target], outputs, show_progress="hidden",
                              api_visibility="private")
    ctx.page_loads.append((profile, [*controls, target], outputs))
    text.submit(load_text, [text, *controls], [*controls, text, warnings], api_name="load_text")
    preset.input(load_text, [preset, *controls], [*controls, text, warnings], api_visibility="private")
    mapping.input(mapping_changed, mapping, param, api_visibility="private")
