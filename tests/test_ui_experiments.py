"""Saved experiments as the app shows them: search results from live events, charts of one or several records,
list rows and summaries; records the app cannot read, and markup in stored strings."""

import html
import json
import math
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from markdown_it import MarkdownIt

from dsa_core import search_record
from dsa_core.fitness import FAILED_FITNESS
from dsa_core.search_config import SearchConfig
from dsa_core.search_result import Candidate, SearchEvent, SearchResult
from storage import (
    FORMAT,
    KINDS,
    SCHEMA,
    SHAPES,
    STATUSES,
    VERSION,
    History,
    ImportRefused,
    import_experiment,
    new_record,
    open_database,
)
from storage.records import ID_PATTERN
from tests.strategies import TEXT, json_values, matching
from ui import experiments

ROWS = [{"label": "this function", "allocation": "W:(NO_OP)-(VAR)-(NO_OP)", "ppl": 20.0, "ratios": [0.4, 0.6],
         "achieved_sparsity": 0.5, "warnings": []},
        {"label": "uniform", "allocation": "uniform", "ppl": 25.0, "ratios": [0.5, 0.5], "achieved_sparsity": 0.5,
         "warnings": []}]


def event(n: int, fitness: float, best: float, **kw) -> SearchEvent:
    return SearchEvent(**{"candidate": n, "generation": n // 2, "text": f"W:(NO_OP)-(VAR)-(NO_OP)-(BAND={n / 100})",
                          "fitness": fitness, "best_text": "W:(NO_OP)-(STD)-(NO_OP)", "best_fitness": best,
                          "best_ratios": [0.45, 0.55], "elapsed": 0.1 * n, "cached": False, **kw})


FUNCTION = "W:(NO_OP)-(STD)-(NO_OP)"
MODEL = {"blocks": [{"index": b, "layers": {"self_attn.q_proj": [4, 4], "mlp.down_proj": [4, 12]}}
                    for b in range(2)]}  # two blocks of two linear layers (16 and 48 weights)


def hybrid_events() -> list[SearchEvent]:
    """A hybrid search with two fidelity stages: functions (generations 0-1), then allocations (0 again)."""
    staged = {"stages": 2}
    return [
        event(0, 9.0, math.inf, stage=0, best_text="", best_ratios=[], **staged),  # stopped at the first stage
        event(1, 5.0, 5.0, stage=1, **staged),
        event(2, 6.0, 5.0, stage=1, **staged),
        event(3, FAILED_FITNESS, 5.0, stage=1, **staged),
        event(0, 4.0, 4.0, stage=1, phase="allocation", text="levels:1,2", best_text="levels:1,2",
              best_ratios=[0.5, 0.7], **staged),
        event(2, 4.5, 4.0, stage=0, phase="allocation", text="levels:2,1", best_text="levels:1,2",
              best_ratios=[0.5, 0.7], **staged),
    ]


def evaluation(name="eval"):
    return new_record("evaluation", {"model": "random:tiny", "sparsity": 0.5, "metric": "wanda",
                                     "allocation": ROWS[0]["allocation"]}, name=name, status="done",
                      results={"target": 0.5, "rows": ROWS, "dense_ppl": 10.0},
                      environment={"python": "3.11", "device": "cpu"}, tags=["a"])


def test_generations_skip_failed_candidates():
    events = [event(0, 50.0, 50.0), event(1, FAILED_FITNESS, 50.0), event(2, 40.0, 40.0), event(3, 60.0, 40.0),
              event(4, FAILED_FITNESS, 40.0)]  # generations 0, 0, 1, 1, 2
    assert search_record.generations(events) == [{"generation": 0, "best": 50.0, "mean": 50.0, "phase": "function"},
                                               {"generation": 1, "best": 40.0, "mean": 50.0, "phase": "function"}]


def test_generations_count_fully_measured_candidates_on_one_axis_across_phases():
    gens = search_record.generations(hybrid_events())
    assert gens == [{"generation": 0, "best": 5.0, "mean": 5.0, "phase": "function"},
                    {"generation": 1, "best": 5.0, "mean": 6.0, "phase": "function"},
                    {"generation": 2, "best": 4.0, "mean": 4.0, "phase": "allocation"}]  # allocation gen 0 follows


