"""Saved experiments as the app shows them: search results from live events, charts of one or several records,
list rows and summaries."""

from dsa_core.search import FAILED_FITNESS, Candidate, SearchEvent, SearchResult
from storage import new_record
from ui import experiments

ROWS = [{"label": "this function", "allocation": "W:(NO_OP)-(VAR)-(NO_OP)", "ppl": 20.0, "ratios": [0.4, 0.6],
         "achieved_sparsity": 0.5, "warnings": []},
        {"label": "uniform", "allocation": "uniform", "ppl": 25.0, "ratios": [0.5, 0.5], "achieved_sparsity": 0.5,
         "warnings": []}]


def event(n: int, fitness: float, best: float) -> SearchEvent:
    return SearchEvent(candidate=n, generation=n // 2, text=f"W:(NO_OP)-(VAR)-(NO_OP)-(BAND={n / 100})",
                       fitness=fitness, best_text="W:(NO_OP)-(STD)-(NO_OP)", best_fitness=best,
                       best_ratios=[0.45, 0.55], elapsed=0.1 * n, cached=False)


def evaluation(name="eval"):
    return new_record("evaluation", {"model": "random:tiny", "sparsity": 0.5, "metric": "wanda",
                                     "allocation": ROWS[0]["allocation"]}, name=name, status="done",
                      results={"target": 0.5, "rows": ROWS, "dense_ppl": 10.0},
                      environment={"python": "3.11", "device": "cpu"}, tags=["a"])


def test_generations_skip_failed_candidates():
    events = [event(0, 50.0, 50.0), event(1, FAILED_FITNESS, 50.0), event(2, 40.0, 40.0), event(3, 60.0, 40.0),
              event(4, FAILED_FITNESS, 40.0)]  # generations 0, 0, 1, 1, 2
    assert experiments.generations(events) == [{"generation": 0, "best": 50.0, "mean": 50.0},
                                               {"generation": 1, "best": 40.0, "mean": 50.0}]


def test_search_results_store_failures_as_none_and_the_final_best():
    events = [event(0, 50.0, 50.0), event(1, FAILED_FITNESS, 50.0)]
    live = experiments.search_results(events)
    assert [c["fitness"] for c in live["candidates"]] == [50.0, None]
    assert live["best_fitness"] == 50.0 and live["best_ratios"] == [0.45, 0.55]
    result = SearchResult(study="s", best=Candidate("W:(NO_OP)-(STD)-(NO_OP)", 50.0, [], []), evaluated=2,
                          trials=2, elapsed=1.5, stopped=True, top=[Candidate("W:(NO_OP)-(STD)-(NO_OP)", 50.0, [], [])])
    final = experiments.search_results(events, result)
    assert final["stopped"] is True and final["evaluated"] == 2 and final["top"][0]["fitness"] == 50.0


def test_charts_of_one_evaluation():
    charts = experiments.charts(evaluation())
    assert set(charts) == {"profiles", "perplexity"}
    assert [t.name for t in charts["profiles"].data] == ["this function", "uniform"]
    assert list(charts["perplexity"].data[0].y) == [20.0, 25.0]
    assert [s.y0 for s in charts["perplexity"].layout.shapes] == [10.0]  # the dense line


def test_compare_puts_runs_on_one_chart():
    sweep = new_record("sweep", {"sparsity": 0.5}, name="sw", status="done", results={"targets": [0.3, 0.5], "series": [
        {"label": "uniform", "allocation": "uniform", "points": [{"sparsity": 0.3, "ppl": 12.0},
                                                                  {"sparsity": 0.5, "ppl": 30.0}]}]})
    search = new_record("search", {"sparsity": 0.5}, name="se", status="done", results=experiments.search_results(
        [event(0, 50.0, 50.0), event(1, 45.0, 45.0)]))
    charts = experiments.compare([evaluation("one"), evaluation("two"), sweep, search])
    assert set(charts) == set(experiments.CHARTS) - {"widths", "training"}  # those are single structural runs
    assert [t.name for t in charts["profiles"].data] == ["one", "two", "best of se"]
    assert [t.name for t in charts["perplexity"].data] == ["one", "two"]
    assert [t.name for t in charts["sweep"].data] == ["sw: uniform"]
    assert [t.name for t in charts["search"].data] == ["se: best", "se: population mean"]


def test_rows_choices_and_summary():
    rec = evaluation()
    (row,) = experiments.table_rows([rec])
    assert row[0] == rec.id and row[2:6] == ["evaluation", "eval", "done", "random:tiny"] and row[6] == "ppl 20 at 50%"
    assert experiments.choice(rec)[1] == rec.id
    md = experiments.summary_markdown(rec, f"http://host/?experiment={rec.id}")
    assert rec.id in md and f"(http://host/?experiment={rec.id})" in md and "`a`" in md and "device cpu" in md
    failed = new_record("evaluation", {}, status="failed", results={"error": "The GPU ran out of memory."})
    assert experiments.headline(failed) == "The GPU ran out of memory."
    assert experiments.label(failed) == f"evaluation {failed.id[:8]}"
