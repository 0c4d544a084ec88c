"""End to end in a real headless Chromium (Debian's, driven by Playwright): load the tiny model, change a dropdown
and see the profile change, evaluate and save, reopen the permalink in a fresh page, run and stop a search, run a
hybrid search to its refinement chart, import a bad file, and import one whose strings carry markup. A failing test
leaves a screenshot in test-artifacts/."""

import json
import re
from contextlib import contextmanager
from pathlib import Path

import pytest

import app
from tests.net import free_port

pytestmark = pytest.mark.e2e
CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
TIMEOUT_MS = 90_000
PROFILE_Y = ("() => { const d = document.querySelector('#profile-plot .js-plotly-plot');"
             " return d && d.data && d.data.length ? JSON.stringify(d.data[0].y) : null; }")


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    demo = app.create_app(f"sqlite:///{tmp_path_factory.mktemp('e2e') / 'history.db'}", "cpu")
    _, url, _ = demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True,
                            max_file_size=app.MAX_UPLOAD)
    yield url
    demo.close()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(f"End-to-end tests need Debian's Chromium at {CHROMIUM}: run `make browser`.")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


def new_page(
    browser, url: str, query: str = "", viewport: tuple[int, int] = (1400, 1000), ready: str = "#model input"
):
    """A page on `url + query`, returned once `ready` is visible (a permalink opens History, hiding #model)."""
    page = browser.new_page(viewport={"width": viewport[0], "height": viewport[1]})
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(url + query)
    page.wait_for_selector(ready)
    return page


@contextmanager
def closed_after(name: str, *pages):
    """Close the pages' contexts after the block; if it fails, first a screenshot of each in test-artifacts/."""
    try:
        yield
    except Exception:
        ARTIFACTS.mkdir(exist_ok=True)
        for i, p in enumerate(pages):
            p.screenshot(path=str(ARTIFACTS / f"{name}-{i}.png"), full_page=True)
        raise
    finally:
        for p in pages:
            p.context.close()


@pytest.fixture
def page(browser, url, request):
    page = new_page(browser, url)
    failed = request.session.testsfailed
    yield page
    if request.session.testsfailed > failed:  # the call phase was reported before this teardown
        ARTIFACTS.mkdir(exist_ok=True)
        for i, p in enumerate(page.context.pages):
            p.screenshot(path=str(ARTIFACTS / f"{request.node.name}-{i}.png"), full_page=True)
    page.context.close()


def wait_text(page, selector: str, pattern: str) -> str:
    """Wait until the element's text matches `pattern` (a regular expression); returns the text."""
    page.wait_for_function("([s, p]) => { const e = document.querySelector(s);"
                           " return e !== null && new RegExp(p).test(e.innerText); }", arg=[selector, pattern])
    return page.locator(selector).inner_text()


def choose(page, elem_id: str, option: str) -> None:
    page.locator(f"#{elem_id} input").click()
    page.get_by_role("option", name=option, exact=True).click()


def fill(page, elem_id: str, value: str) -> None:
    page.locator(f"#{elem_id} input, #{elem_id} textarea").first.fill(value)


def table_rows(page, elem_id: str) -> int:
    """Data rows of a Gradio table (its grid counts the header row too)."""
    return int(page.locator(f"#{elem_id} [role=grid]").get_attribute("aria-rowcount")) - 1


def tab(page, name: str) -> None:
    """Open a tab; on a narrow screen the tabs that do not fit are behind "More tabs"."""
    page.get_by_role("tab").locator("visible=true").first.wait_for()
    shown = page.get_by_role("tab", name=name).locator("visible=true")
    if shown.count():
        shown.first.click()
        return
    page.get_by_role("button", name="More tabs").click()
    page.get_by_role("button", name=name, exact=True).locator("visible=true").last.click()


@pytest.fixture(scope="module")
def loaded(browser, url):
    """The tiny model, loaded through the Model & data tab (the server keeps it for the other pages)."""
    page = new_page(browser, url)
    try:
        model = page.locator("#model input")
        model.click()
        model.fill("random:tiny")
        model.press("Enter")
        fill(page, "nsamples", "4")
        fill(page, "seqlen", "64")
        page.locator("#load").click()
        wait_text(page, "#model-status", "Ready: random:tiny")
        assert "4 blocks" in page.locator("#model-summary").inner_text()
        assert table_rows(page, "blocks") == 4
    except Exception:
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "loading-the-model.png"), full_page=True)
        raise
    finally:
        page.close()
    return url