def test_search_results_of_a_hybrid_keep_stages_phases_and_the_refinement():
    events = hybrid_events()
    live = search_record.search_results(events)
    assert [(c["generation"], c["stage"], c["phase"]) for c in live["candidates"]] == [
        (0, 0, "function"), (0, 1, "function"), (1, 1, "function"), (1, 1, "function"), (2, 1, "allocation"),
        (3, 0, "allocation")]
    assert live["candidates"][3]["fitness"] is None and live["best"] == "levels:1,2"
    result = SearchResult(study="s", best=Candidate("levels:1,2", 4.0, [0.5, 0.7, 0.6, 0.6], []), evaluated=6,
                          trials=6, elapsed=2.0, stopped=False, space="hybrid",
                          throughput=[{"tokens": 64, "evaluated": 6, "seconds": 1.0, "per_second": 6.0}],
                          phases=[{"space": "function", "evaluated": 4, "seconds": 1.0, "best": FUNCTION,
                                   "best_fitness": 5.0},
                                  {"space": "allocation", "evaluated": 2, "seconds": 1.0, "best": "levels:1,2",
                                   "best_fitness": FAILED_FITNESS}],
                          start_ratios=[0.6, 0.6, 0.6, 0.6])
    final = search_record.search_results(events, result, MODEL)  # per layer: 4 units in 2 blocks
    assert final["space"] == "hybrid" and final["start_ratios"] == [0.6, 0.6, 0.6, 0.6]
    assert final["phases"][0]["best"] == FUNCTION and final["phases"][1]["best_fitness"] is None
    assert final["throughput"][0]["per_second"] == 6.0 and final["best_ratios"] == [0.5, 0.7, 0.6, 0.6]
    assert final["unit_labels"] == ["0.q", "0.down", "1.q", "1.down"]
    assert [round(r, 6) for r in final["best_block_ratios"]] == [0.65, 0.6]  # weighted by the layers' sizes

    cfg = SearchConfig(space="hybrid", granularity="projection", fitness="kl", fidelity="64,128", seqlen=64,
                       sparsity=0.6)
    rec = new_record("search", cfg.to_dict(), name="hy", status="done", results=final,
                     protocol=search_record.search_protocol(cfg))
    assert rec.protocol["stages"] == [{"tokens": 64, "windows": 1}, {"tokens": 128, "windows": 2}]
    assert rec.protocol["fitness"] == "kl" and rec.protocol["split"].startswith("train")
    charts = experiments.charts(rec)
    assert set(charts) == {"profiles", "search", "refinement"}
    assert [t.name for t in charts["profiles"].data] == ["best allocation"]
    assert list(charts["profiles"].data[0].y) == final["best_block_ratios"]
    assert [t.name for t in charts["search"].data][:2] == ["stage 1: 64 tokens", "stage 2: 128 tokens"]
    assert charts["search"].layout.shapes[0].x0 == 1.5  # the allocation phase begins at generation 2
    assert list(charts["refinement"].data[2].x) == final["unit_labels"]
    assert experiments.headline(rec) == "best KL 4"
    summary = experiments.summary_markdown(rec, "?experiment=x")
    assert "search: hybrid per linear layer · fitness KL · stages of 64, 128 tokens" in summary


def test_an_old_search_record_without_stages_or_phases_still_charts():
    old = new_record("search", {"sparsity": 0.5}, status="done", results={
        "candidates": [{"n": 0, "generation": 0, "text": FUNCTION, "fitness": 50.0}],
        "generations": [{"generation": 0, "best": 50.0, "mean": 50.0}], "best": FUNCTION, "best_fitness": 50.0,
        "best_ratios": [0.45, 0.55]}, protocol={"fitness": "proxy perplexity", "windows": 2})
    charts = experiments.charts(old)
    assert set(charts) == {"profiles", "search"}
    assert [t.name for t in charts["search"].data] == ["candidates", "best", "population mean"]
    assert [t.name for t in charts["profiles"].data] == ["best function"] and not charts["search"].layout.shapes
    assert experiments.headline(old) == "best proxy perplexity 50"


