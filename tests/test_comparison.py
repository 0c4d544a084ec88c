"""dsa_core.comparison.compare on the tiny random model: allocations at several targets from the same dense weights,
perplexity and zero-shot optional, and the result's dict form. (The search's faithful table and re-ranking are
tested in test_search.py, the web app's evaluation and sweep in test_ui_workspace.py, the zero-shot comparison in
test_zeroshot_compare.py: all are views of `compare`.)"""

import pytest
import torch

from dsa_core.comparison import ComparedAllocation, Comparison, compare
from dsa_core.config import EvalConfig
from dsa_core.errors import Cancelled, ConfigError
from dsa_core.reporter import Reporter
from dsa_core.session import PruningSession
from tests.test_zeroshot import FIXTURES

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_config(**kw) -> EvalConfig:
    base = dict(model="random:tiny", device="cpu", nsamples=2, seqlen=32, eval_windows=1, data_source="local",
                mode="fast")
    return EvalConfig(**{**base, **kw}).validate()


class Heard(Reporter):
    """A reporter that keeps what it was told."""

    def __init__(self):
        super().__init__()
        self.stages, self.events = [], []

    def begin(self, stage, index=None, count=None):
        super().begin(stage, index, count)
        self.stages.append((self.stage, self.part))

    def on_event(self, item):
        self.events.append(item)


@pytest.fixture
def session(fresh_tiny):
    return PruningSession(fresh_tiny, nsamples=2, seqlen=32, data_source="local")


def test_each_allocation_at_each_target_from_the_same_dense_weights(session, fresh_tiny):
    dense = {k: v.clone() for k, v in fresh_tiny.model.state_dict().items()}
    heard = Heard()
    ratios = [0.3, 0.7] * (len(fresh_tiny.blocks) // 2)
    result = compare(session, tiny_config(dense=True), [("uniform", "uniform"), ("owl", "owl"), ("mine", ratios)],
                     [0.5, 0.3], reporter=heard)
    assert [(r.label, r.target) for r in result.rows] == [("uniform", 0.5), ("owl", 0.5), ("mine", 0.5),
                                                          ("uniform", 0.3), ("owl", 0.3), ("mine", 0.3)]
    assert heard.stages[0] == ("uniform at 50% (1 of 6)", (0, 6))
    assert heard.stages[-1] == ("mine at 30% (6 of 6)", (5, 6))
    assert heard.events == result.rows and heard.done > 0  # the perplexity windows reported their progress too
    assert result.targets == [0.3, 0.5] and result.mode == "fast" and result.protocol["windows"] == 1
    assert all(r.ppl > 1 and r.zeroshot is None for r in result.rows) and result.dense_ppl > 1
    uniform = result.rows[3]
    assert uniform.ratios == [0.3] * len(fresh_tiny.blocks) and uniform.achieved_sparsity == pytest.approx(0.3, 0.05)
    assert result.rows[2].allocation.startswith("ratios:0.3,0.7") and result.rows[2].ratios == pytest.approx(ratios)
    assert all(torch.equal(v, dense[k]) for k, v in fresh_tiny.model.state_dict().items())  # dense again


def test_cancelling_its_reporter_stops_a_comparison_between_windows_and_leaves_the_model_dense(session, fresh_tiny):
    dense = {k: v.clone() for k, v in fresh_tiny.model.state_dict().items()}
    before = session.progress

    class CancelAfterFirstRow(Heard):
        def on_event(self, item):
            super().on_event(item)
            self.cancel()

    heard = CancelAfterFirstRow()
    with pytest.raises(Cancelled, match="was cancelled"):
        compare(session, tiny_config(), [("uniform", "uniform"), ("owl", "owl")], reporter=heard)
    assert [r.label for r in heard.events] == ["uniform"] and heard.stages[-1][0] == "owl (2 of 2)"
    assert session.progress is before  # the session's own progress is back
    assert all(torch.equal(v, dense[k]) for k, v in fresh_tiny.model.state_dict().items())


def test_zero_shot_without_perplexity(session):
    cfg = tiny_config(tasks="rte", tasks_limit=2, tasks_data=str(FIXTURES))
    result = compare(session, cfg, [("dense", "dense"), ("uniform", "uniform")], perplexity=False)
    assert [r.ppl for r in result.rows] == [None, None] and result.protocol is None
    assert result.rows[0].achieved_sparsity == 0.0 and result.rows[1].zeroshot["tasks"]["rte"]["n"] == 2
    assert "zeroshot" in result.timings


def test_every_allocation_is_checked_before_anything_runs(session):
    heard = Heard()
    with pytest.raises(ConfigError, match="Unknown allocation 'nonsense'"):
        compare(session, tiny_config(), [("uniform", "uniform"), ("bad", "nonsense")], reporter=heard)
    with pytest.raises(ConfigError, match="outside"):
        compare(session, tiny_config(), [("uniform", "uniform")], [0.5, 1.2], reporter=heard)
    assert heard.stages == [] and heard.events == []


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