def test_changing_a_dropdown_redraws_the_profile(loaded, page):
    tab(page, "Formula builder")
    page.wait_for_function(f"() => ({PROFILE_Y})() !== null")
    before = page.evaluate(PROFILE_Y)
    choose(page, "reduction", "kurtosis")
    page.wait_for_function(f"([b]) => {{ const y = ({PROFILE_Y})(); return y !== null && y !== b; }}", arg=[before])
    after, before = json.loads(page.evaluate(PROFILE_Y)), json.loads(before)
    assert len(after) == len(before) == 4 and after != before
    assert page.locator("#function-text input, #function-text textarea").first.input_value() == \
        "W:(NO_OP)-(KURTOSIS)-(NO_OP)"
    assert "kurt" in page.locator("#formula").inner_text()
    assert page.locator("#formula .katex").count() >= 2  # rendered as mathematics


def test_evaluate_save_and_reopen_by_permalink(loaded, page, browser):
    tab(page, "Evaluate")
    fill(page, "eval-windows", "2")
    assert not page.locator("#zs-table").is_visible()  # no zero-shot results yet: no empty table
    page.locator("#evaluate").click()
    wait_text(page, "#eval-status", "Evaluation done")
    assert table_rows(page, "eval-table") == 4
    page.wait_for_selector("#eval-bars .js-plotly-plot")  # charts draw just after the status line
    assert not page.locator("#zs-table").is_visible()  # nor after an evaluation without tasks
    fill(page, "eval-name", "browser run")
    fill(page, "eval-tags", "e2e")
    page.locator("#eval-save").click()
    wait_text(page, "#eval-status", "Saved name and tags")
    link = page.locator("#eval-saved a").first.get_attribute("href")
    id = re.search(r"experiment=([0-9a-f]{32})", link).group(1)

    fresh = browser.new_context().new_page()  # nothing shared with the page that saved it
    fresh.set_default_timeout(TIMEOUT_MS)
    fresh.goto(link)
    details = wait_text(fresh, "#history-details", "browser run")
    assert id in details and "`e2e`" not in details and "e2e" in details
    fresh.wait_for_selector("#history-profiles .js-plotly-plot")
    fresh.wait_for_selector("#history-perplexity .js-plotly-plot")
    assert fresh.get_by_role("tab", name="History & sharing").get_attribute("aria-selected") == "true"
    fresh.context.close()


def test_search_runs_live_and_stop_keeps_the_best(loaded, page):
    tab(page, "Search")
    fill(page, "population", "4")
    fill(page, "budget", "100000")  # only Stop ends it
    fill(page, "fitness-windows", "1")
    page.locator("#search-start").click()
    page.wait_for_function("() => { const d = document.querySelector('#search-progress .js-plotly-plot');"
                           " return d && d.data && d.data.length >= 3 && d.data[1].x.length >= 2; }")
    wait_text(page, "#search-status", "Running")
    page.locator("#search-stop").click()
    status = wait_text(page, "#search-status", "Search stopped")
    assert re.search(r"\d+ functions evaluated", status)
    page.locator("#search-stop").click()  # nothing runs now: the summary stays
    page.wait_for_timeout(1500)
    assert page.locator("#search-status").inner_text() == status
    best = page.locator("#search-best input, #search-best textarea").first.input_value()
    assert best.startswith("W:(")
    page.locator("#search-to-builder").click()
    page.wait_for_function("([b]) => { const e = document.querySelector('#function-text textarea, "
                           "#function-text input'); return e && e.offsetParent !== null && b.startsWith(e.value); }",
                           arg=[best])
    assert page.get_by_role("tab", name="Formula builder").get_attribute("aria-selected") == "true"