def test_candidate_summary_reads_a_direct_allocation():
    assert experiments.candidate_summary(FUNCTION, [0.4, 0.6]) == FUNCTION
    assert experiments.candidate_summary("levels:1,2", [0.617, 0.7]) == "direct allocation, 2 blocks: 0.62 0.70"
    shapes = [[(4, 4), (4, 12)], [(4, 4), (4, 12)]]
    text = experiments.candidate_summary("levels:1,2,3,4", [0.5, 0.7, 0.6, 0.6], shapes, FUNCTION)
    assert text == (f"direct allocation, 4 linear layers (2 per block); block means (refined from the function "
                    f"{FUNCTION}): 0.65 0.60")


def test_search_results_store_failures_as_none_and_the_final_best():
    events = [event(0, 50.0, 50.0), event(1, FAILED_FITNESS, 50.0)]
    live = search_record.search_results(events)
    assert [c["fitness"] for c in live["candidates"]] == [50.0, None]
    assert live["best_fitness"] == 50.0 and live["best_ratios"] == [0.45, 0.55]
    result = SearchResult(study="s", best=Candidate("W:(NO_OP)-(STD)-(NO_OP)", 50.0, [], []), evaluated=2,
                          trials=2, elapsed=1.5, stopped=True, top=[Candidate("W:(NO_OP)-(STD)-(NO_OP)", 50.0, [], [])])
    final = search_record.search_results(events, result)
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
    search = new_record("search", {"sparsity": 0.5}, name="se", status="done", results=search_record.search_results(
        [event(0, 50.0, 50.0), event(1, 45.0, 45.0)]))
    charts = experiments.compare([evaluation("one"), evaluation("two"), sweep, search])
    # single runs' charts, and no zero-shot tasks were scored in these
    assert set(charts) == set(experiments.CHARTS) - {"refinement", "widths", "training", "zero-shot"}
    assert [t.name for t in charts["profiles"].data] == ["one", "two", "best of se"]
    assert [t.name for t in charts["perplexity"].data] == ["one", "two"]
    assert [t.name for t in charts["sweep"].data] == ["sw: uniform"]
    assert [t.name for t in charts["search"].data] == ["se: best", "se: population mean"]


def zeroshot_section(acc: float, missing: bool = True) -> dict:
    tasks = {"boolq": {"acc": acc, "acc_norm": None, "acc_stderr": 0.01, "acc_norm_stderr": None, "n": 20},
             "arc_easy": {"acc": acc / 2, "acc_norm": acc / 2, "acc_stderr": 0.02, "acc_norm_stderr": 0.02, "n": 20}}
    return {"tasks": tasks, "mean_acc": acc * 0.75, "missing": {"hellaswag": "no local copy"} if missing else {}}


def test_zero_shot_bars_open_and_compare_across_experiments():
    def with_tasks(name: str, acc: float):
        rows = [dict(r, zeroshot=zeroshot_section(acc + i / 10)) for i, r in enumerate(ROWS)]
        return new_record("evaluation", {"sparsity": 0.5}, name=name, status="done", results={
            "target": 0.5, "rows": rows, "dense_ppl": 10.0, "dense_zeroshot": zeroshot_section(0.8)})

    one, two = with_tasks("one", 0.6), with_tasks("two", 0.4)
    single = experiments.charts(one)["zero-shot"]
    bars = [t for t in single.data if t.type == "bar"]
    assert [b.name for b in bars] == ["dense"] + [r["label"] for r in ROWS]
    assert list(bars[1].x) == ["BoolQ", "ARC-e", "HellaSwag", "mean of 2 (HellaSwag missing)"]
    assert bars[1].y[2] is None and [a.text for a in single.layout.annotations] == ["missing"]
    compared = experiments.compare([one, two, evaluation("three")])["zero-shot"]  # "three" scored no tasks
    assert [t.name for t in compared.data if t.type == "bar"] == ["one", "two"]
    assert [t for t in compared.data if t.type == "bar"][1].y[0] == 0.4  # two's own function, not its dense model


