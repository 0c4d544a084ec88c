"""Plotly figure builders for the web app: per-block sparsity profiles, perplexity dots, perplexity against
sparsity, search progress, and how far a hybrid search's refinement moved each unit.

Each builder takes plain data (lists, dicts of floats) and returns a `plotly.graph_objects.Figure`; none of them
touches a model, a session or the database, so the same figures serve live runs, saved experiments and
comparisons. Perplexity axes of curves are logarithmic (a pruned model's perplexity spans orders of magnitude);
the perplexity dots' axis only when they span more than a decade. Labels may come from users (experiment names,
imported results), so they are escaped where Plotly would render their HTML.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import plotly.graph_objects as go
from plotly.colors import sample_colorscale
from plotly.subplots import make_subplots

from dsa_core.fitness import FITNESS_NAMES
from ui import escape

# One colour per allocation on every chart (profiles, perplexity, sweeps, zero-shot bars, searches): the function
# being built, the references, the dense model and a search's best keep theirs; any other label (experiments
# compared) takes the next colour of OTHER_COLOURS, none of which is a reserved one.
ALLOCATION_COLOURS = {"this function": "#ff7f0e", "uniform": "#7f7f7f", "owl": "#1f77b4", "dsa preset": "#2ca02c",
                      "dense": "#333333", "best function": "#9467bd", "best allocation": "#9467bd"}
BEST = ALLOCATION_COLOURS["best function"]  # a search's best, on its progress and refinement charts too
OTHER_COLOURS = ("#17becf", "#8c564b", "#e377c2", "#bcbd22", "#393b79", "#637939", "#8c6d31", "#843c39")
HEIGHT = 360
WHOLE_TICKS = 12  # up to this many blocks, one x tick each
# Legends go under the plot, anchored to the figure's bottom edge: placed in plot units (y=-0.2), a legend that
# wraps onto several rows on a narrow screen shrinks the plot and climbs over the x axis's title.
LEGEND = {"orientation": "h", "yref": "container", "y": 0, "yanchor": "bottom", "x": 0}


def _layout(fig: go.Figure, title: str, x: str, y: str, log_y: bool = False) -> go.Figure:
    fig.update_layout(
        title={"text": title, "x": 0.01}, height=HEIGHT, margin={"l": 60, "r": 20, "t": 50, "b": 50},
        xaxis_title=x, yaxis_title=y, legend=LEGEND, template="plotly_white",
    )
    if log_y:
        fig.update_yaxes(type="log")
    return fig


def colours(labels: Sequence[str]) -> list[str]:
    """The colour of each label: its own when it names an allocation, else the next of OTHER_COLOURS."""
    others = iter(OTHER_COLOURS * (1 + len(labels) // len(OTHER_COLOURS)))
    return [ALLOCATION_COLOURS.get(label) or next(others) for label in labels]


def _finite(values: Sequence[float | None]) -> list[float | None]:
    return [v if v is not None and math.isfinite(v) else None for v in values]


def empty_figure(message: str) -> go.Figure:
    """A blank chart that says why it is blank (no model loaded, nothing to compare...)."""
    fig = go.Figure()
    fig.add_annotation(text=escape.plot(message), showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper",
                       font={"size": 14})
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return _layout(fig, "", "", "")


def profile_figure(profiles: Mapping[str, Sequence[float]], target: float | None = None,
                   title: str = "Per-block sparsity") -> go.Figure:
    """One line per allocation: sparsity of each block (blocks numbered from 0), with the target dashed.
    The first profile is drawn thickest: it is the one being built or inspected."""
    fig = go.Figure()
    for i, ((label, ratios), colour) in enumerate(zip(profiles.items(), colours(list(profiles)))):
        fig.add_trace(go.Scatter(
            x=list(range(len(ratios))), y=_finite(ratios), name=escape.plot(label), mode="lines+markers",
            line={"width": 3 if i == 0 else 1.5, "color": colour,
                  "dash": "solid" if i == 0 else "dot"},
            marker={"size": 6 if i == 0 else 4},
            hovertemplate=f"{escape.plot(label)}<br>block %{{x}}: %{{y:.3f}}<extra></extra>",
        ))
    if target is not None:
        fig.add_hline(y=target, line={"dash": "dash", "color": "#d62728", "width": 1},
                      annotation_text=f"target {target:.0%}", annotation_position="top left")
    fig.update_yaxes(rangemode="tozero")
    blocks = max((len(r) for r in profiles.values()), default=0)
    # Whole blocks; beyond a dozen, Plotly spaces the ticks for the width (a tick per block crowds a phone's screen).
    fig.update_xaxes(dtick=1 if blocks <= WHOLE_TICKS else None, tick0=0, range=[-0.5, blocks - 0.5])
    return _layout(fig, title, "block", "sparsity")


def perplexity_figure(groups: Mapping[str, Mapping[str, float]], dense: float | None = None,
                      title: str = "Perplexity (lower is better)") -> go.Figure:
    """A dot per allocation, its value beside it inside the plot; with several groups (experiments compared), one
    colour per group. Dots, not bars: a bar's length misleads on a log axis or one that does not start at zero (a bar
    from 650 made 712 look a quarter of 826), while a dot's position reads true on both. The axis is logarithmic
    only when the values span more than 10×, and then its ticks are whole numbers (1, 2, 5 × 10^k)."""
    fig = go.Figure()
    for group, group_colour in zip(groups, colours(list(groups))):
        values = groups[group]
        labels = list(values)
        fig.add_trace(go.Scatter(
            x=[escape.plot(k) for k in labels], y=_finite([values[k] for k in labels]), name=escape.plot(group),
            mode="markers+text", text=[f"{values[k]:.4g}" for k in labels], textposition="middle right",
            cliponaxis=False, marker={"size": 12, "color": group_colour if len(groups) > 1 else colours(labels)},
            hovertemplate=f"{escape.plot(group)}<br>%{{x}}: %{{y:.4g}}<extra></extra>",
        ))
    if dense is not None and math.isfinite(dense):
        fig.add_hline(y=dense, line={"dash": "dash", "color": "#444"}, annotation_text=f"dense {dense:.4g}")
    fig.update_layout(scattermode="group", showlegend=len(groups) > 1)
    log = _spans_decades(groups)
    _layout(fig, title, "allocation", "perplexity", log_y=log)
    values = [v for g in groups.values() for v in g.values() if v is not None and math.isfinite(v) and v > 0]
    values += [dense] if dense is not None and math.isfinite(dense) and dense > 0 else []
    if log:
        ticks = _round_ticks(min(values), max(values))
        fig.update_yaxes(tickvals=ticks, ticktext=[f"{t:,g}" for t in ticks])
    else:
        fig.update_yaxes(tickformat=",~g")
    return fig


def _round_ticks(lo: float, hi: float) -> list[float]:
    """1, 2, 5 × 10^k from the last at or below `lo` to the first at or above `hi`: whole numbers to read on a log
    axis, where Plotly would label 2000–8000 as "2 3 4 … 8"."""
    ticks = [m * 10.0**k for k in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1) for m in (1, 2, 5)]
    first = max((t for t in ticks if t <= lo), default=ticks[0])
    last = min((t for t in ticks if t >= hi), default=ticks[-1])
    return [round(t, 10) for t in ticks if first <= t <= last]


def _spans_decades(groups: Mapping[str, Mapping[str, float]]) -> bool:
    """Log axis only when the values differ by more than 10×; otherwise it hides differences that matter."""
    values = [v for g in groups.values() for v in g.values() if v is not None and math.isfinite(v) and v > 0]
    return bool(values) and max(values) / min(values) > 10


def sweep_figure(series: Mapping[str, Sequence[tuple[float, float]]],
                 title: str = "Perplexity against sparsity") -> go.Figure:
    """One line per allocation through its (target sparsity, perplexity) points."""
    fig = go.Figure()
    for (label, points), colour in zip(series.items(), colours(list(series))):
        points = sorted(points)
        fig.add_trace(go.Scatter(
            x=[s for s, _ in points], y=_finite([p for _, p in points]), name=escape.plot(label),
            mode="lines+markers",
            line={"color": colour},
            hovertemplate=f"{escape.plot(label)}<br>sparsity %{{x:.2f}}: %{{y:.4g}}<extra></extra>",
        ))
    fig.update_xaxes(tickformat=".0%")
    return _layout(fig, title, "target sparsity", "perplexity", log_y=True)


def search_figure(curves: Mapping[str, Sequence[Mapping[str, float]]],
                  candidates: Sequence[tuple[int, float] | tuple[int, float, int]] = (),
                  title: str = "Search fitness", named: bool | None = None, stages: Sequence[str] = (),
                  allocation_from: float | None = None, fitness: str = "ppl") -> go.Figure:
    """Best-so-far and population mean fitness per generation (one pair of lines per search, named after it when
    `named`, by default when there are several), and optionally every candidate as a point at its generation.

    A candidate is (generation, fitness) or (generation, fitness, stage): with several fidelity `stages` (their
    legend labels, few tokens first) the points are coloured by the stage they reached, since a fitness measured on
    fewer tokens is not comparable with one measured on more. `allocation_from` marks the generation where a hybrid
    search's allocation phase begins. `fitness` is the kind (FITNESS_NAMES; "" when compared searches differ);
    lower is better either way."""
    named = len(curves) > 1 if named is None else named
    fig = go.Figure()
    if candidates and len(stages) > 1:
        colours = sample_colorscale("Oranges", [0.45 + 0.5 * s / (len(stages) - 1) for s in range(len(stages))])
        for s, (label, colour) in enumerate(zip(stages, colours)):
            points = [c for c in candidates if (c[2] if len(c) > 2 else 0) == s]
            fig.add_trace(go.Scatter(
                x=[c[0] for c in points], y=_finite([c[1] for c in points]), mode="markers", name=label,
                marker={"size": 6 + s, "color": colour, "opacity": 0.85},
            ))
    elif candidates:
        fig.add_trace(go.Scatter(
            x=[c[0] for c in candidates], y=_finite([c[1] for c in candidates]), mode="markers", name="candidates",
            marker={"size": 5, "color": "rgba(120,120,120,0.45)"},
        ))
    for name, gens in curves.items():
        prefix = f"{escape.plot(name)}: " if named else ""
        x = [g["generation"] for g in gens]
        fig.add_trace(go.Scatter(x=x, y=_finite([g["best"] for g in gens]), name=f"{prefix}best", mode="lines+markers",
                                 line={"width": 3, "color": None if named else BEST}))
        fig.add_trace(go.Scatter(x=x, y=_finite([g["mean"] for g in gens]), name=f"{prefix}population mean",
                                 mode="lines", line={"dash": "dot", "color": None if named else "#555"}))
    if allocation_from is not None:
        fig.add_vline(x=allocation_from - 0.5, line={"dash": "dash", "color": "#2ca02c", "width": 1.5},
                      annotation_text="allocation phase →", annotation_position="top right")
    last = max([g["generation"] for gens in curves.values() for g in gens] + [c[0] for c in candidates], default=0)
    fig.update_xaxes(rangemode="tozero", tick0=0, dtick=1 if last <= 20 else None)  # generations are whole
    kind = FITNESS_NAMES.get(fitness, fitness)
    return _layout(fig, title, "generation", f"fitness ({kind})" if kind else "fitness", log_y=True)


def refinement_figure(start: Sequence[float], refined: Sequence[float], labels: Sequence[str] | None = None,
                      target: float | None = None, title: str | None = None) -> go.Figure:
    """How far a hybrid search's direct refinement moved each unit: the refined allocation and the one it started
    from (above; a function's or ATP's) and refined − start as bars (below: red pruned more, blue pruned less).
    Units are blocks (x is the block index) or, with `labels` (e.g. "3.gate"), linear layers."""
    unit = "block" if labels is None else "linear layer"
    x = list(range(len(start))) if labels is None else [escape.plot(label) for label in labels]
    moved = [r - s for s, r in zip(start, refined)]
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.6, 0.4], vertical_spacing=0.06)
    for label, ratios, style in (("refined allocation", refined, {"color": BEST, "width": 2.5}),
                                 ("start allocation", start, {"dash": "dot", "color": "#444", "width": 2})):
        hover = f"{label}<br>{unit} %{{x}}: %{{y:.3f}}<extra></extra>"
        fig.add_trace(go.Scatter(x=x, y=_finite(ratios), name=label, mode="lines+markers", line=style,
                                 marker={"size": 4}, hovertemplate=hover), row=1, col=1)
    fig.add_trace(go.Bar(x=x, y=_finite(moved), name="moved (refined − start)",
                         marker_color=["#d62728" if m > 0 else "#1f77b4" for m in moved],
                         hovertemplate=f"{unit} %{{x}}: %{{y:+.3f}}<extra></extra>"), row=2, col=1)
    if target is not None:
        fig.add_hline(y=target, line={"dash": "dash", "color": "#d62728", "width": 1}, row=1, col=1)
    fig.add_hline(y=0, line={"color": "#444", "width": 1}, row=2, col=1)
    _layout(fig, title or f"How far the refinement moved each {unit}", "", "")
    fig.update_layout(height=HEIGHT + 120, bargap=0.15, legend={"traceorder": "normal"})
    fig.update_yaxes(title_text="sparsity", row=1, col=1)
    fig.update_yaxes(title_text="moved", row=2, col=1)
    fig.update_xaxes(title_text=unit, row=2, col=1)
    if labels is None:  # whole blocks, as on the profile chart
        fig.update_xaxes(dtick=1 if len(x) <= WHOLE_TICKS else None, tick0=0, range=[-0.5, len(x) - 0.5])
    return fig