def test_a_hybrid_search_runs_to_the_end_and_shows_how_far_it_moved_each_block(loaded, page):
    tab(page, "Search")
    fill(page, "population", "4")
    fill(page, "budget", "8")
    page.locator("#search-space label", has_text="hybrid").click()
    fill(page, "search-fidelity", "64,128")
    assert not page.locator("#search-refinement .js-plotly-plot").is_visible()
    page.locator("#search-start").click()
    status = wait_text(page, "#search-status", "Search done")
    assert "8 candidates (4 functions, then 4 allocations) evaluated" in status and "per stage" in status
    page.wait_for_function("() => { const d = document.querySelector('#search-refinement .js-plotly-plot');"
                           " return d && d.data && d.data.length === 3; }")
    moved = page.evaluate("() => document.querySelector('#search-refinement .js-plotly-plot').data"
                          ".map(t => [t.name, t.y.length])")
    assert moved == [["refined allocation", 4], ["start allocation", 4], ["moved (refined − start)", 4]]
    legend = page.evaluate("() => document.querySelector('#search-progress .js-plotly-plot').data.map(t => t.name)")
    assert legend[:2] == ["stage 1: 64 tokens", "stage 2: 128 tokens"]
    best = page.locator("#search-best input, #search-best textarea").first.input_value()
    assert best.startswith("direct allocation, 4 blocks (refined from ")  # the best function's, or ATP's
    page.locator("#search-to-builder").click()  # the first phase's function loads
    page.wait_for_function("() => { const e = document.querySelector('#function-text textarea, #function-text "
                           "input'); return e && e.offsetParent !== null && e.value.startsWith('W:('); }")
    assert page.get_by_role("tab", name="Formula builder").get_attribute("aria-selected") == "true"


def test_a_bad_import_is_refused_with_a_message(loaded, page, tmp_path):
    tab(page, "History & sharing")
    page.locator("#history-refresh").click()  # the list as it is now, before the import
    wait_text(page, "#history-status", "listed")
    rows = table_rows(page, "history-table")
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "sparsity-explorer/experiment", "version": 1, "experiment": {"id": 1e999}}')
    page.locator("#history-upload input[type=file]").set_input_files(str(bad))
    page.wait_for_selector("#history-upload .file-preview, #history-upload table")
    page.locator("#history-import").click()
    message = wait_text(page, "#history-import-status", "Import refused")
    assert "too large to store" in message
    page.locator("#history-refresh").click()
    wait_text(page, "#history-status", "listed")
    assert table_rows(page, "history-table") == rows


BEACON = "beacon.invalid"
MARKUP = (f'<img src="http://{BEACON}/img.png"><a href="http://{BEACON}/a">a</a> ![m](http://{BEACON}/md.png) '
          f"[l](http://{BEACON}/link) http://{BEACON}/auto")


def test_markup_in_an_imported_experiment_is_shown_as_text(url, browser, tmp_path):
    """Names, tags, model, environment and the results' labels and error of a shared file are shown as text on the
    list, the status line, the summary and the charts: no request goes to a host they name, no link to it is made."""
    experiment = {
        "id": "b" * 32, "kind": "evaluation", "name": MARKUP, "status": "failed",
        "created_at": "2025-05-01T10:00:00+00:00", "updated_at": "2025-05-01T10:00:00+00:00",
        "config": {"model": MARKUP, "metric": MARKUP, "allocation": MARKUP, "sparsity": 0.5},
        "results": {"target": 0.5, "error": MARKUP, "rows": [{"label": MARKUP, "ppl": 20.0, "ratios": [0.4, 0.6]},
                                                             {"label": "uniform", "ppl": 25.0, "ratios": [0.5, 0.5]}]},
        "environment": {"python": MARKUP, "device": MARKUP}, "tags": [f"<img src=http://{BEACON}/tag.png>"],
    }
    shared = tmp_path / "shared.json"
    shared.write_text(json.dumps({"format": "sparsity-explorer/experiment", "version": 1, "experiment": experiment}))
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    requested: list[str] = []
    context.on("request", lambda request: requested.append(request.url))
    try:
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(url)
        tab(page, "History & sharing")
        page.locator("#history-upload input[type=file]").set_input_files(str(shared))
        page.wait_for_selector("#history-upload .file-preview, #history-upload table")
        page.locator("#history-import").click()
        message = wait_text(page, "#history-import-status", "Imported as")
        assert MARKUP in message
        assert MARKUP in page.locator("#history-table").inner_text()
        id = re.search(r"Imported as ([0-9a-f]{32})", message).group(1)

        opened = context.new_page()  # the permalink: the list fills and the experiment opens as the page loads
        opened.set_default_timeout(TIMEOUT_MS)
        opened.goto(f"{url}?experiment={id}")
        details = wait_text(opened, "#history-details", "imported")
        assert details.count(MARKUP) == 7 and f"<img src=http://{BEACON}/tag.png>" in details
        opened.wait_for_selector("#history-profiles .js-plotly-plot")
        opened.wait_for_selector("#history-perplexity .js-plotly-plot")
        texts = "([s]) => [...document.querySelectorAll(s)].map(e => e.textContent)"
        assert opened.evaluate(texts, ["#history-profiles .legendtext"]) == [MARKUP, "uniform"]
        assert opened.evaluate(texts, ["#history-perplexity .xtick text"]) == [MARKUP, "uniform"]
        opened.wait_for_timeout(1000)  # time for any image to be fetched
        for p in (page, opened):
            planted = p.evaluate(f"() => document.querySelectorAll('[src*=\"{BEACON}\"], [*|href*=\"{BEACON}\"]')"
                                 ".length")
            assert planted == 0
        assert [u for u in requested if BEACON in u] == []
    except Exception:
        ARTIFACTS.mkdir(exist_ok=True)
        for i, p in enumerate(context.pages):
            p.screenshot(path=str(ARTIFACTS / f"markup-{i}.png"), full_page=True)
        raise
    finally:
        context.close()


