"""The web app's workspace on the tiny random model: loading and scoring, profiles from cached statistics,
evaluations, sweeps and searches as jobs (one joined by a worker process), cancellation, and the local-path rule of
an exposed app."""

import json
import os
import re
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch

from dsa_core import functions
from dsa_core.config import EvalConfig
from dsa_core.errors import Cancelled, ConfigError
from dsa_core.search_config import SearchConfig
from dsa_core.search_record import search_results, study_reader
from dsa_core.structural.training import StructuralConfig
from storage import History, Recorder, open_database
from ui import experiments
from ui.jobs import Busy, Job
from ui.limits import Limits
from ui.workspace import OWN_LABEL, REFERENCES, Workspace, is_local_path

TINY = EvalConfig(model="random:tiny", nsamples=4, seqlen=64, data_source="local")
FN = functions.parse("W:(NO_OP)-(KURTOSIS)-(NO_OP)-(BAND=0.1)")


def run(ws: Workspace, name: str, fn):
    return ws.start(name, fn).result()


@pytest.fixture(scope="module")
def ws():
    ws = Workspace("cpu")
    run(ws, "loading", lambda job: ws.load(TINY, job))
    return ws


def weights(ws: Workspace) -> list[torch.Tensor]:
    lm = ws.session.lm
    return [m.weight.detach().clone() for i in range(len(lm.blocks)) for m in lm.linear_layers(i).values()]


def test_nothing_works_before_a_model_is_loaded():
    with pytest.raises(ConfigError, match="Load a model first"):
        Workspace("cpu").profiles(FN, 0.5)


def test_load_describes_the_blocks(ws):
    d = ws.description
    assert d["name"] == "random:tiny" and len(d["blocks"]) == 4
    assert sum(b["params"] for b in d["blocks"]) == d["prunable_params"] == int(ws.stats.params.sum())
    assert d["calibration_source"].startswith("local:") and "scoring" in d["timings"]


def test_profiles_meet_the_target_and_differ_by_function(ws):
    p = ws.profiles(FN, 0.6)
    assert list(p.ratios) == [OWN_LABEL, *REFERENCES]
    for ratios in p.ratios.values():
        assert np.average(ratios, weights=ws.stats.params) == pytest.approx(0.6, abs=1e-9)
    assert p.ratios[OWN_LABEL] != ws.profiles(functions.parse("W:(NO_OP)-(MEAN)-(NO_OP)"), 0.6).ratios[OWN_LABEL]
    assert ws.references(0.6) == {k: v for k, v in p.ratios.items() if k != OWN_LABEL}
    with pytest.raises(ConfigError, match="Target sparsity"):
        ws.profiles(FN, 1.5)


def test_hazards_are_reported_with_the_profile(ws):
    p = ws.profiles(functions.DSA_PRESET, 0.5)  # asin of arctan of a large variance leaves asin's domain
    assert any("asin" in w for w in p.warnings)


def test_evaluate_compares_with_the_references_and_restores_the_model(ws):
    dense = weights(ws)
    job = ws.start("evaluation", lambda job: ws.evaluate(FN, 0.5, "fast", 2, True, job))
    result = job.result()
    assert [r["label"] for r in result["rows"]] == [OWN_LABEL, *REFERENCES]
    assert result["rows"][0]["allocation"] == functions.to_text(FN)
    for row in result["rows"]:
        assert np.isfinite(row["ppl"]) and row["ppl"] > 1
        assert row["achieved_sparsity"] == pytest.approx(0.5, abs=0.02)
    assert np.isfinite(result["dense_ppl"]) and result["protocol"]["windows"] == 2
    assert all(torch.equal(a, b) for a, b in zip(dense, weights(ws)))


def test_sweep_measures_every_target(ws):
    result = run(ws, "sweep", lambda job: ws.sweep(FN, [0.6, 0.3], "fast", 1, job))
    assert result["targets"] == [0.3, 0.6]
    for series in result["series"]:
        assert [p["sparsity"] for p in series["points"]] == [0.3, 0.6]
        assert all(np.isfinite(p["ppl"]) for p in series["points"])


def test_cancelled_evaluation_leaves_the_dense_model(ws):
    dense = weights(ws)
    gate = threading.Event()

    def evaluate(job: Job):
        gate.wait(5)
        return ws.evaluate(FN, 0.5, "sequential", None, False, job)

    job = ws.start("evaluation", evaluate)
    with pytest.raises(Busy, match="busy with evaluation"):
        ws.start("sweep", lambda job: None)
    assert ws.cancel() == "Stopping evaluation…"
    gate.set()
    with pytest.raises(Cancelled):
        job.result()
    assert all(torch.equal(a, b) for a, b in zip(dense, weights(ws)))
    assert ws.cancel() == "Nothing is running."


