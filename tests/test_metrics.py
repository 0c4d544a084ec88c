"""dsa_core.metrics: one file per metric, each declaring its contract; the walkers, the configuration and the CLI
read the registry, so a metric registered anywhere is offered and used everywhere."""

import pkgutil
from pathlib import Path

import numpy as np
import pytest
import torch

from dsa_core import metrics
from dsa_core import scores as S
from dsa_core.config import EvalConfig
from dsa_core.errors import ConfigError
from dsa_core.metrics import METRICS, Metric, get_metric
from dsa_core.prune import DenseWeights, achieved_sparsity, prune_sequential, score_model


class LargestFirst(Metric):
    """A toy metric, declared in a test file only: prunes the largest weights of each row first."""

    name = "largest_first"
    description = "The opposite of magnitude pruning, per row."
    needs_inputs = False

    def score(self, weight, acts, name):
        return -S.magnitude(weight)


class InputNorm(Metric):
    """A toy metric that reads activations: ‖X_j‖ alone, the same for every row."""

    name = "input_norm"
    description = "Prunes the inputs with the smallest activations."

    def score(self, weight, acts, name):
        return acts.column_sqnorm(name).sqrt().expand_as(weight).clone()


@pytest.fixture
def toys(monkeypatch):
    for toy in (LargestFirst(), InputNorm()):
        monkeypatch.setitem(METRICS, toy.name, toy)


def test_the_built_in_metrics_keep_their_order_and_declare_what_they_need():
    assert list(METRICS)[:3] == ["magnitude", "wanda", "sparsegpt"]
    magnitude, wanda, sparsegpt = (METRICS[n] for n in ("magnitude", "wanda", "sparsegpt"))
    assert (magnitude.needs_inputs, magnitude.group) == (False, "layer")
    assert (wanda.needs_inputs, wanda.needs_hessian, wanda.group, wanda.updates_weights) == (True, False, "row", False)
    assert sparsegpt.needs_hessian and sparsegpt.updates_weights and sparsegpt.group == "row"


def test_each_file_of_the_package_is_one_metric():
    """Adding a metric is adding a file: the package imports every module in it, and each registers itself."""
    files = {m.name for m in pkgutil.iter_modules(metrics.__path__)} - {"base"}
    assert files == {type(m).__module__.rsplit(".", 1)[1] for m in METRICS.values()}
    assert len(files) == len(METRICS)


def test_the_walkers_do_not_test_metric_names():
    core = Path(metrics.__file__).parents[1]
    for module in ("prune.py", "session.py"):
        assert "metric ==" not in (core / module).read_text() and "metric !=" not in (core / module).read_text()


def test_an_unknown_metric_is_refused_with_the_choices():
    with pytest.raises(ConfigError, match="magnitude, wanda, sparsegpt"):
        get_metric("obd")
    with pytest.raises(ConfigError, match="Unknown metric 'obd'"):
        EvalConfig(metric="obd").validate()


def test_a_malformed_metric_is_not_registered():
    class Bad(LargestFirst):
        name = "bad"
        group = "column"

    with pytest.raises(ValueError, match="group"):
        metrics.register(Bad())
    with pytest.raises(ValueError, match="taken"):
        metrics.register(METRICS["wanda"])
    assert "bad" not in METRICS


def test_a_registered_metric_is_offered_by_the_cli_and_the_configuration(toys):
    from cli.main import build_parser

    args = build_parser().parse_args(["evaluate", "--metric", "largest_first"])
    assert args.metric == "largest_first"
    assert EvalConfig(metric="input_norm").validate().metric == "input_norm"


def test_a_registered_metric_prunes_in_both_modes(toys, fresh_tiny):
    """The walkers take a new metric's contract as they find it: no activations for one that reads none, its own
    score, its comparison group."""
    dense = DenseWeights(fresh_tiny)
    prune_sequential(fresh_tiny, None, "largest_first", np.full(4, 0.5))  # no windows: it reads no inputs
    module, w = dense.layers[0][0]
    kept = module.weight != 0
    assert kept.float().mean().item() == pytest.approx(0.5, abs=0.01)
    a = w.abs()
    assert (a.masked_fill(~kept, 0).amax(1) <= a.masked_fill(kept, float("inf")).amin(1)).all()  # per row
    dense.restore()

    ids = torch.randint(0, 1000, (2, 32))
    cache, stats = score_model(fresh_tiny, dense, ids, "input_norm", batch_size=2, sample_size=256)
    assert stats.metric == "wanda" and cache.group == "row"  # it read activations: the statistics are Wanda's
    cache.apply(np.full(4, 0.25))
    assert achieved_sparsity(fresh_tiny)[0] == pytest.approx(0.25, abs=0.01)
    dense.restore()
    prune_sequential(fresh_tiny, ids, "input_norm", np.full(4, 0.25), batch_size=2)
    assert achieved_sparsity(fresh_tiny)[0] == pytest.approx(0.25, abs=0.01)
    # Whole input columns go together, since its score is the same down each column.
    zero_cols = (next(iter(fresh_tiny.linear_layers(0).values())).weight == 0).all(dim=0)
    assert zero_cols.float().mean().item() == pytest.approx(0.25, abs=0.02)
