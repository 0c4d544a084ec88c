"""dsa_core.comparison.compare on the tiny random model: allocations at several targets from the same dense weights,
perplexity and zero-shot optional, and the result's dict form. (The search's faithful table and re-ranking are
tested in test_search.py, the web app's evaluation and sweep in test_ui_workspace.py, the zero-shot comparison in
test_zeroshot_compare.py: all are views of `compare`.)"""

import pytest
import torch

from dsa_core.comparison import ComparedAllocation, Comparison, compare
from dsa_core.config import EvalConfig
from dsa_core.errors import ConfigError
from dsa_core.session import PruningSession
from tests.test_zeroshot import FIXTURES

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_config(**kw) -> EvalConfig:
    base = dict(model="random:tiny", device="cpu", nsamples=2, seqlen=32, eval_windows=1, data_source="local",
                mode="fast")
    return EvalConfig(**{**base, **kw}).validate()


@pytest.fixture
def session(fresh_tiny):
    return PruningSession(fresh_tiny, nsamples=2, seqlen=32, data_source="local")


def test_each_allocation_at_each_target_from_the_same_dense_weights(session, fresh_tiny):
    dense = {k: v.clone() for k, v in fresh_tiny.model.state_dict().items()}
    started, measured = [], []
    ratios = [0.3, 0.7] * (len(fresh_tiny.blocks) // 2)
    result = compare(session, tiny_config(dense=True), [("uniform", "uniform"), ("owl", "owl"), ("mine", ratios)],
                     [0.5, 0.3], on_start=lambda *a: started.append(a), on_row=measured.append)
    assert [(r.label, r.target) for r in result.rows] == [("uniform", 0.5), ("owl", 0.5), ("mine", 0.5),
                                                          ("uniform", 0.3), ("owl", 0.3), ("mine", 0.3)]
    assert started[0] == ("uniform", 0.5, 0, 6) and started[-1] == ("mine", 0.3, 5, 6) and measured == result.rows
    assert result.targets == [0.3, 0.5] and result.mode == "fast" and result.protocol["windows"] == 1
    assert all(r.ppl > 1 and r.zeroshot is None for r in result.rows) and result.dense_ppl > 1
    uniform = result.rows[3]
    assert uniform.ratios == [0.3] * len(fresh_tiny.blocks) and uniform.achieved_sparsity == pytest.approx(0.3, 0.05)
    assert result.rows[2].allocation.startswith("ratios:0.3,0.7") and result.rows[2].ratios == pytest.approx(ratios)
    assert all(torch.equal(v, dense[k]) for k, v in fresh_tiny.model.state_dict().items())  # dense again


def test_zero_shot_without_perplexity(session):
    cfg = tiny_config(tasks="rte", tasks_limit=2, tasks_data=str(FIXTURES))
    result = compare(session, cfg, [("dense", "dense"), ("uniform", "uniform")], perplexity=False)
    assert [r.ppl for r in result.rows] == [None, None] and result.protocol is None
    assert result.rows[0].achieved_sparsity == 0.0 and result.rows[1].zeroshot["tasks"]["rte"]["n"] == 2
    assert "zeroshot" in result.timings


def test_every_allocation_is_checked_before_anything_runs(session):
    seen = []
    with pytest.raises(ConfigError, match="Unknown allocation 'nonsense'"):
        compare(session, tiny_config(), [("uniform", "uniform"), ("bad", "nonsense")],
                on_start=lambda *a: seen.append(a))
    with pytest.raises(ConfigError, match="outside"):
        compare(session, tiny_config(), [("uniform", "uniform")], [0.5, 1.2], on_start=lambda *a: seen.append(a))
    assert seen == []


def test_the_dict_form_round_trips_and_names_its_kind():
    row = ComparedAllocation("owl", "owl", 0.5, [0.4, 0.6], ["flat"], 0.5, ppl=12.5, zeroshot={"mean_acc": 0.5})
    result = Comparison("sequential", [row], protocol={"windows": 2}, dense_ppl=10.0, timings={"pruning": 1.0})
    d = result.to_dict()
    assert d["kind"] == "comparison" and d["rows"][0]["ppl"] == 12.5
    assert Comparison.from_dict(d) == result
    with pytest.raises(ConfigError, match="Not a comparison"):
        Comparison.from_dict({**d, "kind": "search"})
    with pytest.raises(ConfigError, match="Unknown comparison keys: colour"):
        Comparison.from_dict({**d, "colour": "red"})
