"""Figures of zero-shot accuracy for the Evaluate tab: the per-task table's data and a grouped bar chart with
one bar per allocation (dense, uniform, OWL, the DSA preset, the current function) in each task.

Builders take plain data, the "zeroshot" sections of evaluation results keyed by label, and return table
rows or a `plotly.graph_objects.Figure`; they never touch a model. acc and acc_norm are drawn on separate
charts, never mixed: a task without acc_norm (BoolQ, RTE, WinoGrande in lm-eval) gets no acc_norm bar.
"""

from __future__ import annotations

from collections.abc import Mapping

import plotly.graph_objects as go

from dsa_core.zeroshot.report import MEAN, table, task_names, title
from dsa_core.zeroshot.tasks import TASKS
from ui.figures import colours

METRICS = ("acc", "acc_norm")


def zeroshot_table(results: Mapping[str, dict], digits: int = 4) -> tuple[list[str], list[list]]:
    """Headers and rows for a table: task, n (examples scored), then acc and acc_norm of each labelled result;
    None where lm-eval defines no acc_norm. The last row holds the means."""
    headers, rows = table(results)
    return headers, [[round(c, digits) if isinstance(c, float) else c for c in row] for row in rows]


def _value(result: dict, name: str, metric: str) -> float | None:
    if name == MEAN:
        if metric == "acc":
            return result["mean_acc"]
        norms = [t["acc_norm"] for t in result["tasks"].values()]
        return sum(norms) / len(norms) if None not in norms else None
    task = result["tasks"].get(name)
    return task[metric] if task else None


def zeroshot_bars(results: Mapping[str, dict], metric: str = "acc") -> go.Figure:
    """Grouped bars: tasks along x (and their mean, where every result has one), one bar per labelled result,
    error bars of one standard error, and a dash at each task's chance accuracy."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, not {metric!r}")
    names = [n for n in task_names(results) if any(_value(r, n, metric) is not None for r in results.values())]
    if any(_value(r, MEAN, metric) is not None for r in results.values()):
        names.append(MEAN)
    x = [title(n) if n != MEAN else MEAN for n in names]
    fig = go.Figure()
    for (label, result), colour in zip(results.items(), colours(list(results))):  # each allocation's own colour
        values = [_value(result, n, metric) for n in names]
        errors = [(result["tasks"].get(n) or {}).get(f"{metric}_stderr") if n != MEAN else None for n in names]
        counts = [(result["tasks"].get(n) or {}).get("n", "") if n != MEAN else "" for n in names]
        fig.add_bar(name=label, x=x, y=values, marker_color=colour,
                    error_y={"type": "data", "array": [e or 0 for e in errors], "visible": any(errors)},
                    customdata=counts,
                    hovertemplate=f"{label}<br>%{{x}}: %{{y:.3f}} (n = %{{customdata}})<extra></extra>")
    fig.add_scatter(name="chance", x=x, y=[TASKS[n].chance if n in TASKS else None for n in names], mode="markers",
                    marker={"symbol": "line-ew-open", "size": 28, "color": "#d62728", "line": {"width": 2}},
                    hovertemplate="chance %{y:.2f}<extra></extra>")
    fig.update_layout(
        barmode="group", title={"text": f"Zero-shot accuracy ({metric})", "x": 0.01}, height=360,
        margin={"l": 60, "r": 20, "t": 50, "b": 50}, xaxis_title="task", yaxis_title=metric,
        yaxis_range=[0, 1], legend={"orientation": "h", "y": -0.2}, template="plotly_white",
    )
    return fig