def test_rows_choices_and_summary():
    rec = evaluation()
    (row,) = experiments.table_rows([rec])
    assert row[-1] == rec.id and row[:5] == ["eval", "evaluation", "done", "ppl 20 at 50%", "random:tiny"]
    assert experiments.choice(rec)[1] == rec.id
    md = experiments.summary_markdown(rec, f"http://host/?experiment={rec.id}")
    assert rec.id in md and f"(http://host/?experiment={rec.id})" in md and "device cpu" in md
    assert "tags: <code>a</code>" in md
    failed = new_record("evaluation", {}, status="failed", results={"error": "The GPU ran out of memory."})
    assert experiments.headline(failed) == "The GPU ran out of memory."
    assert experiments.label(failed) == f"evaluation {failed.id[:8]}"


# ---- records the app cannot read, and markup in stored strings --------------------------------------------------

def test_a_record_stored_before_imports_were_checked_is_shown_as_unreadable():
    rows_without_labels = new_record("evaluation", {}, name="no labels", status="done",
                                     results={"rows": [{}], "target": 0.5})
    text_fitness = new_record("search", {}, name="text fitness", status="done", results={"best_fitness": "abc"})
    records = [rows_without_labels, text_fitness, evaluation("fine")]
    assert [row[3] for row in experiments.table_rows(records)] == [experiments.UNREADABLE] * 2 + ["ppl 20 at 50%"]
    charts = experiments.compare(records)
    assert [t.name for t in charts["perplexity"].data] == ["fine"] and "search" not in charts
    assert experiments.charts(text_fitness) == {}
    md = experiments.summary_markdown(rows_without_labels, "?experiment=x")
    assert "result: ⚠ unreadable results" in md and "results/rows/0: 'label' is a required property" in md


def names(schema: dict) -> set[str]:
    """Every property name a schema mentions, at any depth."""
    subs = [*schema.get("properties", {}).values(), *([schema["items"]] if "items" in schema else [])]
    return set(schema.get("properties", {})).union(*map(names, subs))


READ = sorted(set().union(*(names(part) for shape in SHAPES.values() for part in shape.values())))


@settings(max_examples=150, deadline=None)
@given(kind=st.sampled_from(KINDS), parts=st.lists(st.dictionaries(st.sampled_from(READ), json_values, max_size=4),
                                                   min_size=3, max_size=3))
def test_any_stored_record_lists_opens_and_compares(kind, parts):
    """Whatever a record holds where the app reads (one saved before imports were checked), it lists, opens and
    compares: as unreadable, at worst."""
    config, protocol, results = parts
    record = new_record(kind, config, protocol=protocol, results=results)
    experiments.table_rows([record])
    experiments.compare([record, evaluation()])
    assert record.id in experiments.summary_markdown(record, "?experiment=x")


HOSTILE = '<img src="http://beacon.invalid/x.png"> [link](http://beacon.invalid/) `'


def test_stored_strings_are_escaped_in_summaries_and_charts():
    rec = new_record("evaluation", {"model": HOSTILE, "allocation": HOSTILE, "metric": HOSTILE}, name=HOSTILE,
                     status="failed", tags=["<b>tag</b>"], environment={"device": HOSTILE},
                     results={"target": 0.5, "rows": [{**ROWS[0], "label": HOSTILE}], "error": HOSTILE},
                     source={"origin": HOSTILE, "original_id": "0" * 32})
    rendered = MarkdownIt("commonmark").render(experiments.summary_markdown(rec, "?experiment=x"))
    assert set(re.findall(r"<(\w+)", rendered)) == {"h3", "p", "strong", "code", "a"}
    assert re.findall(r"<a [^>]*>", rendered) == ['<a href="?experiment=x">']
    assert rendered.count(html.escape(HOSTILE)) == 7  # name, model, metric, allocation, device, origin, error
    for figure in experiments.charts(rec).values():
        labels = [figure.data[0].name, *(x for x in figure.data[0].x if isinstance(x, str))]
        assert any(label.startswith("&lt;img src=") for label in labels)
        assert not any("<img" in label for label in labels)


