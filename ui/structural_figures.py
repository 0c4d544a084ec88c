"""Plotly figure builders of structural pruning: the per-block widths of the six selection structures as a
heat map, the hypernetwork's training curve, and the charts of a saved structural run.

Each builder takes plain data (the lists and dicts of a structural result) and returns a
`plotly.graph_objects.Figure`; none touches a model, a session or the database.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ui import escape
from ui.figures import LEGEND

HEIGHT = 360


def widths_heatmap(widths: Sequence[Sequence[int]], full_widths: Sequence[int], labels: Sequence[str],
                   title: str = "Kept width per block") -> go.Figure:
    """Rows: the six structures (older runs: five); columns: blocks. Colour is the kept share of the structure's
    full width (so hidden, intermediate and head rows compare); the hover shows the width itself."""
    rows = list(zip(*widths)) if widths else [[] for _ in labels]
    share = [[w / full for w in row] for row, full in zip(rows, full_widths)]
    text = [[f"{w} / {full}" for w in row] for row, full in zip(rows, full_widths)]
    fig = go.Figure(go.Heatmap(
        z=share, x=list(range(len(widths))), y=[escape.plot(label) for label in labels], text=text,
        zmin=0.0, zmax=1.0, colorscale="Viridis", colorbar={"title": {"text": "kept"}, "tickformat": ".0%"},
        hovertemplate="block %{x}<br>%{y}: %{text}<br>%{z:.1%} kept<extra></extra>",
    ))
    fig.update_layout(title={"text": title, "x": 0.01}, height=HEIGHT, template="plotly_white",
                      margin={"l": 130, "r": 20, "t": 50, "b": 50}, xaxis_title="block")
    fig.update_yaxes(autorange="reversed")
    return fig


def loss_curve(curve: Sequence[Mapping[str, float]], target_ratio: float | None = None,
               title: str = "Hypernetwork training") -> go.Figure:
    """Total loss and cross-entropy per step (left axis) and the sampled masks' kept-parameter ratio (right
    axis), with the target ratio dashed."""
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    steps = [p["step"] for p in curve]
    fig.add_trace(go.Scatter(x=steps, y=[p["loss"] for p in curve], name="loss", mode="lines"))
    fig.add_trace(go.Scatter(x=steps, y=[p["ce"] for p in curve], name="cross-entropy", mode="lines"))
    fig.add_trace(go.Scatter(x=steps, y=[p["ratio"] for p in curve], name="kept ratio", mode="lines",
                             line={"dash": "dot"}), secondary_y=True)
    if target_ratio is not None:
        fig.add_hline(y=target_ratio, line_dash="dash", line_color="grey", secondary_y=True,
                      annotation_text=f"target {target_ratio:.0%}", annotation_position="bottom right")
    fig.update_layout(title={"text": title, "x": 0.01}, height=HEIGHT, template="plotly_white",
                      margin={"l": 60, "r": 60, "t": 50, "b": 50}, legend=LEGEND,
                      xaxis_title="step")
    fig.update_yaxes(title_text="loss", secondary_y=False)
    fig.update_yaxes(title_text="kept ratio", tickformat=".0%", secondary_y=True)
    return fig


def perplexity_rows(results: Mapping) -> list[list]:
    """Table rows (model, kept block parameters, total parameters, perplexity) of a structural result."""
    params, ppl = results["params"], results["ppl"]
    rows = [["dense", params["dense_block_linear"], params["dense_total"], ppl["dense"]],
            ["DISP-LLM", params["kept_block_linear"], params["compressed_total"], ppl["compressed"]]]
    if "baseline" in ppl:
        base = results["baseline"]["params"]
        rows.append(["uniform baseline", base, params["compressed_total"] - params["kept_block_linear"] + base,
                     ppl["baseline"]])
    return [[label, int(kept), int(total), round(float(p), 3)] for label, kept, total, p in rows]


def charts(results: Mapping) -> dict[str, go.Figure]:
    """The figures of a finished (or saved) structural run, by name: "widths" and "loss"."""
    target = results.get("params", {}).get("target_ratio")
    return {"widths": widths_heatmap(results["selection"]["widths"], results["full_widths"],
                                     results["structure_labels"]),
            "loss": loss_curve(results.get("curve", []), target)}
