"""The command line as a user runs it: a subprocess, exit codes, one JSON object, the run in the history."""

import json
import os
import subprocess
import sys

import pytest

from storage import History, open_database
from ui import experiments

QUICK = ["--model", "random:tiny", "--nsamples", "2", "--seqlen", "64", "--eval-windows", "2", "--device", "cpu",
         "--data-source", "local"]


def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dsa_core", *args], capture_output=True, text=True, timeout=300,
                          env=env)


@pytest.mark.parametrize("args,message", [
    (["--sparsity", "1.2"], "outside [0, 0.99]"),
    (["--sparsity", "-0.1"], "outside [0, 0.99]"),
    (["--sparsity", "0.995"], "outside [0, 0.99]"),  # uniform too: one rule for every allocation
    (["--batch-size", "-1"], "--batch-size must be at least 1"),
    (["--pattern", "2:4", "--sparsity", "0.6"], "does not match it"),
    (["--pattern", "2:4", "--sparsity", "0.5", "--allocation", "owl"], "use --allocation uniform"),
    (["--calib", "/no/such/file.txt"], "neither a known dataset"),
    (["--seqlen", "4000", "--calib", "{short}"], "too short"),
    (["--seqlen", "100000"], "beyond random:tiny's context of 4096 tokens"),
])
def test_bad_input_is_one_sentence_and_exit_code_2(args, message, tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("A calibration file far shorter than the windows asked for.\n")
    out = run("evaluate", *QUICK, *[a.format(short=short) for a in args])
    assert out.returncode == 2, out.stderr
    assert message in out.stderr and "Traceback" not in out.stderr
    assert out.stderr.strip().count("\n") == 0


def test_an_unreadable_allocation_is_refused_before_the_model_is_looked_for():
    out = run("evaluate", "--model", "/no/such/dir", "--device", "cpu", "--allocation", "W:(FOO)-(BAR)")
    assert out.returncode == 2 and "Cannot read allocation function" in out.stderr
    out = run("search", "--model", "/no/such/dir", "--device", "cpu", "--space", "allocation", "--start", "owl:m=x",
              "--budget-candidates", "5")
    assert out.returncode == 2 and "is not a number" in out.stderr


def test_missing_model_exit_code_2():
    out = run("evaluate", "--model", "/no/such/dir", "--device", "cpu")
    assert out.returncode == 2 and "does not exist" in out.stderr


def test_json_result_carries_protocol_ratios_and_timings():
    out = run("evaluate", *QUICK, "--allocation", "owl", "--sparsity", "0.5", "--dense", "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["ppl"] > 1 and result["dense_ppl"] > 1
    assert len(result["ratios"]) == 4 and abs(sum(result["ratios"]) / 4 - 0.5) < 1e-3
    assert abs(result["achieved_sparsity"] - 0.5) < 0.01
    p = result["protocol"]
    assert (p["dataset"], p["split"], p["seqlen"], p["windows"], p["nsamples"], p["seed"]) == \
        ("wikitext2", "test", 64, 2, 2, 0)
    assert "wiki.test.raw" in p["source"] and "wiki.valid.tokens" in p["calibration_source"]
    assert {"load", "calibration", "pruning", "perplexity"} <= set(result["timings"])


def test_dense_allocation_leaves_the_model_unpruned():
    out = run("evaluate", *QUICK, "--allocation", "dense", "--json")
    result = json.loads(out.stdout)
    assert result["achieved_sparsity"] < 0.01


def test_float64_is_a_dtype_and_the_result_names_it():
    out = run("evaluate", *QUICK, "--dtype", "fp64", "--sparsity", "0.7", "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["environment"]["dtype"] == "float64" and result["ppl"] > 1


def test_an_evaluation_is_recorded_in_the_apps_history_by_default(tmp_path):
    """On by default, in the database the web app opens ($DSA_DATABASE_URL here), in the shape History reads; a failed
    run is recorded with its message; --no-history records nothing."""
    url = f"sqlite:///{tmp_path / 'app.db'}"
    env = {**os.environ, "DSA_DATABASE_URL": url}
    out = run("evaluate", *QUICK, "--allocation", "owl", "--dense", "--json", env=env)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    record = History(open_database(url)).get(result["history_id"])
    assert (record.kind, record.status, record.model) == ("evaluation", "done", "random:tiny")
    assert record.results["rows"][0]["ppl"] == result["ppl"] and record.results["dense_ppl"] == result["dense_ppl"]
    assert record.protocol == result["protocol"] and record.config["allocation"] == "owl"
    assert experiments.headline(record) == f"ppl {result['ppl']:.4g} at 50%"
    assert set(experiments.charts(record)) == {"profiles", "perplexity"}
    assert "history id" in run("evaluate", *QUICK, env=env).stdout
    failed = run("evaluate", "--model", "/no/such/dir", "--device", "cpu", env=env)
    assert failed.returncode == 2
    (record,) = History(open_database(url)).find(status="failed")
    assert "does not exist" in record.results["error"] and record.results["error"] in failed.stderr
    before = History(open_database(url)).count()
    out = run("evaluate", *QUICK, "--json", "--no-history", env=env)
    assert "history_id" not in json.loads(out.stdout) and History(open_database(url)).count() == before


def test_an_unreachable_history_is_one_warning_and_the_result_is_still_printed(tmp_path):
    out = run("evaluate", *QUICK, "--json", "--history", f"sqlite:///{tmp_path / 'no' / 'such' / 'folder.db'}")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["ppl"] > 1
    assert "cannot be used" in out.stderr and "not recorded in the history" in out.stderr
    assert "Traceback" not in out.stderr
