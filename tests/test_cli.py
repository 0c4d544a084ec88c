"""The command line as a user runs it: a subprocess, exit codes, one JSON object."""

import json
import subprocess
import sys

import pytest

QUICK = ["--model", "random:tiny", "--nsamples", "2", "--seqlen", "64", "--eval-windows", "2", "--device", "cpu",
         "--data-source", "local"]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dsa_core", *args], capture_output=True, text=True, timeout=300)


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
