"""`python -m dsa_core structural`: a table or JSON, the compressed model saved, the run stored in the history."""

import json

import pytest

from cli.main import main
from dsa_core.structural.compressed import load_compressed
from storage import History, open_database

QUICK = ["structural", "--model", "random:tiny", "--steps", "3", "--batch-size", "1", "--seqlen", "32",
         "--eval-seqlen", "64", "--eval-windows", "2", "--baseline-samples", "2", "--data-source", "local",
         "--device", "cpu", "--target-ratio", "0.6"]


pytestmark = pytest.mark.usefixtures("one_thread")


def test_json_run_saves_the_model_and_the_history(tmp_path, monkeypatch, capsys):
    url = f"sqlite:///{tmp_path / 'history.db'}"
    monkeypatch.setenv("DSA_DATABASE_URL", url)
    assert main([*QUICK, "--save", str(tmp_path / "model"), "--history", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result["ppl"]) == {"dense", "compressed", "baseline"}
    assert result["params"]["ratio"] == pytest.approx(0.6, abs=0.01)
    assert result["baseline"]["ratio"] == pytest.approx(0.6, abs=0.01)
    assert len(result["curve"]) == 3 and len(result["selection"]["widths"]) == 4
    assert result["protocol"]["split"] == "test" and "wiki.test.raw" in result["protocol"]["source"]
    assert "wiki.valid" in result["protocol"]["calibration_source"]
    record = History(open_database(url)).get(result["history_id"])
    assert record.kind == "structural" and record.status == "done" and record.model == "random:tiny"
    assert record.results["ppl"] == result["ppl"] and record.results["curve"] == result["curve"]
    lm = load_compressed(tmp_path / "model", device="cpu")
    assert lm.model.config.disp_widths == result["selection"]["widths"]


def test_heads_selected_too_are_in_the_widths_and_the_saved_model(tmp_path, capsys):
    assert main([*QUICK, "--prune-heads", "--no-baseline", "--save", str(tmp_path / "model"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["config"]["prune_heads"] is True and result["structure_labels"][-1] == "key/value heads"
    assert result["full_widths"][-1] == 2 and all(len(w) == 6 for w in result["selection"]["widths"])
    assert result["params"]["ratio"] == pytest.approx(0.6, abs=0.01)
    lm = load_compressed(tmp_path / "model", device="cpu")
    assert lm.model.config.disp_widths == result["selection"]["widths"]


def test_table_names_the_three_models(capsys):
    assert main([*QUICK, "--no-baseline"]) == 0
    out = capsys.readouterr().out
    assert "DISP-LLM" in out and "dense" in out and "uniform baseline" not in out
    assert "kept parameters" in out and "MLP intermediate" in out


@pytest.mark.parametrize("args, message", [
    (["--target-ratio", "1.2"], "outside (0, 1)"),
    (["--model", "random:nope"], "Unknown random shape"),
])
def test_bad_input_is_one_sentence_and_exit_code_2(args, message, capsys):
    assert main([*QUICK, *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err


def test_stronger_baselines_are_reported_beside_disp_llm(tmp_path, monkeypatch, capsys):
    """--baselines adds the same hypernetwork with uniform widths (trained as many steps) and ShortGPT, each at the
    run's budget, measured on the same test windows; the history keeps them."""
    url = f"sqlite:///{tmp_path / 'history.db'}"
    monkeypatch.setenv("DSA_DATABASE_URL", url)
    assert main([*QUICK, "--baselines", "uniform,hypernet,shortgpt", "--history", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["config"]["baseline"] and result["config"]["extra_baselines"] == ["hypernet", "shortgpt"]
    hypernet, shortgpt = result["baselines"]["hypernet"], result["baselines"]["shortgpt"]
    assert hypernet["steps"] == 3 and hypernet["ratio"] == pytest.approx(0.6, abs=0.02)
    widths = hypernet["widths"]  # one hidden selection for every side: uniform widths
    assert widths[0] == widths[1] == widths[2] == widths[4] < 64 and widths[3] <= 160
    assert shortgpt["removed"] == sorted(shortgpt["removed"]) and len(shortgpt["removed"]) == 2  # round(0.4 × 4)
    assert shortgpt["ratio"] == 0.5 and len(shortgpt["influence"]) == 4
    for row in (hypernet, shortgpt):
        assert row["ppl"] > 1 and row["ppl"] != result["ppl"]["compressed"]
    assert {"hypernet", "shortgpt"} <= set(result["timings"])
    record = History(open_database(url)).get(result["history_id"])
    assert record.results["baselines"] == result["baselines"]


def test_table_lists_the_baselines_asked_for(capsys):
    assert main([*QUICK, "--baselines", "shortgpt"]) == 0
    out = capsys.readouterr().out
    assert "ShortGPT" in out and "removed blocks" in out
    assert "uniform baseline" not in out and "uniform hypernet" not in out


def test_an_unknown_baseline_is_one_sentence(capsys):
    assert main([*QUICK, "--baselines", "uniform,slicegpt"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Unknown baseline 'slicegpt'" in err and "hypernet, shortgpt" in err
