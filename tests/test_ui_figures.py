"""Figure builders: plain data in, a Plotly figure out, with the data where the browser will read it."""

import math

from ui import figures


def test_profile_figure_draws_each_allocation_and_the_target():
    fig = figures.profile_figure({"this function": [0.4, 0.6, 0.5], "uniform": [0.5, 0.5, 0.5]}, target=0.5)
    assert [t.name for t in fig.data] == ["this function", "uniform"]
    assert list(fig.data[0].y) == [0.4, 0.6, 0.5] and list(fig.data[0].x) == [0, 1, 2]
    assert fig.data[0].line.width > fig.data[1].line.width  # the function being built stands out
    assert fig.data[1].line.color == figures.ALLOCATION_COLOURS["uniform"]
    assert [s.y0 for s in fig.layout.shapes] == [0.5]
    assert fig.layout.xaxis.dtick == 1


def test_non_finite_values_become_gaps():
    fig = figures.profile_figure({"f": [0.1, math.nan, math.inf]})
    assert list(fig.data[0].y) == [0.1, None, None]
    assert not fig.layout.shapes


def test_perplexity_dots_single_and_grouped():
    one = figures.perplexity_figure({"run": {"this function": 20.0, "uniform": 22.0}}, dense=12.0)
    assert len(one.data) == 1 and list(one.data[0].x) == ["this function", "uniform"]
    assert one.data[0].mode == "markers+text" and list(one.data[0].text) == ["20", "22"]  # values beside the dots
    assert one.data[0].cliponaxis is False  # labels are never cut at the plot's edge
    assert one.layout.yaxis.type != "log" and one.layout.showlegend is False
    assert [s.y0 for s in one.layout.shapes] == [12.0]
    many = figures.perplexity_figure({"a": {"uniform": 650.0}, "b": {"uniform": 8260.0}})
    assert [t.name for t in many.data] == ["a", "b"] and many.layout.yaxis.type == "log"
    assert many.layout.scattermode == "group" and many.layout.showlegend is True
    # Whole-number ticks on the log axis, not Plotly's "2 3 4 … 8" for 2000–8000.
    assert list(many.layout.yaxis.tickvals) == [500, 1000, 2000, 5000, 10000]
    assert list(many.layout.yaxis.ticktext) == ["500", "1,000", "2,000", "5,000", "10,000"]


def test_sweep_figure_sorts_points_by_sparsity():
    fig = figures.sweep_figure({"owl": [(0.7, 90.0), (0.3, 15.0), (0.5, 30.0)]})
    assert list(fig.data[0].x) == [0.3, 0.5, 0.7] and list(fig.data[0].y) == [15.0, 30.0, 90.0]
    assert fig.layout.yaxis.type == "log"


def test_search_figure_curves_and_candidates():
    gens = [{"generation": 0, "best": 50.0, "mean": 80.0}, {"generation": 1, "best": 40.0, "mean": 60.0}]
    fig = figures.search_figure({"s": gens}, candidates=[(0, 50.0), (0, 110.0), (1, 40.0)])
    assert [t.name for t in fig.data] == ["candidates", "best", "population mean"]
    assert list(fig.data[1].y) == [50.0, 40.0] and list(fig.data[2].y) == [80.0, 60.0]
    two = figures.search_figure({"a": gens, "b": gens})
    assert [t.name for t in two.data] == ["a: best", "a: population mean", "b: best", "b: population mean"]


def test_search_figure_colours_candidates_by_stage_and_marks_the_allocation_phase():
    gens = [{"generation": 0, "best": 5.0, "mean": 6.0}, {"generation": 2, "best": 4.0, "mean": 4.5}]
    points = [(0, 9.0, 0), (0, 5.0, 1), (1, 8.0, 0), (2, 4.0, 1)]
    fig = figures.search_figure({"s": gens}, points, stages=["stage 1: 64 tokens", "stage 2: 128 tokens"],
                                allocation_from=2, fitness="kl")
    assert [t.name for t in fig.data] == ["stage 1: 64 tokens", "stage 2: 128 tokens", "best", "population mean"]
    assert list(fig.data[0].x) == [0, 1] and list(fig.data[1].y) == [5.0, 4.0]
    assert fig.data[0].marker.color != fig.data[1].marker.color
    (line,) = fig.layout.shapes
    assert line.x0 == line.x1 == 1.5 and "allocation phase" in fig.layout.annotations[0].text
    assert fig.layout.yaxis.title.text == "fitness (KL)"
    one_stage = figures.search_figure({"s": gens}, [(0, 9.0, 0)], stages=["stage 1: 64 tokens"])
    assert [t.name for t in one_stage.data][0] == "candidates" and not one_stage.layout.shapes
    assert one_stage.layout.yaxis.title.text == "fitness (proxy perplexity)"


