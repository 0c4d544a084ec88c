"""The Gradio app: `build_app` lays out the tabs (model & data, formula builder, evaluate, search, structural
pruning, history) over one workspace and one history. Each tab lives in its own module (ui/tab_*.py,
ui/structural_tab.py) and shares what it needs with the others through ui/context.py.
"""

from __future__ import annotations

import gradio as gr

from storage import History
from ui import tab_builder, tab_evaluate, tab_history, tab_model, tab_search
from ui.context import AppContext, wire_targets
from ui.structural_tab import build_structural_tab
from ui.workspace import Workspace

TITLE = "Sparsity Explorer"
CSS = """
.status-line { min-height: 1.6em; }
.formula { font-size: 1.05em; }
"""


def build_app(workspace: Workspace, history: History) -> gr.Blocks:
    """The whole app; launch it with `launch_options()` from app.py (theme and CSS are launch options in Gradio 6)."""
    ctx = AppContext(workspace, history)
    with gr.Blocks(title=TITLE, analytics_enabled=False) as demo:
        gr.Markdown(f"# {TITLE}\nHow sparsity is allocated across the blocks of a language model when it is pruned: "
                    "build an allocation function, see its per-block profile, evaluate it, search for better ones.")
        with gr.Tabs(elem_id="tabs") as tabs:
            ctx.add(tabs=tabs)
            with gr.Tab("Model & data", id="model"):
                tab_model.build(ctx)
            with gr.Tab("Formula builder", id="builder"):
                tab_builder.build(ctx)
            with gr.Tab("Evaluate", id="evaluate"):
                tab_evaluate.build(ctx)
            with gr.Tab("Search", id="search"):
                tab_search.build(ctx)
            with gr.Tab("Structural pruning", id="structural"):
                build_structural_tab(ctx)
            with gr.Tab("History & sharing", id="history") as history_tab:
                ctx.add(history_tab=history_tab)
                tab_history.build(ctx)
        wire_targets(ctx)
        for fn, inputs, outputs in ctx.page_loads:
            demo.load(fn, inputs, outputs, api_visibility="private", show_progress="hidden")
        tab_history.wire_permalink(ctx, demo)
    demo.queue(default_concurrency_limit=4)
    return demo