def shared(kind: str) -> st.SearchStrategy:
    """Any shared document of this kind that the import schema accepts, its config, protocol and results drawn
    from the shapes the app reads."""
    shape = SHAPES[kind]
    anything = {"type": "object"}
    time = st.just("2025-05-01T10:00:00+00:00")
    tag = st.text(st.characters(categories=("L", "N", "P", "S", "Zs"), exclude_characters='"\\'), min_size=1,
                  max_size=20)
    experiment = st.fixed_dictionaries(
        {"id": st.from_regex(ID_PATTERN, fullmatch=True), "kind": st.just(kind), "name": st.text(TEXT, max_size=40),
         "status": st.sampled_from(STATUSES), "created_at": time, "updated_at": time,
         **{part: matching(shape.get(part, anything)) for part in ("config", "protocol", "results")}},
        optional={"environment": st.dictionaries(st.text(TEXT, max_size=12), json_values, max_size=3),
                  "tags": st.lists(tag, max_size=3, unique=True), "notes": st.text(TEXT, max_size=40)})
    return st.fixed_dictionaries({"format": st.just(FORMAT), "version": st.just(VERSION), "experiment": experiment})


@pytest.fixture(scope="module")
def history():
    db = open_database("sqlite://")
    yield History(db)
    db.close()


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=st.sampled_from(KINDS).flatmap(shared))
def test_any_importable_document_lists_opens_and_compares(history, doc):
    assert Draft202012Validator(SCHEMA).is_valid(doc)  # the strategy writes only what the schema accepts
    before = history.count()
    try:
        record = import_experiment(history, json.dumps(doc))
    except ImportRefused:  # what the schema lets through but a database cannot store (a NUL, a blank tag...)
        assert history.count() == before
        return
    records = history.find(limit=None)  # every document imported so far, in one list
    assert [row[-1] for row in experiments.table_rows(records)] == [r.id for r in records]
    assert experiments.headline(record) != experiments.UNREADABLE
    for figure in [*experiments.charts(record).values(), *experiments.compare([record, *records[:2]]).values()]:
        figure.to_json()
    assert record.id in experiments.summary_markdown(record, "?experiment=x")


def test_a_structural_run_is_summarised_with_its_result_and_its_warnings():
    config = {"model": "random:tiny", "target_ratio": 0.7, "steps": 100, "batch_size": 1, "seqlen": 256}
    results = {"ppl": {"dense": 1671.0, "compressed": 2.0e7, "baseline": 1671.0}, "params": {"ratio": 1.0},
               "warnings": ["The kept ratio never left 100%: the hypernetwork did not learn widths."]}
    rec = new_record("structural", config, name="flat", status="done", results=results)
    assert experiments.headline(rec) == "ppl 2e+07 (uniform 1671), 100% kept ⚠ did not converge"
    summary = experiments.summary_markdown(rec, "?experiment=x")
    assert "metric ?" not in summary and "target ?" not in summary
    assert "structural pruning · keep 70% of the block parameters · 100 steps of 1 × 256 tokens" in summary
    assert "⚠ The kept ratio never left 100%" in summary and "result: ppl 2e+07" in summary
    assert experiments.table_rows([rec])[0][3].startswith("ppl 2e+07")
    fine = new_record("structural", config, results={"ppl": {"dense": 10.0, "compressed": 12.5}})
    assert experiments.headline(fine) == "ppl 12.5" and "⚠" not in experiments.summary_markdown(fine, "x")


def test_a_structural_run_whose_numbers_are_not_numbers_is_unreadable_not_an_error():
    rec = new_record("structural", {"target_ratio": "most"}, results={"ppl": {"compressed": "abc"}})
    assert experiments.headline(rec) == experiments.UNREADABLE
    assert "cannot read" in experiments.summary_markdown(rec, "x")
