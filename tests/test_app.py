"""The web app's API through gradio_client, against an app launched on the tiny random model: loading, profiles,
evaluation, search (resumed after a restart), and the history's list, open, compare, export, import and delete. Also
app.py's options."""

import json
import tempfile
from pathlib import Path

import pytest
from gradio_client import Client, handle_file

import app
from storage import History, open_database
from tests.net import free_port
from ui import tab_search

CONTROLS = ("no_op", "no_op", "kurtosis", "no_op", "no_op", "band", 0.1)  # W:(NO_OP)-(KURTOSIS)-(NO_OP)-(BAND=0.1)
TINY = ("random:tiny", "wanda", "unstructured", 0.5, "wikitext2", 4, 64, 0, "local")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    db = tmp_path_factory.mktemp("app") / "history.db"
    demo = app.create_app(f"sqlite:///{db}", "cpu")
    _, url, _ = demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True,
                            max_file_size=app.MAX_UPLOAD)
    yield url
    demo.close()


@pytest.fixture(scope="module")
def client(server):
    client = Client(server, verbose=False)
    status, summary, blocks = client.predict(*TINY, api_name="/load_model")
    assert status.startswith("✓ Ready: random:tiny"), status
    assert "4 blocks" in summary and [row[0] for row in blocks["data"]] == [0, 1, 2, 3]
    return client


def listed(client) -> list[list]:
    return client.predict("all", "", "", [], 1, api_name="/list_experiments")[0]["data"]


def test_the_api_names_every_action(client):
    names = set(client.view_api(print_info=False, return_format="dict")["named_endpoints"])
    assert {"/load_model", "/cancel", "/profile", "/describe", "/load_text", "/evaluate", "/sweep", "/save_experiment",
            "/search", "/stop", "/load_best", "/list_experiments", "/open_experiment", "/compare_experiments",
            "/rename_experiment", "/delete_experiments", "/export_experiment", "/import_experiment"} <= names


def test_profile_follows_the_controls(client):
    plot, warnings = client.predict(*CONTROLS, 0.6, api_name="/profile")
    traces = json.loads(plot["plot"])["data"]
    assert [t["name"] for t in traces] == ["this function", "uniform", "owl", "dsa preset"]
    other = json.loads(client.predict(*CONTROLS[:2], "mean", *CONTROLS[3:], 0.6, api_name="/profile")[0]["plot"])
    assert other["data"][0]["y"] != traces[0]["y"] and other["data"][1]["y"] == traces[1]["y"]
    plot, warnings = client.predict(*CONTROLS[:-1], 0.8, 0.6, api_name="/profile")  # λ beyond the band's 0.5
    assert warnings.startswith("✗") and "[0.0, 0.5]" in warnings
    assert "No profile" in json.loads(plot["plot"])["layout"]["annotations"][0]["text"]  # not the last valid one


def test_the_formula_text_and_preset_follow_the_controls(client):
    formula, text, preset = client.predict(*CONTROLS, api_name="/describe")
    assert text == "W:(NO_OP)-(KURTOSIS)-(NO_OP)-(BAND=0.1)" and r"\mathrm{kurt}(S_\ell)" in formula
    assert preset is None
    formula, text, _ = client.predict(*CONTROLS[:-2], "multiplicative", 0.8, api_name="/describe")
    assert text.endswith("-(MULT=0.8)") and r"\varepsilon = 0.8" in formula
    formula, text, _ = client.predict(*CONTROLS[:-1], 0.8, api_name="/describe")  # λ beyond the band's 0.5
    assert formula.startswith("✗") and text == ""
    *controls, text, warnings = client.predict("dsa", *CONTROLS, api_name="/load_text")
    assert controls[:5] == ["abslog", "no_op", "var", "atan", "asin"] and warnings == ""
    assert client.predict(*controls, api_name="/describe")[2] == "dsa"
    *_, text, warnings = client.predict("W:(ABSLOG)-(VAR)", *CONTROLS, api_name="/load_text")
    assert warnings.startswith("✗ Cannot read") and "W:(PRE)-(REDUCTION)-(TRANSFORM)" in warnings
    assert text == "W:(NO_OP)-(KURTOSIS)-(NO_OP)-(BAND=0.1)"  # the box shows the function still drawn
    assert "still shows W:(NO_OP)-(KURTOSIS)-(NO_OP)-(BAND=0.1)" in warnings


