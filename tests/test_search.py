"""The evolutionary search on a tiny random model: budgets, memo, events, cancel, resume, reproducibility,
the faithful table, the CLI, and two worker processes sharing one SQLite study."""

import json
import subprocess
import sys
import threading

import optuna
import pytest
from optuna.trial import TrialState

from dsa_core import functions as F
from dsa_core import search as S
from dsa_core.errors import ConfigError
from dsa_core.session import PruningSession

QUICK = dict(model="random:tiny", nsamples=2, seqlen=64, data_source="local", device="cpu", population=4,
             fitness_windows=2, final_eval_windows=2, top_k=2)


@pytest.fixture(scope="module")
def session():
    from dsa_core.models import load_model

    return PruningSession(load_model("random:tiny", device="cpu"), nsamples=2, seqlen=64, data_source="local")


def texts(study: optuna.Study) -> list[str]:
    return [t.user_attrs["text"] for t in study.get_trials(states=(TrialState.COMPLETE,))]


def test_search_space_has_one_categorical_per_slot_and_lambda():
    space = S.search_space(S.SearchConfig(lam_range=(0.05, 0.2)))
    assert set(space) == set(F.slot_choices()) | {"lam"}
    assert (space["lam"].low, space["lam"].high) == (0.05, 0.2)


@pytest.mark.parametrize("change,message", [
    (dict(sampler="annealing"), "Unknown sampler"),
    (dict(budget_candidates=None, budget_seconds=None), "needs a budget"),
    (dict(sparsity=1.0), "outside"),
    (dict(lam_range=(0.3, 0.6)), "λ range"),
])
def test_bad_configuration_is_refused(change, message):
    with pytest.raises(ConfigError, match=message):
        S.SearchConfig(**{**QUICK, **change}).validate()


def test_budget_counts_distinct_functions_and_events_track_the_best(session):
    cfg = S.SearchConfig(**QUICK, budget_candidates=10, seed=1).validate()
    events, study = [], S.create_study(cfg)
    result = S.run_search(session, cfg, study, on_event=events.append)
    assert len(set(texts(study))) == 10 == result.evaluated
    assert {e.text for e in events} == set(texts(study))
    assert result.best.fitness == min(e.fitness for e in events)
    assert [e.best_fitness for e in events] == sorted((e.best_fitness for e in events), reverse=True)
    assert len(events[-1].best_ratios) == 4 and events[-1].best_text == result.best.text
    assert result.generations and result.generations[0]["best"] >= result.best.fitness
    assert session.achieved_sparsity()[0] < 0.01  # the session is dense again afterwards


def test_memo_scores_a_repeated_function_once(session, monkeypatch):
    cfg = S.SearchConfig(**QUICK, budget_candidates=3).validate()
    fitness = S.Fitness(session, cfg)
    calls = []
    real = fitness.perplexity
    monkeypatch.setattr(fitness, "perplexity", lambda: calls.append(1) or real())
    fn = F.DSA_PRESET
    first, again = fitness(fn), fitness(F.parse(F.to_text(fn)))
    assert first is again and len(calls) == 1


def test_stop_keeps_what_was_found(session):
    cfg = S.SearchConfig(**QUICK, budget_candidates=50).validate()
    stop = threading.Event()
    study = S.create_study(cfg)

    def on_event(e):
        if e.candidate >= 2:
            stop.set()

    result = S.run_search(session, cfg, study, on_event=on_event, stop=stop)
    assert result.stopped and 1 <= result.evaluated < 50
    assert result.best.text in texts(study)


def test_resume_continues_a_saved_study(session, tmp_path):
    url = f"sqlite:///{tmp_path / 'search.db'}"
    cfg = S.SearchConfig(**QUICK, budget_candidates=5, study="resume-me", seed=3).validate()
    S.run_search(session, cfg, S.create_study(cfg, url))
    study, saved = S.load_study("resume-me", url)
    assert saved.population == 4 and saved.seed == 3
    saved.budget_candidates = 9
    result = S.run_search(session, saved, study)
    assert len(set(texts(study))) == 9
    assert result.evaluated == 4  # the first five came from the saved study, not re-evaluated