def test_refinement_figure_shows_both_allocations_and_the_moves():
    fig = figures.refinement_figure([0.5, 0.6, 0.7], [0.55, 0.6, 0.65], target=0.6)
    assert [t.name for t in fig.data] == ["refined allocation", "start allocation", "moved (refined − start)"]
    assert list(fig.data[0].x) == [0, 1, 2] and list(fig.data[0].y) == [0.55, 0.6, 0.65]
    assert fig.layout.yaxis.title.text == "sparsity" and fig.layout.yaxis2.title.text == "moved"
    assert [round(v, 6) for v in fig.data[2].y] == [0.05, 0.0, -0.05] and fig.data[2].type == "bar"
    assert fig.data[2].marker.color[0] != fig.data[2].marker.color[2]  # pruned more and less differ
    assert fig.data[2].yaxis == "y2" and fig.layout.xaxis2.title.text == "block"
    assert tuple(fig.layout.xaxis2.range) == (-0.5, 2.5)  # whole blocks, no padding
    assert "each block" in fig.layout.title.text
    layers = figures.refinement_figure([0.5, 0.5], [0.4, 0.6], labels=["0.q", "0.k"])
    assert list(layers.data[2].x) == ["0.q", "0.k"] and "each linear layer" in layers.layout.title.text


def test_empty_figure_says_why():
    fig = figures.empty_figure("Load a model first.")
    assert fig.layout.annotations[0].text == "Load a model first." and not fig.data


def test_each_allocation_has_one_colour_on_every_chart():
    from ui.zeroshot_figures import zeroshot_bars

    labels = ["this function", "uniform", "owl", "dsa preset"]
    profile = figures.profile_figure({k: [0.5, 0.5] for k in labels})
    dots = figures.perplexity_figure({"run": {k: 20.0 + i for i, k in enumerate(labels)}})
    sweep = figures.sweep_figure({k: [(0.5, 20.0)] for k in labels})
    task = {"tasks": {"piqa": {"acc": 0.6, "acc_norm": 0.6, "n": 10, "acc_stderr": 0.01}}, "mean_acc": 0.6}
    bars = zeroshot_bars({k: task for k in ["dense", *labels]})
    seen = {
        "profile": [t.line.color for t in profile.data], "dots": list(dots.data[0].marker.color),
        "sweep": [t.line.color for t in sweep.data], "bars": [t.marker.color for t in bars.data if t.type == "bar"][1:],
    }
    expected = [figures.ALLOCATION_COLOURS[k] for k in labels]
    assert all(c == expected for c in seen.values()), seen
    assert len(set(expected)) == 4 and bars.data[0].marker.color == figures.ALLOCATION_COLOURS["dense"]
    # Labels that name no allocation (experiments compared) never take an allocation's colour.
    others = figures.colours([f"experiment {i}" for i in range(12)])
    assert not set(others) & set(figures.ALLOCATION_COLOURS.values())
    best = figures.profile_figure({"best function": [0.5], "uniform": [0.5]})
    progress = figures.search_figure({"s": [{"generation": 0, "best": 5.0, "mean": 6.0}]})
    assert best.data[0].line.color == progress.data[0].line.color == figures.BEST


def test_legends_hang_from_the_bottom_of_the_figure_not_the_plot():
    """A legend placed in plot units climbs over the x axis's title when it wraps on a narrow screen."""
    from ui import structural_figures
    from ui.zeroshot_figures import zeroshot_bars

    task = {"tasks": {"piqa": {"acc": 0.6, "acc_norm": 0.6, "n": 10, "acc_stderr": 0.01}}, "mean_acc": 0.6}
    built = [figures.profile_figure({"a": [0.5]}), figures.sweep_figure({"a": [(0.5, 2.0)]}),
             figures.perplexity_figure({"a": {"b": 2.0}}), figures.refinement_figure([0.5], [0.4]),
             structural_figures.loss_curve([{"step": 1, "loss": 1.0, "ce": 1.0, "ratio": 0.9}]),
             zeroshot_bars({"uniform": task})]
    for fig in built:
        assert (fig.layout.legend.yref, fig.layout.legend.y, fig.layout.legend.yanchor) == ("container", 0, "bottom")
