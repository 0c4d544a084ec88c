"""Figures of zero-shot accuracy for the Evaluate and History tabs: the per-task table's data, a grouped bar chart
with one bar per allocation (dense, uniform, OWL, the DSA preset, the current function) or per experiment in each
task, and the task sets the Evaluate tab offers.

Builders take plain data, the "zeroshot" sections of evaluation results keyed by label, and return table
rows or a `plotly.graph_objects.Figure`; they never touch a model. acc and acc_norm are drawn on separate
charts, never mixed: a task without acc_norm (BoolQ, RTE, WinoGrande in lm-eval) gets no acc_norm bar. A task
asked for but not scored here (HellaSwag without its file) keeps its place on the axis, marked missing, and the
mean's label says over how many tasks it runs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import plotly.graph_objects as go

from dsa_core.zeroshot.report import MEAN, mean_label, mean_norm, missing_tasks, table, task_names, title
from dsa_core.zeroshot.tasks import PAPER_TASKS, TASKS
from ui.figures import LEGEND, colours

METRICS = ("acc", "acc_norm")


def zeroshot_table(results: Mapping[str, dict], digits: int = 4) -> tuple[list[str], list[list]]:
    """Headers and rows for a table: task, n (examples scored), then acc and acc_norm of each labelled result;
    None where lm-eval defines no acc_norm. Missing tasks are rows marked "missing"; the last row holds the means."""
    headers, rows = table(results)
    return headers, [[round(c, digits) if isinstance(c, float) else c for c in row] for row in rows]


def _value(result: dict, name: str, metric: str) -> float | None:
    if name == MEAN:
        return result["mean_acc"] if metric == "acc" else mean_norm(result)
    task = result["tasks"].get(name)
    return task[metric] if task else None


def _error(result: dict, name: str, metric: str) -> float | None:
    """One standard error; the mean's, of a mean of independent tasks, is sqrt(Σ se²) / k."""
    if name != MEAN:
        return (result["tasks"].get(name) or {}).get(f"{metric}_stderr")
    errors = [t.get(f"{metric}_stderr") for t in result["tasks"].values()]
    if not errors or None in errors or _value(result, MEAN, metric) is None:
        return None
    return math.sqrt(sum(e * e for e in errors)) / len(errors)


def zeroshot_bars(results: Mapping[str, dict], metric: str = "acc") -> go.Figure:
    """Grouped bars: tasks along x (and their mean, where every result has one), one bar per labelled result,
    error bars of one standard error, a dash at each task's chance accuracy, and each missing task's place marked."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, not {metric!r}")
    names = [n for n in task_names(results) if any(_value(r, n, metric) is not None for r in results.values())]
    missing = missing_tasks(results)
    names += missing
    has_mean = any(_value(r, MEAN, metric) is not None for r in results.values())
    mean = mean_label(results)
    x = [title(n) for n in names] + ([mean] if has_mean else [])
    keys = names + ([MEAN] if has_mean else [])
    fig = go.Figure()
    for (label, result), colour in zip(results.items(), colours(list(results))):  # each allocation's own colour
        values = [_value(result, n, metric) for n in keys]
        errors = [_error(result, n, metric) for n in keys]
        counts = [(result["tasks"].get(n) or {}).get("n", "") if n != MEAN else len(result["tasks"]) for n in keys]
        fig.add_bar(name=label, x=x, y=values, marker_color=colour,
                    error_y={"type": "data", "array": [e or 0 for e in errors], "visible": any(errors)},
                    customdata=counts,
                    hovertemplate=f"{label}<br>%{{x}}: %{{y:.3f}} (n = %{{customdata}})<extra></extra>")
    fig.add_scatter(name="chance", x=x, y=[TASKS[n].chance if n in TASKS else None for n in keys], mode="markers",
                    marker={"symbol": "line-ew-open", "size": 28, "color": "#d62728", "line": {"width": 2}},
                    hovertemplate="chance %{y:.2f}<extra></extra>")
    for n in missing:
        fig.add_annotation(x=title(n), y=0.5, text="missing", showarrow=False, textangle=-90,
                           font={"color": "#7f7f7f"}, hovertext=next(r["missing"][n] for r in results.values()
                                                                       if n in r.get("missing", {})))
    fig.update_layout(
        barmode="group", title={"text": f"Zero-shot accuracy ({metric})", "x": 0.01}, height=360,
        margin={"l": 60, "r": 20, "t": 50, "b": 50}, xaxis_title="task", yaxis_title=metric,
        yaxis_range=[0, 1], legend=LEGEND, template="plotly_white",
    )
    return fig


def task_sets(available: Mapping[str, str | None]) -> list[tuple[str, str]]:
    """The Evaluate tab's choices, (label, value): the papers' seven, saying how many can be scored here and which
    are missing, and PIQA (marked when missing)."""
    absent = [TASKS[n].title for n in PAPER_TASKS if available.get(n)]
    here = len(PAPER_TASKS) - len(absent)
    paper = "The papers' seven (BoolQ, RTE, HellaSwag, WinoGrande, ARC-e, ARC-c, OBQA)"
    if absent:
        paper += f": {here} here, {', '.join(absent)} missing"
    return [(paper, "paper"), ("PIQA" + (" (missing here)" if available.get("piqa") else ""), "piqa")]


def zeroshot_sections(results: Mapping, name: str | None = None) -> dict[str, dict]:
    """The zero-shot sections of a stored evaluation, keyed for a chart: dense first, then each allocation's (an
    evaluation from the web app keeps one per row; one from the command line a single `zeroshot`). With `name`
    (comparing experiments), only the first allocation's (the app's own function), labelled by the experiment."""
    rows = [(r["label"], r["zeroshot"]) for r in results.get("rows") or [] if r.get("zeroshot")]
    if results.get("zeroshot"):
        rows.append(("pruned", results["zeroshot"]))
    if name is not None:
        return {name: rows[0][1]} if rows else {}
    return ({"dense": results["dense_zeroshot"]} if results.get("dense_zeroshot") else {}) | dict(rows)