def test_a_study_saved_before_newer_settings_existed_resumes(tmp_path):
    url = f"sqlite:///{tmp_path / 'old.db'}"
    cfg = S.SearchConfig(**QUICK, budget_candidates=5, study="old").validate()
    study = S.create_study(cfg, url)
    older = {k: v for k, v in study.user_attrs["config"].items() if k not in ("initial", "preselect")}
    study.set_user_attr("config", older)  # as a version without these settings saved it
    resumed, saved = S.load_study("old", url)
    assert saved.preselect == S.SearchConfig().preselect and resumed.study_name == "old"


def test_resume_with_another_configuration_is_refused(tmp_path):
    url = f"sqlite:///{tmp_path / 'search.db'}"
    S.create_study(S.SearchConfig(**QUICK, study="s", budget_candidates=3), url)
    with pytest.raises(ConfigError, match="another configuration"):
        S.create_study(S.SearchConfig(**{**QUICK, "sparsity": 0.5}, study="s", budget_candidates=3), url)


def test_missing_study_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="No study named"):
        S.load_study("nope", f"sqlite:///{tmp_path / 'x.db'}")


@pytest.mark.parametrize("sampler", S.SAMPLERS)
def test_same_seed_same_search(session, sampler):
    runs = []
    for _ in range(2):
        cfg = S.SearchConfig(**QUICK, sampler=sampler, budget_candidates=8, seed=7).validate()
        study = S.create_study(cfg)
        S.run_search(session, cfg, study)
        runs.append([(t.user_attrs["text"], t.value) for t in study.get_trials(states=(TrialState.COMPLETE,))])
    assert runs[0] == runs[1]


def test_faithful_table_reports_baselines_and_candidates_in_one_run(session):
    cfg = S.SearchConfig(**QUICK, budget_candidates=2).validate()
    rows = S.faithful_table(session, cfg, ["W:(NO_OP)-(MEAN)-(NEG)"])
    assert [r["label"] for r in rows] == ["uniform", "owl", "dsa preset", "searched #1"]
    assert all(r["ppl"] > 1 and len(r["ratios"]) == 4 for r in rows)
    assert session.achieved_sparsity()[0] < 0.01  # the session is dense again afterwards


def run_cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dsa_core", *args], capture_output=True, text=True, timeout=timeout)


CLI = ["--model", "random:tiny", "--nsamples", "2", "--seqlen", "64", "--device", "cpu", "--data-source", "local",
       "--population", "4", "--fitness-windows", "2", "--final-eval-windows", "2", "--top-k", "1"]


def test_cli_search_prints_best_function_and_baselines(tmp_path):
    out = run_cli("search", *CLI, "--sparsity", "0.6", "--budget-candidates", "6", "--seed", "2", "--json",
                  "--storage", f"sqlite:///{tmp_path / 'h.db'}")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    F.parse(result["best"])
    assert result["evaluated"] == 6 and result["test_ppl"] > 1
    assert set(result["baselines"]) == {"uniform", "owl", "dsa preset"}


def test_two_workers_share_one_study(tmp_path):
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    cfg = S.SearchConfig(**QUICK, budget_candidates=12, study="shared", seed=5)
    S.create_study(cfg, url)
    workers = [subprocess.Popen([sys.executable, "-m", "dsa_core", "worker", "--study", "shared", "--storage", url],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [w.communicate(timeout=300) for w in workers]
    assert all(w.returncode == 0 for w in workers), [e for _, e in outs]
    reports = [json.loads(o.strip().splitlines()[-1]) for o, _ in outs]
    assert all(r["evaluated"] >= 1 for r in reports), reports  # both took part
    study = optuna.load_study(study_name="shared", storage=url)
    assert len(set(texts(study))) >= 12
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.FAIL))