def set_number(page, elem_id: str, value: str) -> None:
    """Type a value into a slider's number box, as a user does."""
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(value)
    box.press("Enter")


def test_the_target_is_shown_and_edited_on_every_tab_that_uses_it(loaded, page):
    tab(page, "Evaluate")
    set_number(page, "eval-target", "0.6")
    wait_text(page, "#evaluate", "Evaluate at 60% sparsity")
    tabs = (("Model & data", "target"), ("Formula builder", "builder-target"), ("Search", "search-target"))
    for name, elem_id in tabs:
        tab(page, name)
        page.wait_for_function("([s]) => document.querySelector(s).value === '0.6'",
                               arg=[f"#{elem_id} input[type=number]"])
    tab(page, "Formula builder")  # the profile follows the target set on another tab
    page.wait_for_function("() => { const d = document.querySelector('#profile-plot .js-plotly-plot');"
                           " return d && d.layout.shapes.length && d.layout.shapes[0].y0 === 0.6; }")
    set_number(page, "builder-target", "0.45")
    tab(page, "Evaluate")
    wait_text(page, "#evaluate", "Evaluate at 45% sparsity")


def text_value(page, elem_id: str) -> str:
    return page.locator(f"#{elem_id} input, #{elem_id} textarea").first.input_value()


def test_the_builder_keeps_its_profile_in_view_and_nothing_stale(loaded, browser, request):
    page = new_page(browser, loaded, viewport=(1280, 800))
    with closed_after(request.node.name, page):
        tab(page, "Formula builder")
        page.wait_for_function(f"() => ({PROFILE_Y})() !== null")
        plot, dropdown = page.locator("#profile-plot").bounding_box(), page.locator("#reduction").bounding_box()
        assert plot["y"] + plot["height"] <= 800  # above the fold, beside the dropdowns
        assert plot["x"] >= dropdown["x"] + dropdown["width"]

        choose(page, "preset", "DSA preset (LLaMA-1-7B, Wanda, 70%)")
        page.wait_for_function("() => document.querySelector('#function-text textarea, #function-text input')"
                               ".value.startsWith('W:(ABSLOG)')")
        assert text_value(page, "preset") == "DSA preset (LLaMA-1-7B, Wanda, 70%)"
        choose(page, "reduction", "kurtosis")  # an edit: no longer the preset
        page.wait_for_function("() => document.querySelector('#preset input').value === ''")

        drawn = text_value(page, "function-text")
        fill(page, "function-text", "W:(ABSLOG)-(VAR)")
        page.locator("#function-text input, #function-text textarea").first.press("Enter")
        assert "still shows" in wait_text(page, "#builder-warnings", "Cannot read")
        page.wait_for_function("([t]) => document.querySelector('#function-text textarea, #function-text input')"
                               ".value === t", arg=[drawn])  # the box shows what the plot shows

        set_number(page, "param", "0.23")
        wait_text(page, "#formula", "0.23")
        page.wait_for_function("() => document.querySelector('#function-text textarea, #function-text input')"
                               ".value.endsWith('BAND=0.23)')")