def test_a_run_clears_what_an_earlier_run_left_as_it_starts(client):
    job = client.submit(*CONTROLS, 0.5, "fast", 1, False, "", "", "", "", 0, api_name="/evaluate")
    status, saved, table, *_ = job.result()
    assert status.startswith("✓ Evaluation done"), status
    id = saved.split("`")[1]
    start = next(o for o in job.outputs() if isinstance(o[1], str) and id in o[1])  # the first to name the run
    assert start[2]["data"] == []  # no rows of an earlier run
    for chart in start[3:6]:
        assert f"{id[:8]} is running" in json.loads(chart["plot"])["layout"]["annotations"][0]["text"]


def test_a_refused_load_keeps_the_loaded_model(client, tmp_path):
    status, *_ = client.predict("random:tiny", "wanda", "unstructured", 0.5, str(tmp_path / "missing.txt"), 4, 64, 0,
                                "local", api_name="/load_model")
    assert status.startswith("✗") and "missing.txt" in status
    assert client.predict(*CONTROLS, 0.5, api_name="/profile")[1].startswith("No warnings")


def test_evaluate_saves_an_experiment_that_opens_exports_and_imports(client, tmp_path, monkeypatch):
    status, saved, table, *_ = client.predict(*CONTROLS, 0.5, "fast", 2, False, "", "api run", "api, tiny", "", 0,
                                              api_name="/evaluate")
    assert status.startswith("✓ Evaluation done"), status
    assert [row[0] for row in table["data"]] == ["this function", "uniform", "owl", "dsa preset"]
    id = saved.split("`")[1]
    row = next(r for r in listed(client) if r[-1] == id)
    assert row[:3] == ["api run", "evaluation", "done"] and row[3].startswith("ppl ")

    message, details, name, tags, record, profiles, perplexity, _, sweep, search, refinement, widths, training = \
        client.predict([id], api_name="/open_experiment")  # _: the zero-shot chart
    assert not widths["visible"] and not training["visible"]
    assert id in details and name == "api run" and tags == "api, tiny" and record["status"] == "done"
    assert record["config"]["allocation"] == "W:(NO_OP)-(KURTOSIS)-(NO_OP)-(BAND=0.1)"
    assert record["protocol"]["windows"] == 2 and record["environment"]["device"]
    assert perplexity["visible"] and not sweep["visible"] and not search["visible"] and not refinement["visible"]
    bars = json.loads(perplexity["value"]["plot"])["data"][0]
    assert bars["name"] == "api run" and bars["x"] == [r[0] for r in table["data"]]

    with monkeypatch.context() as m:
        m.setattr(tempfile, "tempdir", str(tmp_path))  # where the app, in this process, makes its temporary folders
        message, exported = client.predict([id], api_name="/export_experiment")
        refused, nothing = client.predict(["0" * 32], api_name="/export_experiment")
    doc = json.loads(Path(exported).read_text())
    assert doc["experiment"]["id"] == id and message.startswith("✓")
    assert refused.startswith("✗") and nothing is None
    assert not list(tmp_path.glob("sparsity-explorer-export-*"))  # gone once the file is served, or on failure
    copy = tmp_path / "shared.json"
    copy.write_text(json.dumps(doc))
    message, table, _ = client.predict(handle_file(str(copy)), "all", "", "", api_name="/import_experiment")
    assert message.startswith(f"ⓘ Already in the history as `{id}`")  # its own export: not added twice
    doc["experiment"]["id"] = "c" * 32  # as if it came from another history
    copy.write_text(json.dumps(doc))
    message, table, _ = client.predict(handle_file(str(copy)), "all", "", "", api_name="/import_experiment")
    new_id = message.split("`")[1]
    assert message.startswith("✓ Imported") and new_id != id and new_id in {r[-1] for r in table["data"]}

    status, *_ = client.predict([id, new_id], api_name="/compare_experiments")
    assert status == "Comparing 2 experiments."
    assert client.predict([new_id], "copy", "x", api_name="/rename_experiment").startswith("✓")
    assert client.predict([new_id], api_name="/delete_experiments") == "✓ Deleted 1 experiment(s)."
    assert new_id not in {r[-1] for r in listed(client)}


