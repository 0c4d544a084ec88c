"""A search's configuration (dsa_core.search_config): what it refuses before any model loads, with a sentence
that names the option, and how fidelities read as tokens and windows."""

import pytest

from dsa_core.errors import ConfigError
from dsa_core.fitness import parse_fidelity
from dsa_core.search_config import SearchConfig
from tests.test_search import QUICK


@pytest.mark.parametrize("change,message", [
    (dict(sampler="annealing"), "Unknown sampler"),
    (dict(budget_candidates=None, budget_seconds=None), "needs a budget"),
    (dict(sparsity=1.0), "outside"),
    (dict(lam_range=(0.3, 0.6)), "λ range"),
    (dict(space="anneal"), "Unknown space"),
    (dict(fitness="bleu"), "Unknown fitness"),
    (dict(fidelity="16k,2k"), "increasing"),
    (dict(fidelity="2 k"), "Cannot read"),
    (dict(promote=1), "promote"),
    (dict(space="allocation", sampler="random"), "applies to functions"),
    (dict(hybrid_split=1.0), "hybrid split"),
    (dict(refine_patience=-1), "refine-patience"),
    (dict(refine_patience=5), "--space hybrid"),
    (dict(refiner="cma"), "--space allocation or hybrid"),
    (dict(space="allocation", refiner="anneal"), "refiner"),
    (dict(space="allocation", refiner="cma", parents=3), "Leave --parents at 1"),
    (dict(space="allocation", refiner="cma", cma_sigma=0), "positive"),
    (dict(space="allocation", cma_sigma=2.0), "give it with --refiner cma"),
    (dict(fidelity="32,64"), "round to"),  # both one window of 64 tokens
])
def test_bad_configuration_is_refused(change, message):
    with pytest.raises(ConfigError, match=message):
        SearchConfig(**{**QUICK, **change}).validate()


def test_fidelities_read_as_tokens():
    assert parse_fidelity("2k,16k,64k") == (2048, 16384, 65536)
    assert parse_fidelity("64, 256") == (64, 256) and parse_fidelity("") == ()
    cfg = SearchConfig(**{**QUICK, "fidelity": "32,64,200"})
    assert cfg.stage_windows() == [1, 1, 4]  # windows of 64 tokens, at least one


def test_one_reranking_at_a_time():
    with pytest.raises(ConfigError, match="one way"):
        SearchConfig(**QUICK, rerank_tokens=256, rerank_final=True).validate()