def shared_file(tmp_path, id: str, name: str) -> Path:
    experiment = {"id": id, "kind": "evaluation", "name": name, "status": "done",
                  "created_at": "2025-05-01T10:00:00+00:00", "updated_at": "2025-05-01T10:00:00+00:00",
                  "config": {"model": "random:tiny", "metric": "wanda", "allocation": "owl", "sparsity": 0.5},
                  "results": {"target": 0.5, "rows": [{"label": "this function", "ppl": 20.0, "ratios": [0.4, 0.6]},
                                                      {"label": "uniform", "ppl": 25.0, "ratios": [0.5, 0.5]}]}}
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps({"format": "sparsity-explorer/experiment", "version": 1, "experiment": experiment}))
    return path


def beside(page, message: str, button: str) -> bool:
    """Whether a message sits next to its button: to its right on the same line, or just below it."""
    m, b = page.locator(message).bounding_box(), page.locator(button).bounding_box()
    right = m["x"] >= b["x"] + b["width"] - 1 and abs(m["y"] - b["y"]) < b["height"] + 20
    below = 0 <= m["y"] - (b["y"] + b["height"]) < 40 and m["x"] < b["x"] + b["width"]
    return right or below


def test_history_rows_open_on_click_imports_are_marked_and_messages_sit_by_their_buttons(url, page, tmp_path):
    tab(page, "History & sharing")
    headers = page.evaluate("() => [...document.querySelectorAll('#history-table thead th')].map(e => e.innerText"
                            ".trim()).filter(t => t)")
    assert headers[0] == "name" and headers[-1] == "id"
    path = shared_file(tmp_path, "d" * 32, "shared run")
    page.locator("#history-upload input[type=file]").set_input_files(str(path))
    page.wait_for_selector("#history-upload .file-preview, #history-upload table")
    for expected in ("Imported as", "Already in the history"):  # the second import is recognised
        page.locator("#history-import").click()
        message = wait_text(page, "#history-import-status", expected)
    assert "nothing was added" in message and beside(page, "#history-import-status", "#history-import")
    page.locator("#history-refresh").click()
    wait_text(page, "#history-status", "listed")
    row = page.locator("#history-table [role=row].virtual-row", has_text="shared run")
    assert row.count() == 1 and "done · imported" in row.inner_text()
    row.locator("[role=gridcell]").first.click()  # a click on the row opens it
    details = wait_text(page, "#history-details", "shared run")
    assert "imported from shared run.json" in details
    fill(page, "history-name", "shared run, renamed")
    page.locator("#history-save").click()
    wait_text(page, "#history-save-status", "Saved name and tags")
    assert beside(page, "#history-save-status", "#history-save")


def test_a_bad_permalink_says_why(url, browser, request):
    page = new_page(browser, url, "?experiment=abc", viewport=(1280, 800), ready="#history-details")
    with closed_after(request.node.name, page):
        assert "not an experiment id" in wait_text(page, "#history-details", "This link opens no experiment")
        page.goto(f"{url}?experiment={'e' * 32}")
        assert "not in this history" in wait_text(page, "#history-details", "This link opens no experiment")
        assert page.get_by_role("tab", name="History & sharing").get_attribute("aria-selected") == "true"