@pytest.mark.parametrize("content,reason", [
    (b'{"format": "sparsity-explorer/experiment", "version": 1, "experiment": {"id"', "truncated"),
    (b'{"format": "something-else", "version": 1, "experiment": {}}', "not a shared"),
    (b"\xff\xfe not utf-8", "not UTF-8"),
    (b'{"format": "sparsity-explorer/experiment", "version": 1, "experiment": {"id": NaN}}', "NaN"),
])
def test_a_bad_file_is_refused_and_changes_nothing(client, tmp_path, content, reason):
    before = listed(client)
    bad = tmp_path / "bad.json"
    bad.write_bytes(content)
    message, *_ = client.predict(handle_file(str(bad)), "all", "", "", api_name="/import_experiment")
    assert message.startswith("✗ Import refused") and reason in message
    assert listed(client) == before


def test_search_streams_to_the_end_and_loads_into_the_builder(client):
    status, saved, progress, profile, best, moved = client.predict("ga", 4, 8, 0, 1, 0, 0.5, "api search", "",
                                                                   api_name="/search")
    assert not moved["visible"]  # a function search refines nothing
    assert status.startswith("✓ Search done: 8 functions evaluated"), status
    assert best.startswith("W:(") and [t["name"] for t in json.loads(profile["plot"])["data"]][0] == "best function"
    id = saved.split("`")[1]
    record = client.predict([id], api_name="/open_experiment")[4]
    assert record["results"]["best"] == best and len(record["results"]["candidates"]) >= 8
    *controls, message = client.predict(best, api_name="/load_best")  # the client leaves out the Tabs output
    assert len(controls) == 7 and message == ""
    text = client.predict(*controls, api_name="/describe")[1]
    assert text == best or text + "-" in best  # the builder keeps no tag


def test_a_hybrid_search_with_staged_kl_fitness_ends_with_the_refinement(client):
    """Functions, then their best allocation refined per linear layer, on the KL fitness measured on 64 tokens and
    the promoted half again on 128 (the app's tests load 64-token windows)."""
    status, saved, progress, profile, best, moved = client.predict(
        "ga", 4, 8, 0, 1, 0, 0.5, "api hybrid", "", "hybrid", "projection", "kl", "64,128", "masked", 2,
        api_name="/search")
    assert status.startswith("✓ Search done: 8 candidates (4 functions, then 4 allocations) evaluated"), status
    assert "per stage, 64 tokens" in status and "128 tokens" in status and "best KL" in status
    assert best.startswith("direct allocation, 28 linear layers (7 per block); block means (refined from "), best
    chart = json.loads(progress["plot"])
    assert [t["name"] for t in chart["data"]][:2] == ["stage 1: 64 tokens", "stage 2: 128 tokens"]
    assert any(s["type"] == "line" for s in chart["layout"]["shapes"])  # where the allocation phase begins
    assert json.loads(profile["plot"])["data"][0]["name"] == "best allocation"
    refinement = json.loads(moved["value"]["plot"])["data"]
    assert moved["visible"] and len(refinement[2]["x"]) == 28 and refinement[2]["x"][:2] == ["0.q", "0.k"]

    id = saved.split("`")[1]
    record = client.predict([id], api_name="/open_experiment")
    results = record[4]["results"]
    assert results["space"] == "hybrid" and [p["space"] for p in results["phases"]] == ["function", "allocation"]
    start = results["phases"][1]["start"]  # the best function, or ATP when it scored better
    assert f"refined from {'the function ' if start.startswith('W:') else ''}{start})" in best
    assert len(results["start_ratios"]) == len(results["best_ratios"]) == 28 and len(results["throughput"]) == 2
    assert record[4]["protocol"]["stages"] == [{"tokens": 64, "windows": 1}, {"tokens": 128, "windows": 2}]
    assert record[-3]["visible"]  # the history's refinement chart

    *controls, message = client.predict(best, api_name="/load_best")  # the first phase's function loads
    assert message.startswith("ⓘ Loaded W:(") and results["phases"][0]["best"] in message
    assert client.predict(*controls, api_name="/describe")[1] in results["phases"][0]["best"]


