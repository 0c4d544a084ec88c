"""The structural tab's figures (pure functions of plain data) and the tab itself, driven through its API on
the tiny random model: the run streams, ends with a table and charts, and is saved in the history."""

import json

import gradio as gr
import plotly.graph_objects as go
import pytest
from gradio_client import Client

from storage import History, new_record, open_database
from tests.net import free_port
from ui import experiments
from ui import structural_figures as SF
from ui.context import AppContext
from ui.structural_tab import build_structural_tab
from ui.workspace import Workspace

LABELS = ["attention input", "attention output", "MLP input", "MLP intermediate", "MLP output"]
CURVE = [{"step": i, "loss": 5.0 - i / 10, "ce": 3.0, "reg": 2.0 - i / 10, "ratio": 1.0 - i / 50} for i in range(1, 11)]


pytestmark = pytest.mark.usefixtures("one_thread")


def test_heatmap_rows_are_structures_and_colour_is_the_kept_share():
    widths = [[32, 16, 64, 80, 8], [64, 64, 64, 160, 64], [1, 2, 3, 4, 5]]
    fig = SF.widths_heatmap(widths, [64, 64, 64, 160, 64], LABELS)
    heat = fig.data[0]
    assert isinstance(heat, go.Heatmap) and list(heat.y) == LABELS and list(heat.x) == [0, 1, 2]
    assert list(heat.z[0]) == [0.5, 1.0, 1 / 64] and list(heat.z[3]) == [0.5, 1.0, 4 / 160]
    assert heat.text[1][0] == "16 / 64"


def test_loss_curve_has_loss_cross_entropy_and_ratio_with_the_target():
    fig = SF.loss_curve(CURVE, 0.7)
    assert [t.name for t in fig.data] == ["loss", "cross-entropy", "kept ratio"]
    assert fig.data[2].yaxis == "y2" and list(fig.data[0].x) == list(range(1, 11))
    assert any(shape.y0 == 0.7 for shape in fig.layout.shapes)


def test_charts_and_rows_of_a_saved_result():
    results = {"selection": {"widths": [[4, 4, 4, 10, 4]]}, "full_widths": [8, 8, 8, 20, 8],
               "structure_labels": LABELS, "curve": CURVE,
               "params": {"target_ratio": 0.5, "dense_block_linear": 1000, "kept_block_linear": 500,
                          "dense_total": 3000, "compressed_total": 2500},
               "ppl": {"dense": 10.0, "compressed": 12.5, "baseline": 30.25}, "baseline": {"params": 498}}
    charts = SF.charts(results)
    assert set(charts) == {"widths", "loss"}
    record = new_record("structural", {"model": "random:tiny"}, results=results)
    assert set(experiments.charts(record)) == {"widths", "training"}  # what the history tab shows
    assert SF.perplexity_rows(results) == [["dense", 1000, 3000, 10.0], ["DISP-LLM", 500, 2500, 12.5],
                                           ["uniform baseline", 498, 2498, 30.25]]


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    history = History(open_database(f"sqlite:///{tmp_path_factory.mktemp('ui') / 'history.db'}"))
    ctx = AppContext(Workspace("cpu"), history)
    with gr.Blocks() as demo:
        with gr.Tab("Structural pruning"):
            build_structural_tab(ctx)
    demo.queue()
    _, url, _ = demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True)
    yield Client(url, verbose=False), history
    demo.close()


def test_a_run_streams_to_a_table_charts_and_the_history(app):
    client, history = app
    status, saved, table, loss, heatmap = client.predict(
        "random:tiny", 0.6, 3, 1, 32, 16.0, 0.001, 2, True, True, "tiny run", "test, structural",
        api_name="/structural")
    assert status.startswith("✓ Kept"), status
    assert [row[0] for row in table["data"]] == ["dense", "DISP-LLM", "uniform baseline"]
    heat = json.loads(heatmap["plot"])["data"][0]
    assert heat["type"] == "heatmap" and heat["y"][-1] == "key/value heads"
    assert [t["name"] for t in json.loads(loss["plot"])["data"]] == ["loss", "cross-entropy", "kept ratio"]
    (record,) = history.find(kind="structural")
    assert record.id in saved and record.status == "done" and record.name == "tiny run"
    assert record.tags == ["test", "structural"] and len(record.results["curve"]) == 3
    assert record.config["prune_heads"] is True
    assert record.results["params"]["ratio"] == pytest.approx(0.6, abs=0.01)
    assert set(experiments.charts(record)) == {"widths", "training"}  # a real run's results have the shape read back


def test_bad_settings_are_one_line_and_nothing_is_saved(app):
    client, history = app
    before = history.count(kind="structural")
    status, *_ = client.predict("random:tiny", 0.6, 3, 1, 32, 16.0, 0.0, 2, True, False, "", "",
                                api_name="/structural")
    assert status.startswith("✗") and "learning rate" in status
    assert history.count(kind="structural") == before
