"""Figure builders: plain data in, a Plotly figure out, with the data where the browser will read it."""

import math

from ui import figures


def test_profile_figure_draws_each_allocation_and_the_target():
    fig = figures.profile_figure({"this function": [0.4, 0.6, 0.5], "uniform": [0.5, 0.5, 0.5]}, target=0.5)
    assert [t.name for t in fig.data] == ["this function", "uniform"]
    assert list(fig.data[0].y) == [0.4, 0.6, 0.5] and list(fig.data[0].x) == [0, 1, 2]
    assert fig.data[0].line.width > fig.data[1].line.width  # the function being built stands out
    assert fig.data[1].line.color == figures.REFERENCE_COLOURS["uniform"]
    assert [s.y0 for s in fig.layout.shapes] == [0.5]
    assert fig.layout.xaxis.dtick == 1


def test_non_finite_values_become_gaps():
    fig = figures.profile_figure({"f": [0.1, math.nan, math.inf]})
    assert list(fig.data[0].y) == [0.1, None, None]
    assert not fig.layout.shapes


def test_perplexity_bars_single_and_grouped():
    one = figures.perplexity_bars({"run": {"this function": 20.0, "uniform": 22.0}}, dense=12.0)
    assert len(one.data) == 1 and list(one.data[0].x) == ["this function", "uniform"]
    assert one.layout.yaxis.type != "log" and one.layout.showlegend is False
    assert [s.y0 for s in one.layout.shapes] == [12.0]
    many = figures.perplexity_bars({"a": {"uniform": 20.0}, "b": {"uniform": 400.0}})
    assert [t.name for t in many.data] == ["a", "b"] and many.layout.yaxis.type == "log"
    assert many.layout.barmode == "group" and many.layout.showlegend is True


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


def test_empty_figure_says_why():
    fig = figures.empty_figure("Load a model first.")
    assert fig.layout.annotations[0].text == "Load a model first." and not fig.data