def test_a_direct_allocation_is_summarised_and_explains_why_it_does_not_load(client):
    status, _, _, profile, best, moved = client.predict("ga", 4, 4, 0, 1, 0, 0.5, "", "", "allocation", "block",
                                                        api_name="/search")
    assert status.startswith("✓ Search done: 4 allocations evaluated"), status
    assert best.startswith("direct allocation, 4 blocks: ") and not moved["visible"]
    assert len(best.split(": ")[1].split()) == 4  # one sparsity per block, two decimals
    *controls, message = client.predict(best, api_name="/load_best")
    assert "not a function" in message and "only functions load into the builder" in message


def test_stop_with_nothing_running_leaves_the_status_alone(client):
    # An update that changes nothing: the summary of the search that ended stays (a notice says nothing runs).
    assert client.predict(api_name="/stop") == {"__type__": "update"}


def test_the_history_pages_through_every_experiment_and_says_how_many(tmp_path):
    from storage import History, open_database
    from ui.tab_history import LIST_LIMIT

    url = f"sqlite:///{tmp_path / 'many.db'}"
    history = History(open_database(url))
    for i in range(LIST_LIMIT + 5):
        history.save("evaluation", {"model": "random:tiny"}, name=f"run {i}")
    demo = app.create_app(url, "cpu")
    _, address, _ = demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True,
                                quiet=True)
    try:
        client = Client(address, verbose=False)
        rows, _, status = client.predict("all", "", "", [], 1, api_name="/list_experiments")
        assert len(rows["data"]) == LIST_LIMIT
        assert status == f"Experiments 1–{LIST_LIMIT} of {LIST_LIMIT + 5} listed (page 1 of 2, newest first)."
        rows, _, status = client.predict("all", "", "", [], 2, api_name="/list_experiments")
        assert len(rows["data"]) == 5 and "page 2 of 2" in status
        assert rows["data"][-1][0] == "run 0"  # newest first: the oldest is the last of the last page
        _, _, status = client.predict("all", "run 1", "", [], 1, api_name="/list_experiments")
        assert status == "111 experiment(s) listed."  # run 1, 10–19 and 100–199: one page
    finally:
        demo.close()


def test_options_and_exposure(monkeypatch):
    assert app.parse_auth("ann:secret") == ("ann", "secret")
    with pytest.raises(Exception, match="user:pass"):
        app.parse_auth("nopassword")
    assert not app.exposed("127.0.0.1", False) and app.exposed("0.0.0.0", False) and app.exposed("localhost", True)
    seen = {}

    class Launched:
        def launch(self, **kwargs):
            seen["launch"] = kwargs

    monkeypatch.setattr(app, "create_app", lambda db, device, limits: seen.update(limits=limits, db=db) or Launched())
    assert app.main(["--host", "0.0.0.0", "--port", "7999", "--auth", "a:b", "--db", "sqlite://"]) == 0
    assert seen["limits"] == app.Limits() and seen["db"] == "sqlite://"
    assert (seen["launch"]["server_name"], seen["launch"]["server_port"]) == ("0.0.0.0", 7999)
    assert seen["launch"]["auth"]("a", "b") and not seen["launch"]["auth"]("a", "c")
    assert app.main(["--share", "--auth", "a:b", "--allow-models", "smollm2, org/model"]) == 0
    assert seen["limits"].models == ("smollm2", "org/model")
    app.main([])
    assert seen["limits"] is None and seen["launch"]["server_name"] == "127.0.0.1"
    assert seen["launch"]["server_port"] == 7860 and seen["launch"]["share"] is False