def test_queued_work_says_its_place_and_earlier_results_do_not_stay(loaded, browser, request):
    searching, evaluating = (new_page(browser, loaded) for _ in range(2))
    with closed_after(request.node.name, searching, evaluating):
        tab(evaluating, "Evaluate")
        fill(evaluating, "eval-windows", "1")
        evaluating.locator("#evaluate").click()
        wait_text(evaluating, "#eval-status", "Evaluation done")
        first = re.search(r"[0-9a-f]{32}", evaluating.locator("#eval-saved").inner_text()).group(0)

        tab(searching, "Search")
        fill(searching, "population", "4")
        fill(searching, "budget", "100000")  # only Stop ends it
        fill(searching, "fitness-windows", "1")
        searching.locator("#search-start").click()
        wait_text(searching, "#search-status", r"≈ .+ left")  # the time left, from the candidates so far

        evaluating.locator("#evaluate").click()
        queued = wait_text(evaluating, "#eval-status", r"Queued \(position 1\)")
        assert "after search, which is running" in queued
        searching.locator("#search-stop").click()
        wait_text(searching, "#search-status", "Search stopped")
        wait_text(evaluating, "#eval-status", "Running|Evaluation done")
        second = re.search(r"[0-9a-f]{32}", wait_text(evaluating, "#eval-saved", "Saved as")).group(0)
        assert second != first  # the new run's id from the start, not the previous one
        wait_text(evaluating, "#eval-status", "Evaluation done")
        assert table_rows(evaluating, "eval-table") == 4


BOX = "(e) => { const r = e.getBoundingClientRect(); return [r.left, r.top, r.right, r.bottom]; }"
OVERLAPS = ("() => [...document.querySelectorAll('.js-plotly-plot')].filter(d => d.offsetParent).flatMap(d => {"
            " const l = d.querySelector('.legend'), t = d.querySelector('.g-xtitle');"
            " if (!l || !t) return []; const a = l.getBoundingClientRect(), b = t.getBoundingClientRect();"
            " return a.top < b.bottom && b.top < a.bottom && a.left < b.right && b.left < a.right"
            " ? [d.closest('[id]').id] : []; })")
SCROLLS = ("([s]) => { const g = document.querySelector(s + ' [role=grid]');"
           " const e = [g, ...g.querySelectorAll('*')].find(e => ['auto', 'scroll'].includes("
           "getComputedStyle(e).overflowX) && e.scrollWidth > e.clientWidth + 1); return !!e; }")


def test_a_narrow_screen_stacks_plots_under_their_controls(loaded, browser, request):
    page = new_page(browser, loaded, viewport=(390, 844))
    with closed_after(request.node.name, page):
        tab(page, "Formula builder")
        page.wait_for_function(f"() => ({PROFILE_Y})() !== null")
        warnings, plot = (page.locator(s).evaluate(BOX) for s in ("#builder-warnings", "#profile-plot"))
        assert plot[1] >= warnings[3]  # the profile under the controls and the warnings

        tab(page, "Evaluate")
        fill(page, "eval-windows", "1")
        page.locator("#evaluate").click()
        wait_text(page, "#eval-status", "Evaluation done")
        page.wait_for_selector("#eval-bars .js-plotly-plot .legend, #eval-bars .js-plotly-plot .xtick")
        button, profiles, dots = (page.locator(s).evaluate(BOX) for s in ("#evaluate", "#eval-profiles",
                                                                            "#eval-bars"))
        assert profiles[1] >= button[3] and dots[1] >= profiles[3]  # stacked, one under the other
        assert page.evaluate("() => document.documentElement.scrollWidth") <= 390  # nothing wider than the screen
        assert page.evaluate(OVERLAPS) == []  # no legend over an axis title
        assert page.locator("#eval-table thead th").first.inner_text().strip() == "allocation"
        assert page.evaluate(SCROLLS, ["#eval-table"])  # the table scrolls sideways, its first column is the name

        tab(page, "Search")
        fill(page, "population", "4")
        fill(page, "budget", "8")
        fill(page, "search-fidelity", "64,128")  # a legend of four entries: two rows at this width
        page.locator("#search-start").click()
        wait_text(page, "#search-status", "Search done")
        page.wait_for_selector("#search-progress .js-plotly-plot .legend")
        assert page.locator("#search-progress .legend .traces").count() == 4
        assert page.evaluate(OVERLAPS) == []
        assert page.evaluate("() => document.documentElement.scrollWidth") <= 390

        tab(page, "History & sharing")
        page.locator("#history-refresh").click()
        wait_text(page, "#history-status", "listed")
        assert page.locator("#history-table thead th").first.inner_text().strip() == "name"
        assert page.evaluate(SCROLLS, ["#history-table"])
        assert page.evaluate("() => document.documentElement.scrollWidth") <= 390