def test_reloading_with_the_same_data_keeps_the_session(ws):
    session = ws.session  # same data settings: the session is kept, only the new metric or pattern is scored
    try:
        run(ws, "loading", lambda job: ws.load(EvalConfig(**{**TINY.to_dict(), "metric": "magnitude"}), job))
        assert ws.session is session and ws.config.metric == "magnitude" and ws.stats.metric == "magnitude"
        run(ws, "loading", lambda job: ws.load(EvalConfig(**{**TINY.to_dict(), "pattern": "2:4"}), job))
        assert ws.session is session and ws.config.sparsity == 0.5  # the pattern fixes it
        assert any("2:4" in w for w in ws.profiles(FN, 0.5).warnings)
        with pytest.raises(ConfigError, match="2:4 pattern"):
            ws.eval_config("uniform", 0.5, "fast", 1)
        with pytest.raises(ConfigError, match="unstructured"):
            ws.search_config(SearchConfig(sparsity=0.5, budget_candidates=4))
    finally:
        run(ws, "loading", lambda job: ws.load(TINY, job))
    assert ws.session is session and ws.config == ws.config.__class__(**{**TINY.to_dict(), "device": "cpu"})


def test_search_publishes_candidates_and_stop_keeps_them(ws):
    cfg = SearchConfig(sparsity=0.5, population=4, budget_candidates=10_000, fitness_windows=1, seed=1)

    def search(job: Job):
        return ws.search(cfg, job)

    job = ws.start("search", search)
    for _ in job.updates(every=0.05):
        if len(job.events) >= 6:
            ws.cancel()
    result = job.result()
    assert result.stopped and result.evaluated >= 6 and len(job.events) >= 6
    best = min(e.fitness for e in job.events)
    assert result.best.fitness == best and job.events[-1].best_fitness == best
    saved = ws.search_config(cfg)
    assert (saved.model, saved.seqlen, saved.metric) == ("random:tiny", 64, "wanda")


@pytest.mark.parametrize("cfg,message", [
    (EvalConfig(model="org/any-hub-model"), "serves only smollm2, gemma3-270m, random:tiny"),
    (EvalConfig(model="random:llama7b"), "serves only"),
    (EvalConfig(nsamples=129), "at most 128 calibration samples, not 129"),
    (EvalConfig(seqlen=4096), "at most 2048 tokens per window"),
    (EvalConfig(eval_windows=1000), "at most 200 evaluation windows"),
    (SearchConfig(budget_candidates=None, budget_seconds=3600), "at most 900 seconds of search"),
    (SearchConfig(budget_candidates=10**6), "at most 5000 search candidates"),
    (StructuralConfig(steps=10**6), "at most 2000 training steps"),
])
def test_an_exposed_app_caps_what_a_visitor_asks_for(cfg, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        Limits().check(cfg)
    Limits().check(EvalConfig(model="gemma3-270m", nsamples=128, seqlen=2048))  # the standard protocol fits
    assert "searches of 5000 candidates or 900 s" in Limits().text()


@pytest.mark.parametrize("spec,local", [("/tmp/model", True), ("./model", True), ("~/m", True), ("m.gguf", True),
                                        ("a/b/c", True), ("HuggingFaceTB/SmolLM2-135M", False), ("gpt2", False)])
def test_what_counts_as_a_local_path(spec, local):
    assert is_local_path(spec) is local


def test_an_exposed_app_refuses_local_paths(tmp_path):
    ws = Workspace("cpu", Limits(models=("smollm2", "random:tiny", "org/name")))
    text = tmp_path / "calib.txt"
    text.write_text("some text")
    for cfg in (EvalConfig(model=str(tmp_path)), EvalConfig(model="x.gguf"), EvalConfig(calib=str(text))):
        with pytest.raises(ConfigError, match="reachable from other machines"):
            ws.check_sources(cfg)
    for cfg in (EvalConfig(model="smollm2"), EvalConfig(model="random:tiny"), EvalConfig(model="org/name")):
        ws.check_sources(cfg)
    with pytest.raises(ConfigError, match="local paths"):
        run(ws, "loading", lambda job: ws.load(EvalConfig(model=str(tmp_path)), job))
    assert ws.session is None


def test_a_search_of_the_app_is_joined_by_a_worker_and_history_shows_both(ws, tmp_path):
    """The app's search keeps its study in the history database: stopped in the app, a `worker` process joins it by
    name (its storage by default the app's database) and spends the rest of its budget, and History shows every
    candidate, the worker's too."""
    url = f"sqlite:///{tmp_path / 'history.db'}"
    history = History(open_database(url))
    cfg = ws.search_config(SearchConfig(sparsity=0.5, population=4, budget_candidates=10, fitness_windows=1, seed=2,
                                        study="joined"))
    run = Recorder(history).start("search", cfg.to_dict(), results={"study": "joined"})
    job = ws.start("search", lambda job: ws.search(cfg, job, history.db.study_url))
    for _ in job.updates(every=0.05):
        if len(job.events) >= 3:
            ws.cancel()
    result = job.result()
    run.done({**search_results(job.events, result), "study": "joined"})
    assert result.stopped and len(job.events) < 10
    worker = subprocess.run([sys.executable, "-m", "dsa_core", "worker", "--study", "joined"],  # the app's database
                            capture_output=True, text=True, timeout=300, env={**os.environ, "DSA_DATABASE_URL": url})
    assert worker.returncode == 0, worker.stderr
    report = json.loads(worker.stdout.strip().splitlines()[-1])
    assert report["evaluated"] == 10 - len(job.events)
    (shown,) = experiments.refreshed([history.get(run.id)], study_reader(url))
    assert len(shown.results["candidates"]) == 10 and len(history.get(run.id).results["candidates"]) < 10
    assert shown.results["best_fitness"] == pytest.approx(min(report["best_fitness"], result.best.fitness))