@pytest.mark.parametrize("argv", [["--share"], ["--host", "0.0.0.0"]])
def test_an_exposed_app_needs_a_login(argv, monkeypatch, capsys):
    monkeypatch.setattr(app, "create_app", lambda *a, **k: pytest.fail("nothing starts without --auth"))
    assert app.main(argv) == 2
    assert "give it a login with --auth" in capsys.readouterr().err


def test_repeated_failed_logins_lock_every_login_for_a_minute():
    now = [0.0]
    guard = app.LoginGuard("ann", "secret", clock=lambda: now[0])
    assert guard("ann", "secret")
    assert not any(guard("ann", f"guess{i}") for i in range(app.MAX_FAILED_LOGINS))
    assert not guard("ann", "secret")  # locked: the right password waits too
    now[0] += app.FAILED_LOGIN_WINDOW_S
    assert guard("ann", "secret")


def test_evaluate_with_zero_shot_tasks_shows_a_table_and_bars(client):
    status, saved, table, *_, zs_table, zs_bars = client.predict(
        *CONTROLS, 0.5, "fast", 1, True, "", "", "", "piqa", 4, api_name="/evaluate")
    assert status.startswith("✓ Evaluation done"), status
    headers, rows = zs_table["value"]["headers"], zs_table["value"]["data"]
    assert headers[:2] == ["task", "n"] and rows[0][:2] == ["PIQA", "4"] and rows[-1][0] == "mean"
    assert all(0 <= v <= 1 for v in rows[0][2:])
    assert any("dense" in h for h in headers) and any("owl" in h for h in headers)
    bars = json.loads(zs_bars["plot"])["data"]
    assert {b["name"] for b in bars} >= {"dense", "uniform", "owl", "dsa preset", "this function"}


def test_a_search_resumes_after_the_app_restarts(tmp_path):
    """The search's study lives in the history's database: a second app over that database (the first one gone)
    takes it up from its experiment id, with a larger budget counted over the whole search, in the same record."""
    db = f"sqlite:///{tmp_path / 'history.db'}"
    declared = [f.default for f in tab_search.DECLARED]

    def search(budget: int, resume: str = "", load: tuple = TINY) -> tuple:
        demo = app.create_app(db, "cpu")
        _, url, _ = demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True)
        try:
            client = Client(url, verbose=False)
            client.predict(*load, api_name="/load_model")
            return client.predict("ga", 4, budget, 0, 1, 0, 0.5, "to resume", "", *declared, resume, api_name="/search")
        finally:
            demo.close()

    status, saved, *_ = search(4)
    assert status.startswith("✓ Search done: 4 functions evaluated"), status
    id = saved.split("`")[1]
    first = History(open_database(db)).get(id)
    status, saved, progress, *_ = search(7, resume=id)
    assert status.startswith("✓ Search done: 3 functions evaluated"), status  # the first four were not measured again
    assert saved.split("`")[1] == id and len(json.loads(progress["plot"])["data"][0]["x"]) >= 1
    record = History(open_database(db)).get(id)
    assert record.status == "done" and record.config["budget_candidates"] == 7
    assert record.results["study"] == first.results["study"] == record.config["study"]
    assert f"workers join it with <code>python -m dsa\\_core worker --study {record.config['study']} " in saved
    texts = [c["text"] for c in record.results["candidates"]]
    assert len(texts) == len(set(texts)) == 7 and texts[:4] == [c["text"] for c in first.results["candidates"]]
    assert search(7, resume="0" * 32)[0].startswith("✗ No experiment with id")
    other = search(9, resume=id, load=(*TINY[:5], 2, *TINY[6:]))[0]  # 2 calibration windows, not 4
    assert other.startswith("✗ Study") and "another configuration" in other and "Load the model" in other
    assert History(open_database(db)).get(id) == record  # refused before the record was touched
