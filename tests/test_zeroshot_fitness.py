"""Tests of dsa_core/zeroshot/fitness.py and `search --fitness zeroshot:TASKS`: the fitness is lower for the dense
model than for a heavily pruned one, reads only its seeded held-out rows (disjoint from what a final table scores
when it leaves them out), is one stage (sequential last stage included), and the CLI runs it and refuses bad task
names before loading a model. The tiny random model; PIQA's shipped file and tests/fixtures/zeroshot."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dsa_core.errors import ConfigError
from dsa_core.fitness import Fitness
from dsa_core.search_config import SearchConfig
from dsa_core.session import PruningSession
from dsa_core.zeroshot.fitness import ZeroShotFitness
from dsa_core.zeroshot.harness import evaluate_tasks
from dsa_core.zeroshot.tasks import holdout_rows

FIXTURES = Path(__file__).parent / "fixtures" / "zeroshot"
QUICK = dict(model="random:tiny", nsamples=2, seqlen=64, data_source="local", device="cpu", population=4,
             fitness_windows=2, final_eval_windows=2, top_k=2, zeroshot_rows=6)


@pytest.fixture(scope="module")
def session():
    from dsa_core.models import load_model

    return PruningSession(load_model("random:tiny", device="cpu"), nsamples=2, seqlen=64, data_source="local")


def test_dense_scores_lower_than_heavily_pruned_and_sequential_last_stage_works(session):
    fitness = Fitness(session, "wanda", 0.5, "zeroshot:piqa", zeroshot_rows=6, last_stage="sequential")
    assert len(fitness.stages) == 1 and fitness.origin["tasks"]["piqa"]["rows"] == holdout_rows(1838, 6)
    dense = fitness.stages[0]()
    assert np.isfinite(dense) and dense > 0
    pruned = fitness.measure("heavy", np.full(4, 0.95), 0)  # the last (only) stage: pruned sequentially
    session.prune_sequential(np.full(4, 0.95), "wanda")
    assert pruned == fitness.stages[0]() and dense < pruned
    session.restore()
    with pytest.raises(ConfigError, match="one stage"):
        Fitness(session, "wanda", 0.5, "zeroshot:piqa", [1, 2])


def test_held_out_rows_are_disjoint_from_a_final_table_that_excludes_them(tiny):
    fitness = ZeroShotFitness(tiny, "piqa,winogrande", rows=2, data_root=FIXTURES)
    measured = {n: _pairs(fitness, n) for n in ("piqa", "winogrande")}
    table = evaluate_tasks(tiny, "piqa,winogrande", data_root=FIXTURES, exclude=2, keep_samples=True)
    full = evaluate_tasks(tiny, "piqa,winogrande", data_root=FIXTURES, keep_samples=True)
    assert "left out" in table["protocol"]["excluded"]
    for name, requests in measured.items():
        scored = {tuple(r) for s in table["tasks"][name]["samples"] for r in s["requests"]}
        everything = {tuple(r) for s in full["tasks"][name]["samples"] for r in s["requests"]}
        assert requests and not requests & scored and requests | scored == everything
        assert table["tasks"][name]["excluded"] == 2 == full["tasks"][name]["n"] - table["tasks"][name]["n"]
    # More rows than half a task's: the fitness and the tables both take half (the fixture has 4 rows), and say so.
    capped = ZeroShotFitness(tiny, "piqa", rows=3, data_root=FIXTURES)
    assert capped.protocol["tasks"]["piqa"]["rows"] == holdout_rows(4, 2)
    assert "at most half of them, not 3" in capped.protocol["tasks"]["piqa"]["held_out"]
    table = evaluate_tasks(tiny, "piqa", data_root=FIXTURES, exclude=3)
    assert table["tasks"]["piqa"]["excluded"] == 2 and table["tasks"]["piqa"]["n"] == 2


def _pairs(fitness: ZeroShotFitness, name: str) -> set[tuple[str, str]]:
    """The (context, continuation) pairs the fitness scores for a task."""
    task = next(t for t in fitness.tasks if t.name == name)
    first, count, _, _ = task.docs[-1]
    return {r[0] for r in fitness.requests[task.first:first + count]}


def test_config_accepts_zeroshot_and_refuses_bad_names_and_fidelity():
    assert SearchConfig(**QUICK, fitness="zeroshot:piqa,boolq", budget_candidates=2).validate()
    with pytest.raises(ConfigError, match="Unknown zero-shot task 'mmlu'"):
        SearchConfig(**QUICK, fitness="zeroshot:piqa,mmlu", budget_candidates=2).validate()
    with pytest.raises(ConfigError, match="Unknown fitness 'acc'"):
        SearchConfig(**QUICK, fitness="acc", budget_candidates=2).validate()
    with pytest.raises(ConfigError, match="drop --fidelity"):
        SearchConfig(**QUICK, fitness="zeroshot:piqa", fidelity="64,128", budget_candidates=2).validate()


CLI = ["--model", "random:tiny", "--nsamples", "2", "--seqlen", "64", "--device", "cpu", "--data-source", "local",
       "--population", "4", "--top-k", "1", "--zeroshot-rows", "4"]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dsa_core", *args], capture_output=True, text=True, timeout=600)


def test_cli_search_on_zero_shot_ends_and_reports_its_fitness_and_rows(tmp_path):
    out = run_cli("search", *CLI, "--fitness", "zeroshot:piqa", "--sparsity", "0.6", "--budget-candidates", "3",
                  "--no-final", "--json", "--storage", f"sqlite:///{tmp_path / 'h.db'}")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["fitness"] == "zeroshot:piqa" and result["evaluated"] == 3 and 0 < result["best_fitness"] < 1e9
    assert result["fitness_protocol"]["tasks"]["piqa"]["rows"] == holdout_rows(1838, 4)


def test_cli_refuses_a_bad_task_before_loading_the_model(tmp_path):
    out = run_cli("search", *CLI, "--fitness", "zeroshot:piqa,nope", "--model", "no/such-model", "--budget-candidates",
                  "3", "--storage", f"sqlite:///{tmp_path / 'h.db'}")
    assert out.returncode == 2 and "Unknown zero-shot task 'nope'" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
